"""Callbacks run once per training loop: progress, summaries, checkpoints."""

import time

import keras
import numpy as np
import tensorflow as tf

from simclr_tf.checkpoints import ours as checkpoints
from simclr_tf.training import faults
from simclr_tf.training import preemption

LEARNING_RATE_TAG = "learning_rate"
TRAIN_PREFIX = "train/"
EVAL_PREFIX = "eval/"
AUGMENTED_VIEWS_TAG = "train/augmented_views"
# Metrics shown on the console, in this order, when present.
_CONSOLE_METRICS = ("contrast_loss", "contrast_acc", "distill_loss",
                    "distill_agreement", "supervised_loss",
                    "supervised_acc", "total_loss")


def format_duration(seconds):
  """"1h02m", "4m05s" or "12s"."""
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  if minutes:
    return f"{minutes}m{seconds:02d}s"
  return f"{seconds}s"


class TrainingMonitor(keras.callbacks.Callback):
  """Once per loop: TensorBoard scalars, a progress line, checkpoints.

  Training metrics are averaged over each loop and reset after it, so each
  summary and console line describes the steps since the previous one. A
  non-finite loss raises `faults.NonFiniteLossError`, a non-finite gradient
  norm `faults.NonFiniteGradientsError`, before anything is saved; before
  each checkpoint, a non-finite weight raises `faults.NonFiniteWeightsError`
  and a non-finite BatchNorm statistic `faults.NonFiniteStatisticsError`.

  Args:
    stage: label shown on the console ("pretrain", "linear_eval", ...).
    total_steps: the step training ends at.
    global_batch_size: images per step, for the throughput.
    checkpoint_manager: a `tf.train.CheckpointManager`, or None.
    checkpoint_every: save when the step crosses a multiple of this.
    summary_writer: a `tf.summary` writer, or None.
    log: function taking one line of text.
    stop_request: a `preemption.StopOnSignal`, or None. After each loop,
      if it (on any worker) received a signal, the checkpoint of that step
      is saved and `preemption.StoppedBySignal` raised.
  """

  def __init__(self, *, stage, total_steps, global_batch_size,
               checkpoint_manager, checkpoint_every, summary_writer, log,
               stop_request=None):
    super().__init__()
    if checkpoint_every < 1:
      raise ValueError("`checkpoint_every` must be positive. Received: "
                       f"checkpoint_every={checkpoint_every}")
    self.stage = stage
    self.total_steps = total_steps
    self.global_batch_size = global_batch_size
    self.checkpoint_manager = checkpoint_manager
    self.checkpoint_every = checkpoint_every
    self.summary_writer = summary_writer
    self.log = log
    self.stop_request = stop_request
    self.last_saved_step = None

  def _step(self):
    return int(self.model.optimizer.iterations.numpy())

  def on_train_begin(self, logs=None):
    self._start_step = self._last_step = self._step()
    self._start_time = self._last_time = time.time()
    self.last_saved_step = self._start_step
    self._last_values = {}

  def on_train_batch_end(self, batch, logs=None):
    step = self._step()
    if step == self._last_step:
      return
    values = {name: float(value) for name, value in (logs or {}).items()}
    learning_rate = float(self.model.optimizer.learning_rate)
    self._write_summaries(step, values, learning_rate)
    bad = faults.non_finite_losses(values)
    if bad:
      # Stop before anything is saved: the weights are already poisoned.
      raise faults.NonFiniteLossError(self._last_step + 1, step, bad)
    if faults.non_finite_gradients(values):
      raise faults.NonFiniteGradientsError(
          self._last_step + 1, step,
          {name: value for name, value in values.items()
           if name in faults.LOSS_METRICS + (faults.GRAD_NORM_METRIC,)})
    self._last_values = values
    self.model.reset_train_metrics()
    self.log(self._progress_line(step, values, learning_rate))
    if step // self.checkpoint_every > self.last_saved_step // \
        self.checkpoint_every:
      self.save(step)
    # Checked after every loop, where all workers are at the same step.
    stop = (self.stop_request.agreed_signal()
            if self.stop_request is not None else None)
    if stop:
      if step != self.last_saved_step:
        self.save(step)
      raise preemption.StoppedBySignal(stop, step)

  def on_train_end(self, logs=None):
    step = self._step()
    if step != self.last_saved_step:
      self.save(step)

  def save(self, step):
    """Writes a checkpoint for `step` (if there is a manager).

    Raises:
      faults.NonFiniteWeightsError, faults.NonFiniteStatisticsError: the
        state to be saved is not finite; nothing is saved.
    """
    if self.checkpoint_manager is not None:
      # The losses and gradient norm are checked each loop; the weights and
      # the BatchNorm statistics, which a NaN can reach without showing in
      # either, before each checkpoint, so that none saves a poisoned state.
      faults.check_finite_state(
          self.model.weights, self.last_saved_step + 1, step,
          {name: value for name, value in self._last_values.items()
           if name in faults.LOSS_METRICS})
      checkpoints.save(self.checkpoint_manager, step)
    if self.summary_writer is not None:
      # Whatever survives a crash, the summaries up to the checkpoint do.
      self.summary_writer.flush()
    self.last_saved_step = step

  def _write_summaries(self, step, values, learning_rate):
    if self.summary_writer is None:
      return
    with self.summary_writer.as_default(step=step):
      for name, value in values.items():
        tf.summary.scalar(TRAIN_PREFIX + name, value)
      tf.summary.scalar(LEARNING_RATE_TAG, learning_rate)

  def _progress_line(self, step, values, learning_rate):
    now = time.time()
    images_per_second = ((step - self._last_step) * self.global_batch_size /
                         max(now - self._last_time, 1e-9))
    done = step - self._start_step
    remaining = self.total_steps - step
    eta = (now - self._start_time) / max(done, 1) * remaining
    self._last_step, self._last_time = step, now
    shown = "  ".join(f"{name} {values[name]:.4f}"
                      for name in _CONSOLE_METRICS if name in values)
    return (f"[{self.stage}] step {step}/{self.total_steps} "
            f"({100 * step / max(self.total_steps, 1):.0f}%)  {shown}  "
            f"lr {learning_rate:.4g}  {images_per_second:.0f} img/s  "
            f"ETA {format_duration(eta)}")


def write_view_pairs(summary_writer, images, step, max_pairs=4):
  """Writes augmented view pairs side by side as a TensorBoard image.

  Args:
    summary_writer: a `tf.summary` writer.
    images: (B, H, W, 3 * V) float images in [0, 1] with V views.
    step: the summary step.
    max_pairs: how many examples to show.
  """
  images = np.asarray(images)[:max_pairs]
  num_views = images.shape[-1] // 3
  views = [images[..., 3 * v:3 * (v + 1)] for v in range(num_views)]
  side_by_side = np.concatenate(views, axis=2)  # along the width
  with summary_writer.as_default(step=step):
    tf.summary.image(AUGMENTED_VIEWS_TAG, np.clip(side_by_side, 0.0, 1.0),
                     max_outputs=max_pairs)


def write_eval_summaries(summary_writer, results, step):
  """Writes evaluation metrics as `eval/<name>` scalars."""
  with summary_writer.as_default(step=step):
    for name, value in results.items():
      tf.summary.scalar(EVAL_PREFIX + name, float(value))
