"""Pretraining and linear evaluation with Keras' own trainer (JAX backend).

`python -m simclr_tf.run --backend=jax` runs this instead of `tf_trainer`:
the same config, model, loss, LARS and schedule, trained by `fit` with
Keras' JAX trainer, which differentiates `SimCLRModel.compute_loss` and
compiles the whole step. Nothing here imports TensorFlow:

- the stages are `stages.plan`'s, in a `storage.run_dir.RunDirectory`
  (the lock, the resume check, the free-space check and atomic writes of
  the TF trainer);
- data come from `data.host_batches` (the built-in dataset or an image
  folder); the views are made on the device (`augment.batched`);
- every local device trains one global batch through
  `keras.distribution.DataParallel`: the loss' negatives and BatchNorm's
  statistics span the whole batch, as under `MirroredStrategy` with sync BN;
- checkpoints are Keras' own weights files (`checkpoints.keras_weights`); a NaN
  loss stops training without saving after it, and SIGTERM or SIGINT stops
  it with a checkpoint of the step it reached, as on TensorFlow;
- TensorBoard scalars are written where TensorFlow is installed, and
  `metrics.csv` always.

Fine-tuning, SavedModel export, kNN monitoring, probes and plots stay on
the TensorFlow backend; the weights are the same Keras variables
(docs/jax.md).
"""

import csv
import json
import os
import time
from typing import Callable, List

import keras
import numpy as np

from simclr_tf.augment import batched as device_augment
from simclr_tf.training import faults
from simclr_tf.data import host_batches as host_data
from simclr_tf.evaluation import health
from simclr_tf.evaluation import health_features
from simclr_tf.checkpoints import keras_weights as keras_checkpoints
from simclr_tf import optimizers
from simclr_tf.training import preemption
from simclr_tf.config import ConfigError
from simclr_tf.config import ExperimentConfig
from simclr_tf.models import simclr
from simclr_tf.storage import config_file
from simclr_tf.storage import files
from simclr_tf.storage import run_dir as run_dir_lib
from simclr_tf.training import stages
from simclr_tf.training.stage_result import RESULT_FILE
from simclr_tf.training.stage_result import StageResult

METRICS_FILE = "metrics.csv"
TRAIN_MODES = ("pretrain", "linear_eval")
# A progress line at least this often while training.
PROGRESS_SECONDS = 30.0


def run_experiment(config: ExperimentConfig,
                   log: Callable[[str], None] = print) -> List[StageResult]:
  """Runs what `config` asks, then the linear evaluation after pretraining.

  Args:
    config: a validated `ExperimentConfig`.
    log: where progress lines go.

  Returns:
    One `StageResult` per stage run.

  Raises:
    ConfigError: a setting this backend does not support.
    data.DataError: missing or unreadable data.
    keras_checkpoints.CheckpointError: a damaged or mismatched checkpoint.
    faults.NonFiniteLossError: the loss went NaN or infinite (nothing was
      saved after the last good checkpoint).
    write_errors.WriteFailedError: a checkpoint could not be written.
    preemption.StoppedBySignal: SIGTERM or SIGINT while training; the
      step it stopped at is saved.
  """
  config.validate()
  run = config.run
  if run.train_mode not in TRAIN_MODES:
    raise ConfigError(
        f"On the {keras.backend.backend()} backend train_mode is "
        f"{' or '.join(TRAIN_MODES)}; fine-tuning and distillation need "
        f"--backend=tensorflow. Received: train_mode={run.train_mode!r}")
  if config.semi_supervised.pipeline:
    raise ConfigError(
        f"On the {keras.backend.backend()} backend --semi_supervised is not "
        "available: its fine-tuning and distillation stages need "
        "--backend=tensorflow.")
  if run.precision not in ("float32", "mixed_bfloat16"):
    raise ConfigError("On JAX, precision is float32 or mixed_bfloat16. "
                      f"Received: precision={run.precision!r}")
  if run.grad_cache_chunks > 1:
    raise ConfigError(
        f"grad_cache_chunks is a TensorFlow-backend feature: use "
        f"--backend=tensorflow or grad_cache_chunks=1. Received: "
        f"grad_cache_chunks={run.grad_cache_chunks}")
  keras.config.set_dtype_policy(run.precision)
  skipped = [name for name, on in (
      ("the kNN monitor", run.knn_eval_every_epochs > 0),
      ("the probe baselines", run.probe_baselines),
      ("the plots", run.write_plots)) if on]
  if skipped:
    log(f"NOTE: {', '.join(skipped)} run on the TensorFlow backend only; "
        f"this {keras.backend.backend()} run skips them.")
  devices = _set_distribution(config, log)
  results = []
  with run_dir_lib.RunDirectory(run.model_dir) as run_dir:
    run_dir.prepare(log)
    for _, stage_config in stages.plan(config):
      results.append(run_stage(stage_config, log, devices=devices))
  return results


