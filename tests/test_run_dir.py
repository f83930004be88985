"""The run directory: lock, pre-flight checks, per-worker writes, resume."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf.storage import files
from simclr_tf.storage import run_dir
from simclr_tf.training import distribute
from simclr_tf.training import tf_trainer as training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir, model_dir, **run_overrides):
  run = dict(model_dir=str(model_dir), train_batch_size=32, train_steps=2,
             checkpoint_steps=2, steps_per_loop=2, eval_batch_size=32,
             mode="train")
  run.update(run_overrides)
  return config_lib.ExperimentConfig(
      data=config_lib.DataConfig(
          dataset="synthetic_shapes", image_size=16, data_dir=data_dir, synthetic_train_examples=64,
          synthetic_test_examples=32),
      augment=config_lib.AugmentConfig(use_blur=False),
      model=config_lib.ModelConfig(resnet_depth=18, width_multiplier=0.125,
                                   proj_out_dim=16),
      optimizer=config_lib.OptimizerConfig(warmup_epochs=0),
      run=config_lib.RunConfig(**run)).validate()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def run(config):
  lines = []
  training.run_experiment(config, log=lines.append)
  return lines


# --- The lock.

HOLDER = """
import sys, time
from simclr_tf.storage import run_dir
lock = run_dir.RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_held_lock_refuses_naming_its_process_then_is_taken_over(
    tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", HOLDER, str(tmp_path)], cwd=REPO,
      env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE,
      text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(run_dir.RunDirError) as error:
      run_dir.RunLock(str(tmp_path)).acquire()
    message = str(error.value)
    assert (f"model_dir {tmp_path} is in use by process {holder.pid} on "
            f"{socket.gethostname()}") in message
    assert os.path.join(str(tmp_path), run_dir.LOCK_FILE) in message
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The holder died without cleaning up: its lock file is still there.
  assert (tmp_path / run_dir.LOCK_FILE).exists()
  lines = []
  lock = run_dir.RunLock(str(tmp_path), log=lines.append).acquire()
  assert any("Took over the stale lock" in line and f"process {holder.pid}"
             in line for line in lines), lines
  owner = json.loads((tmp_path / run_dir.LOCK_FILE).read_text())
  assert owner["pid"] == os.getpid()
  lock.release()
  assert not (tmp_path / run_dir.LOCK_FILE).exists()


def test_one_process_cannot_take_its_own_lock_twice(tmp_path):
  with run_dir.RunLock(str(tmp_path)):
    with pytest.raises(run_dir.RunDirError, match=f"process {os.getpid()}"):
      run_dir.RunLock(str(tmp_path)).acquire()


def test_lock_on_an_object_store_decides_by_pid_and_host():
  # ram:// is TensorFlow's in-memory filesystem: no flock, like gs://.
  directory = f"ram://locks_{os.getpid()}"
  tf.io.gfile.makedirs(directory)
  path = os.path.join(directory, run_dir.LOCK_FILE)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  host = socket.gethostname()
  for owner, refused in ((dict(pid=dead.pid, host=host), False),
                         (dict(pid=os.getppid(), host=host), True),
                         (dict(pid=dead.pid, host="elsewhere"), True)):
    if tf.io.gfile.exists(path):
      tf.io.gfile.remove(path)  # ram:// appends on "w" instead of replacing
    with tf.io.gfile.GFile(path, "w") as handle:
      handle.write(json.dumps(dict(owner, since="then")))
    lock = run_dir.RunLock(directory, log=lambda line: None)
    if refused:
      with pytest.raises(run_dir.RunDirError,
                         match=f"process {owner['pid']} on {owner['host']}"):
        lock.acquire()
    else:
      lock.acquire()
      assert json.loads(tf.io.gfile.GFile(path).read())["pid"] == os.getpid()
      lock.release()
      assert not tf.io.gfile.exists(path)


def test_a_second_in_process_run_on_a_locked_dir_is_refused(data_dir,
                                                           tmp_path):
  with run_dir.RunLock(str(tmp_path)):
    with pytest.raises(run_dir.RunDirError, match="is in use by process"):
      run(tiny_config(data_dir, tmp_path))
  assert not (tmp_path / "config.json").exists()  # refused before any work


# --- Pre-flight checks.

def test_an_unwritable_model_dir_is_refused_before_any_work(data_dir,
                                                            tmp_path):
  # A directory below a regular file cannot be created, even by root.
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(run_dir.RunDirError,
                     match=f"model_dir {blocker}/run is not writable"):
    run(tiny_config(data_dir, blocker / "run"))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only directories")
def test_a_read_only_model_dir_is_refused(tmp_path):
  read_only = tmp_path / "ro"
  read_only.mkdir()
  read_only.chmod(0o500)
  try:
    with pytest.raises(run_dir.RunDirError, match="is not writable"):
      run_dir.check_writable(str(read_only))
  finally:
    read_only.chmod(0o700)


def test_too_little_free_space_is_refused_before_writing(data_dir, tmp_path,
                                                         monkeypatch):
  monkeypatch.setattr(files, "free_bytes", lambda directory: 1000)
  with pytest.raises(run_dir.RunDirError) as error:
    run(tiny_config(data_dir, tmp_path))
  message = str(error.value)
  assert f"model_dir {tmp_path} has 1000 B free, less than the" in message
  assert "its checkpoints need" in message
  assert not (tmp_path / "config.json").exists()
  assert tf.train.latest_checkpoint(str(tmp_path)) is None
  assert not (tmp_path / run_dir.LOCK_FILE).exists()  # released


def test_checkpoint_size_estimate_counts_every_value():
  variables = [tf.Variable(tf.zeros([10, 3])),
               tf.Variable(tf.zeros([4], tf.float16)),
               tf.Variable(0, dtype=tf.int64)]
  assert run_dir.checkpoint_bytes(variables + variables[:1]) == (
      30 * 4 + 4 * 2 + 8)


def test_free_space_check_passes_with_room_and_skips_object_stores(
    tmp_path, monkeypatch):
  run_dir.check_free_space(str(tmp_path), 1)
  run_dir.check_free_space("gs://bucket/run", 10 ** 18)  # unknown: no check
  monkeypatch.setattr(files, "free_bytes", lambda directory: 1024)
  with pytest.raises(run_dir.RunDirError, match="1.0 KiB free"):
    run_dir.check_free_space(str(tmp_path), 2048)


# --- Per-worker writes.

def test_a_non_chief_writes_only_to_a_temporary_dir_that_is_removed(
    tmp_path):
  model_dir = str(tmp_path / "run")
  with run_dir.RunDirectory(model_dir, is_chief=False,
                            task_name="worker 1") as directory:
    directory.prepare()
    write_dir = directory.write_dir
    assert not write_dir.startswith(model_dir)
    assert "worker1" in os.path.basename(write_dir)
    child = directory.child("linear_eval")
    assert child.model_dir == os.path.join(model_dir, "linear_eval")
    assert child.write_dir.startswith(write_dir)
    files.atomic_write_text(child.path("result.json"), "{}")
    writer = distribute.summary_writer(directory)
    with writer.as_default(step=1):
      tf.summary.scalar("x", 1.0)
    writer.flush()
  assert not os.path.exists(write_dir)
  assert not os.path.exists(model_dir)  # the chief's directory untouched
  assert not (tmp_path / "run" / run_dir.LOCK_FILE).exists()


def test_a_restarted_worker_deletes_its_dead_predecessors_files(tmp_path):
  model_dir = str(tmp_path / "run")
  first = run_dir.RunDirectory(model_dir, is_chief=False,
                               task_name="worker 1")
  stem = first.write_dir[:-len(str(os.getpid()))]
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  leftover = f"{stem}{dead.pid}"          # a killed worker's directory
  os.makedirs(os.path.join(leftover, "ckpt"))
  alive = f"{stem}{os.getppid()}"          # a running worker's directory
  os.makedirs(alive, exist_ok=True)
  other = run_dir.RunDirectory(str(tmp_path / "other"), is_chief=False,
                               task_name="worker 1")
  try:
    assert not other.write_dir.startswith(stem)  # other model_dir, other name
    second = run_dir.RunDirectory(model_dir, is_chief=False,
                                  task_name="worker 1")
    assert second.write_dir == first.write_dir
    assert not os.path.exists(leftover)
    assert os.path.exists(alive)
  finally:
    for directory in (first, other):
      directory.cleanup()
    os.rmdir(alive)


def test_the_chief_writes_into_model_dir_and_locks_it(tmp_path):
  with run_dir.RunDirectory(str(tmp_path), is_chief=True) as directory:
    directory.prepare()
    assert directory.write_dir == str(tmp_path)
    assert directory.path("config.json") == str(tmp_path / "config.json")
    assert (tmp_path / run_dir.LOCK_FILE).exists()
  assert not (tmp_path / run_dir.LOCK_FILE).exists()


def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path):
  path = str(tmp_path / "result.json")
  files.atomic_write_text(path, "one")
  files.atomic_write_text(path, "two")
  assert open(path).read() == "two"
  assert os.listdir(tmp_path) == ["result.json"]


