"""Damaged checkpoints: found before restoring, named, never deleted.

The damage is done here, to real checkpoints of a tiny run: a truncated
data file (a partial copy, a full disk during another tool's write) and one
flipped bit (bit rot), which TensorFlow's per-tensor CRC32C catches.
"""

import errno
import functools
import os
import shutil

import pytest
import tensorflow as tf

from simclr_tf.checkpoints import ours as checkpoints
from simclr_tf import run as run_lib
from simclr_tf.training import tf_trainer as training

import command_line
from command_line import config_of

tiny_flags = functools.partial(
    command_line.tiny_flags, mode="train", train_steps=4, checkpoint_steps=2,
    steps_per_loop=1)


def truncate(path):
  with open(path, "r+b") as handle:
    handle.truncate(os.path.getsize(path) // 2)


def flip_a_bit(path):
  with open(path, "r+b") as handle:
    data = bytearray(handle.read())
    data[len(data) // 3] ^= 0x10
    handle.seek(0)
    handle.write(data)


def data_file(prefix):
  files = tf.io.gfile.glob(prefix + ".data-*")
  assert len(files) == 1, files
  return files[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def trained_run(data_dir, tmp_path_factory):
  """A run directory holding ckpt-2 and ckpt-4 (copy it before damaging)."""
  model_dir = str(tmp_path_factory.mktemp("run"))
  training.run_experiment(config_of(tiny_flags(data_dir, model_dir)),
                          log=lambda line: None)
  assert checkpoints.listed_checkpoints(model_dir) == [
      f"{model_dir}/ckpt-4", f"{model_dir}/ckpt-2"]
  return model_dir


def copy_of(trained_run, tmp_path):
  model_dir = str(tmp_path / "run")
  shutil.copytree(trained_run, model_dir)
  # The state file names the checkpoints by absolute path.
  state = os.path.join(model_dir, "checkpoint")
  with open(state) as handle:
    text = handle.read()
  with open(state, "w") as handle:
    handle.write(text.replace(trained_run, model_dir))
  return model_dir


@pytest.mark.parametrize("damage, reason", [
    (truncate, "Read less bytes than requested"),
    (flip_a_bit, "Checksum does not match")])
def test_verify_names_the_damaged_file(trained_run, tmp_path, damage,
                                       reason):
  model_dir = copy_of(trained_run, tmp_path)
  prefix = f"{model_dir}/ckpt-4"
  checkpoints.verify(prefix)  # intact before
  damage(data_file(prefix))
  with pytest.raises(checkpoints.DamagedCheckpointError) as error:
    checkpoints.verify(prefix)
  assert error.value.path == data_file(prefix)
  assert reason in error.value.reason
  assert "\n" not in str(error.value)
  # A damaged index is named as such.
  flip_a_bit(f"{model_dir}/ckpt-2.index")
  with pytest.raises(checkpoints.DamagedCheckpointError) as error:
    checkpoints.verify(f"{model_dir}/ckpt-2")
  assert error.value.path == f"{model_dir}/ckpt-2.index"


# A flipped bit is found by the same `verify` (test above); one kind of damage
# is enough to show the fallback, and each costs a resumed run.
@pytest.mark.parametrize("damage", [truncate])
def test_resume_falls_back_to_the_newest_intact_checkpoint(
    data_dir, trained_run, tmp_path, damage):
  model_dir = copy_of(trained_run, tmp_path)
  damaged = data_file(f"{model_dir}/ckpt-4")
  damage(damaged)
  with open(damaged, "rb") as handle:
    damaged_bytes = handle.read()
  lines = []
  config = config_of(tiny_flags(data_dir, model_dir))
  results = training.run_experiment(config, log=lines.append)
  warnings = [line for line in lines if line.startswith("WARNING:")]
  assert warnings[0].startswith(
      f"WARNING: checkpoint {model_dir}/ckpt-4: {damaged} is damaged (")
  kept = f"{model_dir}/ckpt-4.{checkpoints.DAMAGED_TAG}"
  assert warnings[1] == (
      f"WARNING: resuming from the newest intact checkpoint "
      f"{model_dir}/ckpt-2; the steps after it are trained again; the "
      f"damaged checkpoint is kept as {kept}.")
  assert f"Resumed from {model_dir}/ckpt-2 at step 2." in lines
  assert results[0].global_step == 4
  # The damaged files are kept, byte for byte, beside the run's new
  # ckpt-4 (written when training reached step 4 again), which is intact.
  with open(damaged.replace("ckpt-4.", "ckpt-4.damaged."), "rb") as handle:
    assert handle.read() == damaged_bytes
  assert os.path.exists(kept + ".index")
  checkpoints.verify(f"{model_dir}/ckpt-4")
  assert checkpoints.listed_checkpoints(model_dir) == [
      f"{model_dir}/ckpt-4", f"{model_dir}/ckpt-2"]


def test_no_intact_checkpoint_is_refused_and_nothing_is_touched(
    data_dir, trained_run, tmp_path):
  model_dir = copy_of(trained_run, tmp_path)
  for step in (2, 4):
    truncate(data_file(f"{model_dir}/ckpt-{step}"))
  before = sorted(os.listdir(model_dir))
  config = config_of(tiny_flags(data_dir, model_dir))
  with pytest.raises(checkpoints.CheckpointError,
                     match=f"{model_dir} holds no intact checkpoint"):
    training.run_experiment(config, log=lambda line: None)
  assert sorted(os.listdir(model_dir)) == before


def test_a_damaged_checkpoint_flag_is_one_error_line(data_dir, trained_run,
                                                     tmp_path):
  model_dir = copy_of(trained_run, tmp_path)
  prefix = f"{model_dir}/ckpt-4"
  flip_a_bit(data_file(prefix))
  with open(data_file(prefix), "rb") as handle:
    damaged_bytes = handle.read()
  result = command_line.run_program(tiny_flags(
      data_dir, str(tmp_path / "linear"), train_mode="linear_eval",
      checkpoint=prefix))
  assert result.returncode == run_lib.USAGE_ERROR, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines()
            if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, \
      result.stderr[-3000:]
  assert errors[0].startswith(
      f"error: --checkpoint {prefix}: {data_file(prefix)} is damaged "
      "(TensorBundle at ")
  assert "Checksum does not match" in errors[0]
  assert errors[0].endswith("Give an intact checkpoint, e.g. an earlier "
                            "ckpt-N of the same run, or its export.")
  with open(data_file(prefix), "rb") as handle:
    assert handle.read() == damaged_bytes  # left as it was


def _failing_reads(monkeypatch, failures):
  """Makes the first `failures` checkpoint opens raise OSError(EIO)."""
  real = tf.train.load_checkpoint
  calls = []

  def load_checkpoint(prefix):
    calls.append(prefix)
    if len(calls) <= failures:
      raise OSError(errno.EIO, os.strerror(errno.EIO), prefix + ".index")
    return real(prefix)

  monkeypatch.setattr(tf.train, "load_checkpoint", load_checkpoint)
  monkeypatch.setattr(checkpoints, "RETRY_DELAYS_S", (0.01, 0.02, 0.03))
  return calls


def _listing(model_dir):
  return {name: os.path.getsize(os.path.join(model_dir, name))
          for name in os.listdir(model_dir)}


def test_a_transient_read_error_is_retried_and_nothing_is_renamed(
    trained_run, tmp_path, monkeypatch):
  model_dir = copy_of(trained_run, tmp_path)
  before = _listing(model_dir)
  calls = _failing_reads(monkeypatch, failures=2)
  lines = []
  latest = checkpoints.resumable_checkpoint(model_dir, log=lines.append)
  assert latest == f"{model_dir}/ckpt-4"  # the newest, not a fallback
  assert calls == [latest] * 3
  assert [line.split(" (")[0] for line in lines] == [
      f"WARNING: reading checkpoint {latest} failed"] * 2
  assert "Input/output error" in lines[0]
  assert lines[1].endswith("(attempt 3 of 4).")
  assert _listing(model_dir) == before


def test_a_lasting_read_error_stops_in_one_line_and_changes_nothing(
    trained_run, tmp_path, monkeypatch):
  model_dir = copy_of(trained_run, tmp_path)
  before = _listing(model_dir)
  calls = _failing_reads(monkeypatch, failures=100)
  with pytest.raises(checkpoints.CheckpointReadError) as error:
    checkpoints.resumable_checkpoint(model_dir, log=lambda line: None)
  assert len(calls) == 4  # the first attempt and three retries
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"cannot read {model_dir}/ckpt-4 (")
  assert "tried 4 times" in message and "nothing was changed" in message
  # Not damage: ckpt-2 was not tried in its place, nothing set aside.
  assert not isinstance(error.value, checkpoints.DamagedCheckpointError)
  assert _listing(model_dir) == before


def test_only_proof_of_damage_counts_as_damage(tmp_path):
  # Each damage TensorFlow's reader can report, made to a real checkpoint,
  # against failures of the storage that say nothing about the bytes.
  variables = [tf.Variable(tf.random.normal([64, 64])), tf.Variable(1.0)]
  prefix = tf.train.Checkpoint(v=variables).write(str(tmp_path / "c"))
  damages = {
      "truncated data": lambda p: truncate(data_file(p)),
      "flipped data": lambda p: flip_a_bit(data_file(p)),
      "flipped index": lambda p: flip_a_bit(p + ".index"),
      "truncated index": lambda p: truncate(p + ".index"),
      "missing data": lambda p: os.remove(data_file(p)),
  }
  for name, damage in damages.items():
    copy = str(tmp_path / name.replace(" ", "_"))
    for path in tf.io.gfile.glob(prefix + ".*"):
      shutil.copy(path, copy + path[len(prefix):])
    damage(copy)
    with pytest.raises(checkpoints.DamagedCheckpointError):
      checkpoints.verify(copy)
  for error in (OSError(errno.EIO, "Input/output error"),
                OSError(errno.ECONNRESET, "Connection reset by peer"),
                tf.errors.UnavailableError(None, None, "503 Service "
                                           "Unavailable"),
                tf.errors.DeadlineExceededError(None, None, "timed out"),
                PermissionError(errno.EACCES, "Permission denied")):
    assert not checkpoints.is_corruption(error), error