def _set_distribution(config, log) -> int:
  """Data parallelism over every local device; returns their count."""
  devices = keras.distribution.list_devices()
  stages.check_batches_split(config, len(devices), unit="devices")
  if len(devices) > 1:
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices))
  log(f"Keras {keras.backend.backend()} backend on {len(devices)} "
      f"device(s): {', '.join(devices)}.")
  return len(devices)


def run_stage(config: ExperimentConfig, log: Callable[[str], None], *,
              devices: int = 1) -> StageResult:
  """Builds one model, resumes it or loads the encoder, trains, evaluates.

  Args:
    config: the stage's validated config.
    log: where progress lines go.
    devices: the devices the batch is spread over (for the log).

  Returns:
    The `StageResult`.
  """
  run = config.run
  data = config.data
  os.makedirs(run.model_dir, exist_ok=True)
  supervised = stages.labelled_only(run.train_mode)
  train_split = host_data.load_split(data, data.train_split)
  eval_split = host_data.load_split(data, data.eval_split)
  num_classes = max(train_split.num_classes, 1)
  with_head = supervised or run.lineareval_while_pretraining
  if with_head and train_split.num_classes < 1:
    raise ConfigError(f"train_mode={run.train_mode} needs labels, but "
                      f"{data.data_dir}/{data.train_split} has no class "
                      "folders.")
  last_eval_batch = len(eval_split) % run.eval_batch_size
  if "eval" in run.mode and last_eval_batch % devices:
    # DataParallel shards every batch evenly over the devices.
    raise ConfigError(
        f"The {data.eval_split} split's last batch of {last_eval_batch} "
        f"images ({len(eval_split)} in all) does not split over {devices} "
        f"devices: choose an eval_batch_size whose last batch is a multiple "
        f"of {devices}, or run on fewer devices (evaluation covers every "
        f"image). Received: eval_batch_size={run.eval_batch_size}")
  steps_per_epoch, total_steps = stages.step_counts(config, len(train_split))
  keras.utils.set_random_seed(run.seed)
  model = simclr.build_from_experiment(config, num_classes=num_classes,
                                      with_supervised_head=with_head)
  schedule = optimizers.schedule_from_config(
      config.optimizer, batch_size=run.train_batch_size,
      num_examples=len(train_split), total_steps=total_steps)
  augment_config = config.train_augment()
  num_views = stages.num_views(run.train_mode)
  # Same-size images (in memory) go to the device whole, to be cropped
  # there; files of mixed sizes are cropped on the host.
  crops_on_device = train_split.images is not None
  model.compile(
      optimizers.build_optimizer(config.optimizer, schedule),
      steps_per_loop=run.steps_per_loop,
      train_augmentation=device_augment.train_augmentation(
          data.image_size, augment_config, num_views, run.seed,
          crop=crops_on_device))
  model.optimizer.build(model.trainable_variables)

  latest = keras_checkpoints.latest_step(run.model_dir)
  # Before restoring: weights of another architecture fail to load with
  # Keras' own message, which does not name the setting that changed.
  run_dir_lib.check_resume_config(config, log,
                                  has_checkpoint=latest is not None)
  random_init = False
  if latest is not None:
    keras_checkpoints.restore(model, run.model_dir, latest)
    log(f"Resumed from {keras_checkpoints.weights_path(run.model_dir, latest)}"
        f" at step {latest}.")
  elif run.train_mode == "linear_eval":
    random_init = not _load_encoder(model, config, log)
  step = _step(model)
  run_dir_lib.check_free_space(
      run.model_dir, run_dir_lib.CHECKPOINT_SPACE_FACTOR *
      run_dir_lib.checkpoint_bytes(list(model.variables) +
                                   list(model.optimizer.variables)))
  config_file.write(run.model_dir, config)
  result = StageResult(run.train_mode, run.model_dir, step,
                       random_init=random_init)
  if "train" in run.mode and step < total_steps:
    log(f"[{run.train_mode}] {total_steps} steps ({steps_per_epoch} per "
        f"epoch) of {run.train_batch_size} images over {devices} device(s), "
        f"from step {step}.")
    every = run.checkpoint_steps or run.checkpoint_epochs * steps_per_epoch
    checkpoint_epochs = max(1, -(-(every or steps_per_epoch) //
                                 steps_per_epoch))
    skipped = host_data.SkippedFiles()
    with preemption.StopOnSignal() as stop:
      saver = _Checkpoints(run, checkpoint_epochs, total_steps, stop)
      callbacks = [_Progress(run, total_steps, log), saver]
      for first_epoch, epochs, first_batch, steps in _fit_segments(
          step, total_steps, steps_per_epoch):
        train_batches = host_data.Batches(
            train_split, run.train_batch_size, data.image_size,
            augment_config, training=True, num_views=num_views,
            num_classes=num_classes, seed=run.seed,
            max_pixels=data.max_image_pixels, first_epoch=first_epoch,
            first_batch=first_batch, batches_per_epoch=steps,
            skipped=skipped)
        model.fit(train_batches, epochs=first_epoch + epochs,
                  initial_epoch=first_epoch, steps_per_epoch=steps,
                  verbose=0, callbacks=callbacks)
        if saver.fault is not None:
          raise saver.fault
        if saver.signal_name:
          raise preemption.StoppedBySignal(
              saver.signal_name, _step(model),
              keras_checkpoints.weights_path(run.model_dir, _step(model)))
    if skipped.report():
      log(f"[{run.train_mode}] {skipped.report()}")
    result.global_step = _step(model)
  if run.train_mode == "pretrain" and run.health_examples:
    result.health = _measure_health(model, config, eval_split, log)
  if "eval" in run.mode and model.supervised_head is not None:
    eval_batches = host_data.Batches(
        eval_split, run.eval_batch_size, data.image_size, config.augment,
        training=False, num_classes=num_classes,
        max_pixels=data.max_image_pixels)
    start = time.time()
    metrics = model.evaluate(eval_batches, verbose=0, return_dict=True)
    if eval_batches.skipped.report():
      log(f"[{run.train_mode}] eval: {eval_batches.skipped.report()}")
    result.eval_results = {
        simclr.EVAL_TOP_1: float(metrics[simclr.EVAL_TOP_1]),
        simclr.EVAL_TOP_5: float(metrics[simclr.EVAL_TOP_5]),
        "eval_loss": float(metrics[simclr.SUPERVISED_LOSS]),
        "global_step": result.global_step,
        # Unreadable files weigh 0 in the metrics (host_data.Batches).
        "num_eval_examples": (len(eval_split) -
                              len(eval_batches.skipped.paths)),
        **(result.health or {})}
    files.atomic_write_text(os.path.join(run.model_dir, RESULT_FILE),
                            json.dumps(result.eval_results, indent=2))
    log(f"[{run.train_mode}] eval top-1 "
        f"{100 * result.eval_results[simclr.EVAL_TOP_1]:.2f}% on "
        f"{result.eval_results['num_eval_examples']} images "
        f"({time.time() - start:.0f} s).")
  elif result.health:
    files.atomic_write_text(
        os.path.join(run.model_dir, RESULT_FILE),
        json.dumps(dict(result.health, global_step=result.global_step),
                   indent=2))
  return result


