"""Multi-worker training on loopback, started by tools/launch_local_cluster.py.

- The launcher itself, with trivial worker commands (fast).
- One 2-worker `MultiWorkerMirroredStrategy` job, interrupted twice and
  restarted with the same command each time. First the chief gets SIGTERM:
  both workers stop at the same step with a checkpoint and exit 75 (worker 1
  got no signal). The rerun resumes exactly there; then one worker is
  SIGKILLed mid-run. The third run resumes from the last checkpoint, takes
  over the dead chief's lock and finishes; both workers end with identical
  weights; and the whole loss curve and final weights equal those of an
  uninterrupted in-process 2-replica `MirroredStrategy` run on the same
  global batches, which shows that no step was lost or repeated.

Each worker is a separate Python process with its own TensorFlow start-up,
so these are the slowest tests; steps and models are tiny, and the two
interruptions share one job so that it starts three times, not four.
"""

import contextlib
import functools
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import fault_injection
from simclr_tf.checkpoints import ours as checkpoints
from simclr_tf.storage import export_layout
from simclr_tf import run as run_lib
from simclr_tf.storage import run_dir
from simclr_tf.training import tf_trainer as training

import command_line
from test_preemption import saved_iterations
from command_line import config_of

REPO = command_line.REPO
sys.path.insert(0, os.path.join(REPO, "tools"))
import launch_local_cluster  # noqa: E402

LAUNCHER = os.path.join(REPO, "tools", "launch_local_cluster.py")
# The 2-worker loss curve must match the single-process one this closely.
# Both sum the same two per-replica gradients and gather negatives and
# BatchNorm statistics in replica order, but the collectives of the two
# strategies are different implementations, free to sum in another order;
# the README states these tolerances, not bit equality. The two workers of
# one job, which run the same collectives, are compared bit for bit.
LOSS_TOLERANCE = 1e-5


tiny_flags = functools.partial(command_line.tiny_flags, mode="train",
                               steps_per_loop=1)


def launcher_command(flags, num_workers=2, timeout=240):
  return [sys.executable, LAUNCHER, f"--num_workers={num_workers}",
          f"--timeout={timeout}", "--"] + command_line.FAULTY_PROGRAM + [
              "--strategy=multi_worker"] + flags


def worker_env(faults_spec=""):
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop(fault_injection.ENV_VAR, None)
  if faults_spec:
    env[fault_injection.ENV_VAR] = faults_spec
  return env


