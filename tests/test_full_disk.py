"""A disk that fills up while a checkpoint or an export is written.

The disk is a small tmpfs this test mounts (CI runs as root); the test fills
it with a file of its own once the run has a checkpoint. Skipped, saying
why, where mounting is not allowed.
"""

import functools
import os
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from simclr_tf.checkpoints import ours as checkpoints
from simclr_tf import data as data_lib
from simclr_tf import export
from simclr_tf.storage import export_layout
from simclr_tf import run as run_lib
from simclr_tf.training import tf_trainer as training
from simclr_tf.storage import write_errors

import command_line
from command_line import config_of

tiny_flags = functools.partial(
    command_line.tiny_flags, mode="train", checkpoint_steps=2,
    steps_per_loop=1)


@pytest.fixture
def small_disk(tmp_path):
  """A 12 MiB tmpfs: room for the tiny run, until the test fills it."""
  mount_point = tmp_path / "disk"
  mount_point.mkdir()
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs",
                           str(mount_point)], capture_output=True, text=True)
  if result.returncode:
    pytest.skip("cannot mount a tmpfs to fill up (needs root): "
                f"{result.stderr.strip()}")
  yield mount_point
  subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory):
  """Writes a file into `directory` until its filesystem is full."""
  with open(os.path.join(directory, "filler"), "wb") as handle:
    try:
      while True:
        handle.write(b"\0" * (1 << 16))
        handle.flush()
    except OSError as error:
      assert write_errors.out_of_space(error)


def test_a_full_disk_stops_a_checkpoint_write_with_one_line(data_dir,
                                                            small_disk):
  model_dir = str(small_disk / "run")
  command = [sys.executable, "-m", "simclr_tf.run"] + tiny_flags(
      data_dir, model_dir, train_steps=40)
  process = subprocess.Popen(command, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             cwd=command_line.REPO,
                             env=dict(os.environ,
                                      PYTHONPATH=command_line.REPO))
  try:
    deadline = time.time() + 200
    while not checkpoints.listed_checkpoints(model_dir):
      assert process.poll() is None, process.communicate()[1][-3000:]
      assert time.time() < deadline, "no checkpoint within 200 s"
      time.sleep(0.02)
    fill(small_disk)
    stdout, stderr = process.communicate(timeout=200)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  assert process.returncode == run_lib.TRAINING_FAILED, stderr[-3000:]
  errors = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
  previous = tf.train.latest_checkpoint(model_dir)
  failed = errors[0].split("could not write checkpoint ")[1].split(" ")[0]
  assert errors[0] == (
      f"error: could not write checkpoint {failed} (no space left on "
      f"device); the previous checkpoint {previous} is intact and nothing "
      "partial was left. Free space (or fix the disk) and rerun the same "
      "command to resume from it.")
  assert int(failed.split("-")[-1]) > int(previous.split("-")[-1])
  checkpoints.verify(previous)  # every tensor reads back
  leftovers = [name for name in os.listdir(model_dir)
               if name.startswith(os.path.basename(failed))]
  assert leftovers == [], leftovers
  assert "[pretrain] step" in stdout


def test_a_full_disk_stops_an_export_and_keeps_the_previous_one(
    data_dir, small_disk, tmp_path):
  config = config_of(tiny_flags(data_dir, str(tmp_path / "run"),
                                train_steps=1))
  model = training.build_model(config, tf.distribute.get_strategy(),
                               info=data_lib.get_dataset_info(config.data),
                               total_steps=1)
  exports_dir = str(small_disk / export_layout.EXPORTS_DIR)
  first = export.export_model(model, config, f"{exports_dir}/1",
                              global_step=1)
  fill(small_disk)
  with pytest.raises(write_errors.WriteFailedError) as error:
    export.export_model(model, config, f"{exports_dir}/2", global_step=2)
  assert str(error.value).startswith(
      f"could not write the export {exports_dir}/2 (no space left on "
      "device); nothing partial was left")
  assert sorted(os.listdir(exports_dir)) == ["1"]
  assert export_layout.is_export(first)
  checkpoints.verify(os.path.join(first, export_layout.VARIABLES_PREFIX))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))
