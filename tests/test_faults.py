"""Faults: a NaN loss, a kill in the middle of a checkpoint write.

The faults are injected with the test-only `SIMCLR_TF_TEST_FAULTS` variable
(see tests/fault_injection.py) into real command-line runs.
"""

import functools
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import fault_injection
from simclr_tf.training import callbacks
from simclr_tf.training import faults
from simclr_tf import run as run_lib
from simclr_tf.storage import run_dir
from simclr_tf.training import tf_trainer as training
from simclr_tf.models import simclr

import command_line
from command_line import config_of


tiny_flags = functools.partial(
    command_line.tiny_flags, mode="train", train_steps=6, checkpoint_steps=2,
    steps_per_loop=1)


def run_cli(args, faults_spec):
  return command_line.run_program(
      args, env={fault_injection.ENV_VAR: faults_spec},
      program=command_line.FAULTY_PROGRAM)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def checkpoint_steps(model_dir):
  return sorted(int(name[5:-6]) for name in os.listdir(model_dir)
                if name.startswith("ckpt-") and name.endswith(".index"))


def restore_finite(prefix, config):
  """Restores a whole training checkpoint; returns whether all is finite."""
  model = simclr.build_simclr_model(
      config.model, image_size=16, num_classes=10, train_mode="pretrain",
      with_supervised_head=True)
  status = tf.train.Checkpoint(model=model).restore(prefix)
  status.expect_partial().assert_existing_objects_matched()
  return all(np.isfinite(v.numpy()).all() for v in model.weights)


def test_fault_spec_parses_and_rejects_unknown_names():
  assert fault_injection.parse("nan_at_step=3, deterministic_input=1") == \
      fault_injection.Faults(nan_at_step=3, deterministic_input=True)
  assert not fault_injection.parse("").active
  with pytest.raises(ValueError, match="unknown setting 'nan_at'"):
    fault_injection.parse("nan_at=3")


_RESUME_ADVICE = (" Nothing was saved after it; rerunning resumes from it "
                  "(a lower --learning_rate may help).")


def test_non_finite_loss_message_names_step_and_checkpoint():
  error = faults.NonFiniteLossError(5, 8, {"total_loss": float("nan")})
  assert str(error.with_checkpoint("/r/ckpt-4")) == (
      "non-finite loss at step 8 (in the loop of steps 5-8): total_loss nan; "
      "the last good checkpoint is /r/ckpt-4." + _RESUME_ADVICE)
  # One step a loop names the step alone; the losses are listed by name.
  assert str(faults.NonFiniteLossError(
      1, 1, {"total_loss": float("-inf"), "contrast_loss": float("inf")})) == (
          "non-finite loss at step 1: contrast_loss inf, total_loss -inf; "
          "the last good checkpoint is none (no checkpoint was written "
          "before it)." + _RESUME_ADVICE)
  assert faults.non_finite_losses({"contrast_loss": 1.0,
                                   "contrast_acc": float("nan"),
                                   "total_loss": float("-inf")}) == {
                                       "total_loss": float("-inf")}


def test_a_lost_worker_is_named_in_one_line():
  detail = ("Graph execution error:\n\nDetected at node while/Collective\n"
            "Collective ops is aborted by: Error reported from "
            "/job:worker/task:1: The following tasks are unhealthy (stopped "
            "sending heartbeats):\n/job:worker/replica:0/task:1\n"
            "The tasks have crashed.")
  message = str(faults.WorkerLostError(detail, "/r/ckpt-4"))
  assert message == (
      "lost a worker of the cluster during training (unresponsive: "
      "/job:worker/replica:0/task:1); the last good checkpoint is "
      "/r/ckpt-4. Restart every worker with the same command to resume "
      "from it.")
  assert "\n" not in str(faults.WorkerLostError("Socket closed\nmore", None))


def test_a_nan_stops_with_one_line_and_keeps_the_last_checkpoint(data_dir,
                                                                 tmp_path):
  args = tiny_flags(data_dir, tmp_path)
  result = run_cli(args, "nan_at_step=3")
  assert result.returncode == run_lib.TRAINING_FAILED, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines()
            if line.startswith("error:")]
  assert len(errors) == 1, result.stderr[-3000:]
  # NaN images reach the loss, or (the fused BatchNorm may keep the loss
  # finite on NaN inputs) only the gradients: either line, as it happens.
  # The whole line: the step, what went non-finite, the last good
  # checkpoint, advice.
  checkpoint = rf"; the last good checkpoint is {re.escape(str(tmp_path))}/ckpt-2\."
  match = re.fullmatch(
      r"error: non-finite loss at step 3: (?P<losses>[^;]+)" + checkpoint
      + re.escape(_RESUME_ADVICE), errors[0])
  if match:
    losses = dict(item.split(" ") for item in match["losses"].split(", "))
    assert losses["total_loss"] == "nan", errors[0]
    assert all(not np.isfinite(float(v)) for v in losses.values()), errors[0]
    assert set(losses) <= {"total_loss", "contrast_loss",
                           "supervised_loss"}, errors[0]
  else:
    assert re.fullmatch(
        r"error: non-finite gradients at step 3 \(grad_norm (nan|inf); the "
        r"losses were finite: [^;]+\)" + checkpoint
        + re.escape(_RESUME_ADVICE), errors[0]), errors[0]
  assert "Traceback" not in result.stderr
  # Steps 1-2 trained; the poisoned step 3 was never saved.
  assert "[pretrain] step 2/6" in result.stdout
  assert checkpoint_steps(tmp_path) == [2]
  assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-2")
  assert restore_finite(str(tmp_path / "ckpt-2"), config_of(args))
  assert not (tmp_path / run_dir.LOCK_FILE).exists()  # released on error