def _measure_health(model, config, eval_split, log):
  """The health signals of the stage's final encoder: the `health/`
  scalars (TensorBoard, beside the training curves) and one log line."""
  start = time.time()
  step = _step(model)
  signals = health_features.measure_host(
      model, config, eval_split, num_examples=config.run.health_examples)
  writer = _summary_writer(os.path.join(config.run.model_dir, "train"))
  if writer is not None:
    writer(step, {health.HEALTH_PREFIX + name: value
                  for name, value in signals.items()})
  log(f"[{config.run.train_mode}] health at step {step} "
      f"({min(len(eval_split), config.run.health_examples)} eval images): "
      f"{health.describe(signals, health_features.feature_dim(model))}  "
      f"({time.time() - start:.1f} s)")
  return signals


def _fit_segments(step, total_steps, steps_per_epoch):
  """The `fit` calls that run steps [step, total_steps) in data order.

  A run resumed mid-epoch first finishes that epoch from the batch it
  stopped at; whole epochs follow in one call; the steps left over (the
  authors' step count is rarely whole epochs) end it exactly.

  Returns:
    (first_epoch, epochs, first_batch, steps_per_epoch) per `fit` call.
  """
  segments = []
  epoch, offset = divmod(step, steps_per_epoch)
  remaining = total_steps - step
  while remaining > 0:
    steps = min(steps_per_epoch - offset, remaining)
    if (segments and offset == 0 and steps == steps_per_epoch and
        segments[-1][2] == 0 and segments[-1][3] == steps_per_epoch):
      first, count, _, _ = segments[-1]
      segments[-1] = (first, count + 1, 0, steps_per_epoch)
    else:
      segments.append((epoch, 1, offset, steps))
    remaining -= steps
    epoch += 1
    offset = 0
  return segments