# --- Resuming with a changed config.

def test_config_differences_split_fixed_from_allowed(data_dir, tmp_path):
  config = tiny_config(data_dir, tmp_path)
  stored = json.loads(config.to_json())
  stored["model"]["cifar_stem"] = True  # what None resolves to at 16 px
  changed = dataclasses.replace(
      config,
      model=dataclasses.replace(config.model, resnet_depth=34),
      data=dataclasses.replace(config.data, dataset="cifar10"),
      run=dataclasses.replace(config.run, train_steps=9, eval_steps=3))
  fixed, allowed = run_dir.config_differences(stored, changed)
  assert fixed == ["data.dataset: stored 'synthetic_shapes', now 'cifar10'",
                   "model.resnet_depth: stored 18, now 34"]
  assert allowed == ["run.eval_steps: stored 0, now 3",
                     "run.train_steps: stored 2, now 9"]
  assert run_dir.config_differences(stored, config) == ([], [])


def test_resuming_under_other_settings_is_refused_listing_them(data_dir,
                                                               tmp_path):
  first = tiny_config(data_dir, tmp_path)
  run(first)
  stored_text = (tmp_path / "config.json").read_text()
  changed = dataclasses.replace(
      first, model=dataclasses.replace(first.model, width_multiplier=0.25),
      run=dataclasses.replace(first.run, train_mode="finetune",
                              from_scratch=True, train_steps=4))
  with pytest.raises(config_lib.ConfigError) as error:
    run(changed.validate())
  message = str(error.value)
  assert f"model_dir {tmp_path} holds a run with other settings" in message
  assert "model.width_multiplier: stored 0.125, now 0.25" in message
  assert "run.train_mode: stored 'pretrain', now 'finetune'" in message
  assert "train_steps" not in message  # allowed, so not a reason
  assert (tmp_path / "config.json").read_text() == stored_text
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")

  # Eval and checkpoint settings may change, and are logged. (More
  # train_steps resume training: test_training.py.)
  allowed = dataclasses.replace(first, run=dataclasses.replace(
      first.run, eval_steps=1, keep_checkpoint_max=2))
  lines = run(allowed)
  notes = [line for line in lines if line.startswith("Resuming")]
  assert notes == [f"Resuming {tmp_path} with changed settings: "
                   "run.eval_steps: stored 0, now 1; "
                   "run.keep_checkpoint_max: stored 5, now 2."]
  assert any("Resumed from" in line and "at step 2" in line
             for line in lines)
  stored = json.loads((tmp_path / "config.json").read_text())
  assert stored["run"]["keep_checkpoint_max"] == 2


def test_two_runs_racing_for_an_object_store_lock_leave_one_holder(
    monkeypatch):
  # Both find no lock; the second writes its lock while the first waits to
  # read its own back (what two hosts started together do on gs://).
  directory = f"ram://race_{os.getpid()}"
  tf.io.gfile.makedirs(directory)
  first = run_dir.RunLock(directory, log=lambda line: None)
  second = run_dir.RunLock(directory, log=lambda line: None)
  real_sleep = time.sleep

  def second_writes_meanwhile(seconds):
    monkeypatch.setattr(run_dir.time, "sleep", real_sleep)
    files.atomic_write_text(second.path, second._owner_text())

  monkeypatch.setattr(run_dir.RunLock, "REMOTE_SETTLE_SECONDS", 0.01)
  monkeypatch.setattr(run_dir.time, "sleep", second_writes_meanwhile)
  with pytest.raises(run_dir.RunDirError, match="is in use by process"):
    first.acquire()
  owner = json.loads(tf.io.gfile.GFile(first.path).read())
  assert owner["token"] == second._token  # the last writer holds it