def test_a_kill_while_saving_leaves_the_previous_checkpoint_restorable(
    data_dir, tmp_path):
  args = tiny_flags(data_dir, tmp_path)
  result = run_cli(args, "kill_while_saving=4")
  assert result.returncode == -9, result.stderr[-3000:]
  # Checkpoint 4's files were written, but the state file, which is what
  # resuming reads, still names checkpoint 2.
  assert (tmp_path / "ckpt-4.index").exists()
  assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-2")
  config = config_of(args)
  assert restore_finite(str(tmp_path / "ckpt-2"), config)
  assert (tmp_path / run_dir.LOCK_FILE).exists()  # left by the killed run

  # Rerunning (in process, same flags) takes over the lock, resumes from
  # checkpoint 2 and finishes.
  lines = []
  results = training.run_experiment(config, log=lines.append)
  assert any("Took over the stale lock" in line for line in lines), lines
  assert f"Resumed from {tmp_path}/ckpt-2 at step 2." in lines
  progress = [line.split()[2] for line in lines
              if line.startswith("[pretrain] step")]
  assert progress == ["3/6", "4/6", "5/6", "6/6"]
  assert results[0].global_step == 6
  assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-6")


def test_non_finite_gradients_with_finite_losses_say_gradients():
  """The callback's check, given the logs of a loop whose gradient norm
  overflowed while every loss stayed finite."""
  monitor = callbacks.TrainingMonitor(
      stage="pretrain", total_steps=10, global_batch_size=4,
      checkpoint_manager=None, checkpoint_every=5, summary_writer=None,
      log=lambda line: None)

  class _Optimizer:
    iterations = tf.Variable(0, dtype=tf.int64)
    learning_rate = 0.1

  class _Model:
    optimizer = _Optimizer()

    def reset_train_metrics(self):
      pass

  monitor.set_model(_Model())
  monitor.on_train_begin()
  _Model.optimizer.iterations.assign(3)
  with pytest.raises(faults.NonFiniteGradientsError) as raised:
    monitor.on_train_batch_end(0, {"total_loss": 2.5, "contrast_loss": 2.4,
                                   "weight_decay": 0.1,
                                   "grad_norm": float("inf")})
  message = str(raised.value.with_checkpoint("/r/ckpt-2"))
  assert message.startswith(
      "non-finite gradients at step 3 (in the loop of steps 1-3) (grad_norm "
      "inf; the losses were finite: contrast_loss 2.4, total_loss 2.5); the "
      "last good checkpoint is /r/ckpt-2."), message
  assert isinstance(raised.value, faults.NonFiniteLossError)
  # Finite gradients pass.
  _Model.optimizer.iterations.assign(4)
  monitor.on_train_batch_end(0, {"total_loss": 2.5, "grad_norm": 7.0})


@pytest.mark.parametrize("poisoned, expected", [
    ("moving_variance", faults.NonFiniteStatisticsError),
    ("gamma", faults.NonFiniteWeightsError),
    (None, None)])
def test_a_checkpoint_is_refused_when_weights_or_statistics_are_not_finite(
    tmp_path, poisoned, expected):
  import keras
  norm = keras.layers.BatchNormalization()
  norm.build((None, 3))
  dense = keras.layers.Dense(2)
  dense.build((None, 3))

  class _Optimizer:
    iterations = tf.Variable(0, dtype=tf.int64)
    learning_rate = 0.1

  class _Model:
    optimizer = _Optimizer()
    weights = norm.weights + dense.weights

    def reset_train_metrics(self):
      pass

  checkpoint = tf.train.Checkpoint(weights=[v.value for v in _Model.weights])
  manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), 3)
  monitor = callbacks.TrainingMonitor(
      stage="pretrain", total_steps=10, global_batch_size=4,
      checkpoint_manager=manager, checkpoint_every=2, summary_writer=None,
      log=lambda line: None)
  monitor.set_model(_Model())
  monitor.on_train_begin()
  if poisoned:
    variable = getattr(norm, poisoned)
    value = np.ones(3, np.float32)
    value[1] = np.nan
    variable.assign(value)
  _Model.optimizer.iterations.assign(2)
  logs = {"total_loss": 2.5, "contrast_loss": 2.4, "grad_norm": 3.0}
  if expected is None:
    monitor.on_train_batch_end(0, logs)
    assert manager.latest_checkpoint.endswith("ckpt-2")
    return
  with pytest.raises(expected) as raised:
    monitor.on_train_batch_end(0, logs)
  assert manager.latest_checkpoint is None  # nothing saved
  message = str(raised.value.with_checkpoint("/r/ckpt-0"))
  assert "\n" not in message
  if poisoned == "moving_variance":
    assert message.startswith(
        "non-finite BatchNorm statistics at step 2 (in the loop of steps "
        f"1-2) (1 tensor, the first {norm.moving_variance.path}; the losses "
        "and gradients were finite); the last good checkpoint is "
        "/r/ckpt-0."), message
  else:
    assert message.startswith(
        "non-finite weights at step 2 (in the loop of steps 1-2) (the losses "
        "were finite: contrast_loss 2.4, total_loss 2.5); the last good "
        "checkpoint is /r/ckpt-0."), message
