"""SIGTERM and SIGINT: finish the loop, checkpoint, exit 75, resume exactly.

The signals are sent from here to real runs: the command line on one
process (stopped, rerun, killed and rerun again: one run for the stories
of test_run's kill too) and (to send a second signal exactly while the final checkpoint is
written) an in-process run whose `checkpoints.save` this test wraps. The
2-worker job whose chief gets SIGTERM is in test_multi_worker.py, where the
same job is then killed and compared with a single process. Kills wait for a
progress line first, so they never race the start-up.
"""

import functools
import os
import signal
import subprocess
import threading
import time

import pytest
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from simclr_tf.checkpoints import ours as checkpoints
from simclr_tf.training import preemption
from simclr_tf import run as run_lib
from simclr_tf.training import tf_trainer as training

import command_line
import fault_injection
from command_line import config_of

REPO = command_line.REPO
STEPS = 12

tiny_flags = functools.partial(
    command_line.tiny_flags, mode="train", train_steps=STEPS,
    checkpoint_steps=1000, steps_per_loop=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def saved_iterations(prefix):
  """The optimizer step stored in a checkpoint, read with TensorFlow's own
  reader: the object graph leads from the root to optimizer/_iterations."""
  reader = tf.train.load_checkpoint(prefix)
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
  node = graph.nodes[0]
  for name in ("optimizer", "_iterations"):
    node = graph.nodes[[child.node_id for child in node.children
                        if child.local_name == name][0]]
  key = [attribute.checkpoint_key for attribute in node.attributes
         if attribute.name == "VARIABLE_VALUE"][0]
  return int(reader.get_tensor(key))


def progress_steps(lines, prefix=""):
  start = prefix + "[pretrain] step "
  return [int(line[len(start):].split("/")[0]) for line in lines
          if line.startswith(start)]


class Process:
  """A program whose merged output is read line by line in a thread."""

  def __init__(self, command, env=None):
    self.process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO, **(env or {})))
    self.lines = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.process.stdout:
      self.lines.append(line.rstrip("\n"))

  def wait_for_line(self, start, timeout=200):
    deadline = time.time() + timeout
    while time.time() < deadline:
      found = [line for line in list(self.lines) if line.startswith(start)]
      if found:
        return found[0]
      assert self.process.poll() is None, "\n".join(self.lines[-40:])
      time.sleep(0.02)
    raise AssertionError(f"no line {start!r} within {timeout} s")

  def finish(self, timeout=200):
    try:
      status = self.process.wait(timeout=timeout)
    finally:
      if self.process.poll() is None:
        self.process.kill()
        self.process.wait()
    self._reader.join(timeout=10)
    return status


def test_stop_message_is_the_documented_line():
  stop = preemption.StoppedBySignal("SIGTERM", 7).with_checkpoint("/r/ckpt-7")
  assert str(stop) == ("stopped by SIGTERM at step 7; checkpoint /r/ckpt-7; "
                       "rerun the same command to resume")
  assert run_lib.STOPPED_BY_SIGNAL not in (0, run_lib.USAGE_ERROR,
                                           run_lib.TRAINING_FAILED)


def test_handlers_only_record_and_are_restored():
  before = signal.getsignal(signal.SIGTERM)
  with preemption.StopOnSignal() as stop:
    assert stop.agreed_signal() is None
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)  # Python runs the handlers at the next bytecodes.
    assert stop.agreed_signal() == "SIGTERM"  # SIGTERM wins over SIGINT
  assert signal.getsignal(signal.SIGTERM) is before