def _step(model) -> int:
  return int(np.asarray(model.optimizer.iterations.value))


def _load_encoder(model, config, log) -> bool:
  """Copies encoder and projection head from `run.checkpoint`'s run."""
  source_dir = config.run.checkpoint
  if not source_dir:
    log("NOTE: linear_eval without --checkpoint: the encoder stays at its "
        "RANDOM initialisation. This is the baseline, not a trained model.")
    return False
  step = keras_checkpoints.latest_step(source_dir)
  if step is None:
    raise keras_checkpoints.CheckpointError(
        f"No Keras checkpoint in {source_dir} (the JAX backend reads the "
        "*.weights.h5 files it writes). Pretrain there with --backend=jax "
        "first.")
  stored = _read_config(source_dir)
  pretrain = simclr.build_simclr_model(
      config.model, image_size=config.data.image_size,
      num_classes=model.supervised_head.num_classes
      if stored.run.lineareval_while_pretraining else 1,
      train_mode="pretrain",
      with_supervised_head=stored.run.lineareval_while_pretraining)
  keras_checkpoints.restore_weights(pretrain, source_dir, step)
  model.encoder.set_weights(pretrain.encoder.get_weights())
  model.projection_head.set_weights(pretrain.projection_head.get_weights())
  log(f"Loaded the pretrained encoder from "
      f"{keras_checkpoints.weights_path(source_dir, step)} (step {step}).")
  return True


def _read_config(model_dir) -> ExperimentConfig:
  path = config_file.path_in(model_dir)
  try:
    with open(path) as handle:
      return ExperimentConfig.from_json(handle.read())
  except (OSError, ValueError) as error:
    raise keras_checkpoints.CheckpointError(
        f"Cannot read {path} ({error}); it describes the checkpoint's "
        "model.") from error


class _Progress(keras.callbacks.Callback):
  """A progress line per log interval, scalars to CSV and TensorBoard."""

  def __init__(self, run, total_steps, log):
    super().__init__()
    self._run = run
    self._total = total_steps
    self._log = log
    self._start = time.time()
    self._start_step = None
    self._last_line = self._start
    self._csv_path = os.path.join(run.model_dir, METRICS_FILE)
    self._writer = _summary_writer(os.path.join(run.model_dir, "train"))

  def on_train_batch_begin(self, batch, logs=None):
    if self._start_step is None:
      self._start_step = _step(self.model)
      self._start = time.time()
      self._last_line = self._start

  def on_train_batch_end(self, batch, logs=None):
    # Between epoch lines, one at least every PROGRESS_SECONDS: an ImageNet
    # epoch is thousands of steps.
    now = time.time()
    if now - self._last_line < PROGRESS_SECONDS:
      return
    self._last_line = now
    step = _step(self.model)
    rate = (step - self._start_step) / max(now - self._start, 1e-9)
    loss = (logs or {}).get(simclr.CONTRAST_LOSS,
                            (logs or {}).get(simclr.SUPERVISED_LOSS))
    shown = f"  loss {float(loss):.4g}" if loss is not None else ""
    self._log(f"[{self._run.train_mode}] step {step}/{self._total}{shown}  "
              f"({rate:.2f} steps/s)")

  def on_epoch_end(self, epoch, logs=None):
    step = _step(self.model)
    self._last_line = time.time()
    logs = {k: float(v) for k, v in (logs or {}).items()
            if k != simclr.WEIGHTS_FINITE}
    logs["learning_rate"] = float(np.asarray(
        self.model.optimizer.learning_rate))
    rate = (step - self._start_step) / max(time.time() - self._start, 1e-9)
    shown = "  ".join(f"{k} {v:.4g}" for k, v in sorted(logs.items())
                      if k in (simclr.CONTRAST_LOSS, simclr.CONTRAST_ACC,
                               simclr.SUPERVISED_LOSS, simclr.SUPERVISED_ACC,
                               "learning_rate"))
    self._log(f"[{self._run.train_mode}] step {step}/{self._total}  {shown}  "
              f"({rate:.2f} steps/s)")
    new_file = not os.path.exists(self._csv_path)
    with open(self._csv_path, "a", newline="") as handle:
      writer = csv.writer(handle)
      if new_file:
        writer.writerow(["step"] + sorted(logs))
      writer.writerow([step] + [logs[k] for k in sorted(logs)])
    if self._writer is not None:
      self._writer(step, logs)