def scalar_values(model_dir, tag="train/contrast_loss"):
  """Step to every value logged for it (a resumed run logs some twice)."""
  values = {}
  for path in glob.glob(os.path.join(model_dir, "events.out.tfevents*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          values.setdefault(event.step, []).append(
              float(tf.make_ndarray(value.tensor)))
  return values


def scalar_curve(model_dir, tag="train/contrast_loss"):
  """Step to its logged value, for a run that logged each step once."""
  values = scalar_values(model_dir, tag)
  assert all(len(v) == 1 for v in values.values()), values
  return {step: v[0] for step, v in values.items()}


def progress_steps(output, prefix):
  """Steps of the "<prefix>[pretrain] step S/N ..." lines, in order."""
  start = prefix + "[pretrain] step "
  return [int(line[len(start):].split("/")[0])
          for line in output.splitlines() if line.startswith(start)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


# --- The launcher.

def test_each_worker_gets_its_own_task_in_one_cluster():
  configs = launch_local_cluster.tf_configs(3, ports=[5001, 5002, 5003])
  for index, config in enumerate(json.loads(text) for text in configs):
    assert config["cluster"] == {"worker": ["127.0.0.1:5001",
                                            "127.0.0.1:5002",
                                            "127.0.0.1:5003"]}
    assert config["task"] == {"type": "worker", "index": index}
  ports = launch_local_cluster.free_ports(4)
  assert len(set(ports)) == 4


def test_launcher_prefixes_output_and_succeeds_when_all_do(capsys):
  command = [sys.executable, "-c",
             "import json, os; print('task', json.loads(os.environ"
             "['TF_CONFIG'])['task']['index'])"]
  lines = []
  assert launch_local_cluster.run_cluster(command, 2, log=lines.append) == 0
  out = capsys.readouterr().out
  assert "[worker 0] task 0" in out and "[worker 1] task 1" in out
  assert lines[-1] == "[launcher] all 2 workers finished."


def test_launcher_stops_the_others_when_one_fails():
  command = [sys.executable, "-c",
             "import json, os, sys, time\n"
             "index = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
             "time.sleep(60) if index == 0 else sys.exit(3)"]
  lines = []
  start = time.time()
  assert launch_local_cluster.run_cluster(command, 2, log=lines.append) == 3
  assert time.time() - start < 20  # worker 0 did not sleep its 60 s
  assert "[launcher] worker 1 exited with status 3; stopping the others." \
      in lines


def test_launcher_times_out_and_rejects_a_missing_command():
  lines = []
  command = [sys.executable, "-c", "import time; time.sleep(60)"]
  assert launch_local_cluster.run_cluster(
      command, 1, timeout=1, log=lines.append) == \
      launch_local_cluster.TIMED_OUT
  with pytest.raises(SystemExit) as error:
    launch_local_cluster.main(["--num_workers=2"])
  assert error.value.code == 2


# --- A real multi-worker job: killed, restarted, compared.

class Output:
  """Collects a process's output lines in a thread."""

  def __init__(self, process):
    self.lines = []
    self._thread = threading.Thread(target=self._read, args=(process,),
                                    daemon=True)
    self._thread.start()

  def _read(self, process):
    for line in process.stdout:
      self.lines.append(line.rstrip("\n"))

  def text(self):
    self._thread.join(timeout=10)
    return "\n".join(self.lines)

  def wait_for_line(self, start, process, timeout=200):
    deadline = time.time() + timeout
    while time.time() < deadline:
      found = [line for line in list(self.lines) if line.startswith(start)]
      if found:
        return found[0]
      assert process.poll() is None, "\n".join(self.lines[-40:])
      time.sleep(0.02)
    raise AssertionError(f"no line {start!r} within {timeout} s")

  def worker_pid(self, index):
    prefix = f"[launcher] worker {index}: pid "
    for line in list(self.lines):
      if line.startswith(prefix):
        return int(line[len(prefix):].split(",")[0])
    return None


@contextlib.contextmanager
def launched(command, env):
  """Starts the launcher; yields (process, `Output`); stops it on the way out
  if it is still running (a failed assertion must not leave workers)."""
  launcher = subprocess.Popen(command, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=REPO,
                              env=env)
  try:
    yield launcher, Output(launcher)
  finally:
    if launcher.poll() is None:
      launcher.kill()
      launcher.wait()


def run_and_stop_the_chief(command, env):
  """Starts the job; SIGTERMs the chief once it reports step 2.

  Returns:
    (launcher exit status, output lines).
  """
  with launched(command, env) as (launcher, output):
    output.wait_for_line("[launcher] worker 0: pid ", launcher)
    output.wait_for_line("[worker 0] [pretrain] step 2/", launcher)
    os.kill(output.worker_pid(0), signal.SIGTERM)
    status = launcher.wait(timeout=200)
  output.text()
  return status, output.lines


def start_and_kill_worker_1(command, env, model_dir, after_step):
  """Starts the job; SIGKILLs worker 1 once a checkpoint after `after_step`
  exists (the `checkpoint` state file names it, so it is complete).

  Returns:
    (output text, chief pid) after the launcher has stopped the job.
  """
  with launched(command, env) as (launcher, output):
    deadline = time.time() + 200
    while (command_line.latest_checkpoint_step(model_dir) or 0) <= after_step:
      assert launcher.poll() is None, output.text()[-4000:]
      assert time.time() < deadline, "no checkpoint within 200 s"
      time.sleep(0.1)
    chief = output.worker_pid(0)
    # A second run on this model_dir is refused, naming the chief.
    with pytest.raises(run_dir.RunDirError,
                       match=f"in use by process {chief} on"):
      run_dir.RunLock(model_dir).acquire()
    os.kill(output.worker_pid(1), signal.SIGKILL)
    status = launcher.wait(timeout=60)
  text = output.text()
  assert status == 128 + signal.SIGKILL, text[-4000:]
  assert "[launcher] worker 1 was killed by signal 9; stopping the others." \
      in text
  return text, chief


def test_stopped_killed_and_restarted_two_worker_job_matches_mirrored(
    data_dir, tmp_path, two_replica_strategy):
  steps, every = 12, 4
  model_dir = str(tmp_path / "workers")
  flags = dict(train_steps=steps, checkpoint_steps=every,
               mode="train_then_eval")
  command = launcher_command(tiny_flags(data_dir, model_dir, **flags))
  env = worker_env(f"deterministic_input=1,"
                   f"dump_weights_to={tmp_path / 'dump'}")

  # 1. SIGTERM to the chief: the job stops with a checkpoint, exit 75.
  start = time.time()
  status, lines = run_and_stop_the_chief(command, env)
  stopped_seconds = time.time() - start
  first = "\n".join(lines)
  assert status == run_lib.STOPPED_BY_SIGNAL, first[-4000:]
  assert "[worker 0] This process is worker 0, the chief" in first
  # Each worker reads its own shard (the shards are disjoint:
  # test_data_pipeline.py, test_data_tfds.py).
  for index in (0, 1):
    assert (f"[worker {index}] [pretrain] this process reads input "
            f"shard(s) [{index}] of 2") in first
  chief_steps = progress_steps(first, "[worker 0] ")
  stopped_at = chief_steps[-1]
  assert 2 <= stopped_at < steps - every, first[-4000:]
  prefix = f"{model_dir}/ckpt-{stopped_at}"
  line = (f"stopped by SIGTERM at step {stopped_at}; checkpoint {prefix}; "
          "rerun the same command to resume")
  # Worker 1 got no signal, yet stopped at the same step, with the chief.
  for index in (0, 1):
    assert f"[worker {index}] {line}" in lines, first[-4000:]
    assert progress_steps(first, f"[worker {index}] ") == chief_steps
  assert "Traceback" not in first
  assert tf.train.latest_checkpoint(model_dir) == prefix
  assert saved_iterations(prefix) == stopped_at

  # 2. The same command: resumes exactly there; killed mid-run.
  start = time.time()
  second, chief = start_and_kill_worker_1(command, env, model_dir,
                                          after_step=stopped_at)
  killed_seconds = time.time() - start
  for index in (0, 1):
    assert (f"[worker {index}] Resumed from {prefix} at step "
            f"{stopped_at}.") in second
    done = chief_steps + progress_steps(second, f"[worker {index}] ")
    assert done == list(range(1, len(done) + 1)), done
  saved = command_line.latest_checkpoint_step(model_dir)
  assert stopped_at < saved < steps, second[-3000:]  # killed mid-run
  # The chief either noticed its lost peer (one line, lock released) or was
  # stopped by the launcher first (lock left behind): never a traceback.
  assert "[worker 0] Traceback" not in second, second[-4000:]
  lock_left = os.path.exists(os.path.join(model_dir, run_dir.LOCK_FILE))
  killed_at = max(progress_steps(second, "[worker 0] ") or [0])

  # 3. The latest checkpoint damaged, the same command again: the chief
  # alone judges the checkpoints, and both workers resume from the one it
  # falls back to, then finish.
  damaged = f"{model_dir}/ckpt-{saved}"
  fallback = checkpoints.listed_checkpoints(model_dir)[1]
  resumed = checkpoints.checkpoint_step(fallback)
  data_files = glob.glob(damaged + ".data-*")
  with open(data_files[0], "r+b") as handle:
    handle.truncate(os.path.getsize(data_files[0]) // 2)
  start = time.time()
  result = subprocess.run(command, capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=env)
  finished_seconds = time.time() - start
  assert result.returncode == 0, result.stdout[-4000:]
  out = result.stdout
  if lock_left:
    # The chief was killed before it noticed: its lock is taken over.
    assert "[worker 0] Took over the stale lock" in out
    assert f"of process {chief} on" in out
  assert f"[worker 0] WARNING: checkpoint {damaged}: " in out
  assert "[worker 1] WARNING: checkpoint" not in out  # it did not judge
  assert os.path.exists(f"{damaged}.{checkpoints.DAMAGED_TAG}.index")
  for index in (0, 1):
    assert (f"[worker {index}] Resumed from {fallback} at "
            f"step {resumed}.") in out, out[-4000:]
    assert progress_steps(out, f"[worker {index}] ") == list(
        range(resumed + 1, steps + 1))
  assert tf.train.latest_checkpoint(model_dir).endswith(f"ckpt-{steps}")
  assert saved_iterations(f"{model_dir}/ckpt-{steps}") == steps
  assert not os.path.exists(os.path.join(model_dir, run_dir.LOCK_FILE))
  # Only the chief writes into model_dir; worker 1's files are gone.
  assert len(glob.glob(os.path.join(model_dir, "events.*"))) == 3  # 3 runs
  temporary = out.split("[worker 1] This process is worker 1; it writes "
                        "only temporary files (")[1].split(")")[0]
  assert not os.path.exists(temporary)
  # Both workers export (TensorFlow's rule for savers); only the chief's
  # lands, complete, in model_dir.
  assert os.listdir(export_layout.exports_dir(model_dir)) == [str(steps)]
  assert "[worker 0] [pretrain] exported SavedModel" in out

  # Identical weights on both workers.
  weights = [np.load(tmp_path / "dump" / f"worker_{i}.npz") for i in (0, 1)]
  assert int(weights[0]["__step__"]) == steps
  assert sorted(weights[0].files) == sorted(weights[1].files)
  for name in weights[0].files:
    np.testing.assert_array_equal(weights[0][name], weights[1][name],
                                  err_msg=name)

  # The same flags in one uninterrupted process: MirroredStrategy over two
  # logical CPUs, the same global batches.
  start = time.time()
  config = config_of(tiny_flags(data_dir, str(tmp_path / "mirrored"),
                                **flags))
  with fault_injection.injected(deterministic_input=True,
                                dump_weights_to=str(tmp_path / "one")):
    training.run_experiment(config, log=lambda line: None,
                            strategy=two_replica_strategy)
  mirrored_seconds = time.time() - start
  mirrored = scalar_curve(str(tmp_path / "mirrored"))
  workers = scalar_values(model_dir)
  assert sorted(mirrored) == list(range(1, steps + 1))
  assert sorted(workers) == sorted(mirrored)
  differences = [abs(value - mirrored[step])
                 for step, values in workers.items() for value in values]
  print(f"\n2-worker job: {stopped_seconds:.1f} s until stopped at step "
        f"{stopped_at}, {killed_seconds:.1f} s until killed at step "
        f"{killed_at}, {finished_seconds:.1f} s to resume from step {resumed} "
        f"and finish; mirrored in process {mirrored_seconds:.1f} s; "
        f"contrast_loss {mirrored}; max |workers - mirrored| = "
        f"{max(differences):.3g}")
  assert max(differences) <= LOSS_TOLERANCE, (workers, mirrored)
  # The loss moved, so equal curves are not two constants.
  assert len({round(value, 4) for value in mirrored.values()}) > 1
  # Evaluation over the whole eval split, each worker on its shard, agrees
  # with the single process; only the chief wrote results.
  eval_lines = [line.split("] ", 1)[1] for line in out.splitlines()
                if "[pretrain] eval at step" in line]
  assert len(eval_lines) == 2 and eval_lines[0] == eval_lines[1], eval_lines
  results = [json.loads(open(os.path.join(directory, "result.json")).read())
             for directory in (model_dir, str(tmp_path / "mirrored"))]
  assert results[0]["global_step"] == steps
  for metric in ("label_top_1_accuracy", "label_top_5_accuracy"):
    assert results[0][metric] == pytest.approx(results[1][metric], abs=1e-6)
  single = np.load(tmp_path / "one" / "chief.npz")
  for name in single.files:
    np.testing.assert_allclose(weights[0][name], single[name], rtol=1e-4,
                               atol=1e-5, err_msg=name)