def test_stopped_killed_and_rerun_program_resumes_exactly_each_time(
    data_dir, tmp_path):
  # One 2-replica command-line run serves three stories, so the program
  # starts three times instead of five: SIGTERM stops it with a checkpoint
  # and the rerun resumes exactly there; that rerun is SIGKILLed mid-run and
  # the next one resumes from its last checkpoint; and the run goes through
  # pretraining and linear evaluation to its summary.
  every = 4
  args = tiny_flags(data_dir, str(tmp_path)) + [
      "--mode=train_then_eval", f"--checkpoint_steps={every}",
      "--cpu_replicas=2", "--linear_eval_after_pretraining",
      "--linear_eval_train_steps=2", "--linear_eval_train_batch_size=32"]
  command = command_line.PROGRAM + args

  # 1. SIGTERM: finish the loop, checkpoint, exit 75.
  first = Process(command)
  first.wait_for_line("[pretrain] step 2/")
  first.process.send_signal(signal.SIGTERM)
  status = first.finish()
  output = "\n".join(first.lines)
  assert status == run_lib.STOPPED_BY_SIGNAL, output[-3000:]
  steps = progress_steps(first.lines)
  stopped_at = steps[-1]
  assert 2 <= stopped_at < STEPS - every, output[-3000:]
  assert first.lines[-1] == (
      f"stopped by SIGTERM at step {stopped_at}; checkpoint "
      f"{tmp_path}/ckpt-{stopped_at}; rerun the same command to resume")
  assert "Traceback" not in output
  prefix = str(tmp_path / f"ckpt-{stopped_at}")
  assert tf.train.latest_checkpoint(str(tmp_path)) == prefix
  assert saved_iterations(prefix) == stopped_at

  # 2. The same command resumes exactly there. It holds once it has saved
  # the next checkpoint (a test-only fault, tests/fault_injection.py), so
  # the SIGKILL from here lands mid-run however fast the machine trains;
  # it is sent once the `checkpoint` state file names that checkpoint (a
  # ckpt-N.index alone may belong to a save in progress).
  hold_at = (stopped_at // every + 1) * every
  second = Process(command_line.FAULTY_PROGRAM + args, env={
      fault_injection.ENV_VAR: f"hold_after_saving={hold_at}"})
  try:
    deadline = time.time() + 240
    while command_line.latest_checkpoint_step(tmp_path) != hold_at:
      assert second.process.poll() is None, "\n".join(second.lines[-40:])
      assert time.time() < deadline, f"no ckpt-{hold_at} within 4 minutes"
      time.sleep(0.2)
    second.process.send_signal(signal.SIGKILL)
  finally:
    second.finish()
  assert f"Resumed from {prefix} at step {stopped_at}." in second.lines
  # Every step exactly once so far.
  done = steps + progress_steps(second.lines)
  assert done == list(range(1, len(done) + 1)), done
  assert not (tmp_path / "linear_eval").exists()  # killed mid-run

  # 3. The same command again: resume from the last checkpoint and finish.
  third = command_line.run_program(args)
  assert third.returncode == 0, third.stderr[-3000:]
  assert (f"Resumed from {tmp_path}/ckpt-{hold_at} at step {hold_at}."
          in third.stdout)
  assert progress_steps(third.stdout.splitlines()) == list(
      range(hold_at + 1, STEPS + 1))
  assert saved_iterations(str(tmp_path / f"ckpt-{STEPS}")) == STEPS
  assert "2 replica(s)" in third.stdout
  assert "==== summary ====" in third.stdout
  assert "linear eval of the frozen encoder" in third.stdout
  assert f"tensorboard --logdir {tmp_path}" in third.stdout
  assert (tmp_path / "linear_eval" / "result.json").exists()


def test_a_second_signal_while_saving_changes_nothing(data_dir, tmp_path,
                                                      monkeypatch):
  steps = 6
  config = config_of(tiny_flags(data_dir, str(tmp_path), train_steps=steps))
  real_save = checkpoints.save
  saves = []

  def save_under_fire(manager, step):
    saves.append(step)
    # More signals exactly while the stop's checkpoint is written.
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)
    return real_save(manager, step)

  def log(line):
    if line.startswith("[pretrain] step 3/"):
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(checkpoints, "save", save_under_fire)
  with pytest.raises(preemption.StoppedBySignal) as stop:
    training.run_experiment(config, log=log)
  assert (stop.value.signal_name, stop.value.step) == ("SIGTERM", 3)
  assert saves == [3]  # saved once, not again for the later signals
  prefix = str(tmp_path / "ckpt-3")
  assert stop.value.checkpoint == prefix
  assert tf.train.latest_checkpoint(str(tmp_path)) == prefix
  checkpoints.verify(prefix)  # every tensor reads back, checksums match
  assert saved_iterations(prefix) == 3

  monkeypatch.setattr(checkpoints, "save", real_save)
  lines = []
  results = training.run_experiment(config, log=lines.append)
  assert f"Resumed from {prefix} at step 3." in lines
  assert progress_steps(lines) == [4, 5, 6]
  assert results[0].global_step == steps