def _summary_writer(logdir):
  """A TensorBoard scalar writer, or None where TensorFlow is absent."""
  try:
    import tensorflow as tf  # Optional: TensorBoard's event files.
  except ImportError:
    return None
  writer = tf.summary.create_file_writer(logdir)

  def write(step, scalars):
    with writer.as_default(step=step):
      for name, value in scalars.items():
        tf.summary.scalar(name, value)
    writer.flush()

  return write


class _Checkpoints(keras.callbacks.Callback):
  """Saves on schedule and at the end; stops on a NaN loss or a signal.

  A non-finite loss, or weights (`simclr.WEIGHTS_FINITE`), stops training
  at the end of the loop that produced it and nothing is saved after it, so
  the newest checkpoint is the last good state (`fault`). SIGTERM or
  SIGINT, recorded by `stop`, ends the loop in flight, which is then saved
  (`signal_name`); rerunning resumes there.

  Args:
    run: the stage's `RunConfig`.
    every_epochs: save after every this many epochs.
    total_steps: the stage's last step; training stops exactly there.
    stop: a `preemption.StopOnSignal`, installed while training.
  """

  def __init__(self, run, every_epochs, total_steps, stop):
    super().__init__()
    self._run = run
    self._every = every_epochs
    self._total = total_steps
    self._stop = stop
    self._loop_start = 0
    self.fault = None
    self.signal_name = None

  def on_train_batch_begin(self, batch, logs=None):
    self._loop_start = _step(self.model) + 1

  def on_train_batch_end(self, batch, logs=None):
    step = _step(self.model)
    losses = {name: float(value) for name, value in (logs or {}).items()
              if name in faults.LOSS_METRICS}
    bad = faults.non_finite_losses(losses)
    if bad:
      self.fault = faults.NonFiniteLossError(self._loop_start, step, bad,
                                             self._latest_checkpoint())
    elif float((logs or {}).get(simclr.WEIGHTS_FINITE, 1.0)) < 1.0:
      self.fault = faults.NonFiniteWeightsError(
          self._loop_start, step, losses, self._latest_checkpoint())
    if self.fault is not None:
      self.model.stop_training = True
      return
    self.signal_name = self._stop.agreed_signal()
    # `train_steps` need not be whole epochs: stop exactly there.
    if self.signal_name or step >= self._total:
      self.model.stop_training = True

  def on_epoch_end(self, epoch, logs=None):
    step = _step(self.model)
    if self.fault is None and ((epoch + 1) % self._every == 0 or
                               step >= self._total):
      self._save(step)

  def on_train_end(self, logs=None):
    step = _step(self.model)
    if (self.fault is None and (step >= self._total or self.signal_name)
        and keras_checkpoints.latest_step(self._run.model_dir) != step):
      self._save(step)

  def _save(self, step):
    keras_checkpoints.save(self.model, self._run.model_dir, step,
                           keep=self._run.keep_checkpoint_max)

  def _latest_checkpoint(self):
    latest = keras_checkpoints.latest_step(self._run.model_dir)
    return (None if latest is None else
            keras_checkpoints.weights_path(self._run.model_dir, latest))
