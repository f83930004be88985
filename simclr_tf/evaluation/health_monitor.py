"""The health signals of a pretraining run on TensorFlow: features under the
training strategy, the `health/` scalars, and a callback beside the kNN
monitor.

The features (`evaluation.health` computes the signals from them):

- encoder features h of the first `run.health_examples` eval-split images,
  through the evaluation transform (effective rank);
- projection-head outputs of two training-augmentation views of eval-split
  images (alignment, and uniformity of the first view).

Every network call is in inference mode, so each example's output depends
on that example alone and the extraction can pad and gather freely.
"""

import dataclasses
import time
from typing import Callable, Dict, Optional

import keras
import tensorflow as tf

from simclr_tf import data as data_lib
from simclr_tf.evaluation import features as features_lib
from simclr_tf.evaluation import health


class HealthProbe:
  """Measures the health signals of a model, reusing its traced steps.

  Args:
    model: a `SimCLRModel` (its encoder, projection head and, with
      `augment.on_device`, its `train_augmentation`).
    config: the stage's `ExperimentConfig`.
    strategy: the training `tf.distribute.Strategy`.
    num_examples: images to measure on (capped by the eval split).
  """

  def __init__(self, model, config, strategy, *, num_examples: int):
    if num_examples < 1:
      raise ValueError("`num_examples` must be positive. Received: "
                       f"num_examples={num_examples}")
    run, data = config.run, config.data
    self.batch_size = run.eval_batch_size
    self._features_input_fn, split_size = features_lib.split_input_fn(
        data, config.augment, split=data.eval_split,
        batch_size=self.batch_size)
    self.num_examples = min(num_examples, split_size)
    # The training pipeline, read from the eval split: the views training
    # sees, of images training never sees. Label subsets concern the train
    # split only.
    views_data = dataclasses.replace(
        data, train_split=data.eval_split, label_fraction=None,
        labels_per_class=None)
    self._views_input_fn = data_lib.build_input_fn(
        views_data, config.train_augment(), training=True, num_views=2,
        global_batch_size=self.batch_size, seed=run.seed, supervised=False)
    encoder, head = model.encoder, model.projection_head
    augmentation = model.train_augmentation

    def views_forward(images):
      if augmentation is not None:  # uint8 crops: the step's distortion.
        images = augmentation(images)
      projections = [head(encoder(view, training=False), training=False)[0]
                     for view in tf.split(images, 2, axis=-1)]
      # Side by side, so each row stays one image's (the extractor pads).
      return tf.concat(projections, axis=-1)

    self._features = features_lib.FeatureExtractor(
        lambda images: encoder(images, training=False), strategy)
    self._views = features_lib.FeatureExtractor(views_forward, strategy)
    self.feature_dim = 0  # The encoder's width, once measured.

  def measure(self) -> Dict[str, float]:
    """The three signals of the model as it is now.

    Returns:
      {health.ALIGNMENT, health.UNIFORMITY, health.EFFECTIVE_RANK}.
    """
    features, _ = self._features(
        self._features_input_fn, max_examples=self.num_examples,
        batch_size=self.batch_size)
    views, _ = self._views(self._views_input_fn,
                           max_examples=self.num_examples,
                           batch_size=self.batch_size)
    half = views.shape[1] // 2
    view_1, view_2 = views[:, :half], views[:, half:]
    self.feature_dim = features.shape[1]
    return health.signals(features, view_1, view_2)


def build_probe(model, config, strategy) -> Optional[HealthProbe]:
  """The stage's probe, or None when `run.health_examples` is 0 or the
  stage does not pretrain.

  Args:
    model: the stage's `SimCLRModel`.
    config: the stage's `ExperimentConfig`.
    strategy: the training strategy.

  Returns:
    A `HealthProbe`, or None.
  """
  run = config.run
  if not run.health_examples or run.train_mode != "pretrain":
    return None
  return HealthProbe(model, config, strategy,
                     num_examples=run.health_examples)


def write_summaries(summary_writer, results: Dict[str, float], step: int):
  """Writes the signals as `health/<name>` TensorBoard scalars."""
  with summary_writer.as_default(step=step):
    for name, value in results.items():
      tf.summary.scalar(health.HEALTH_PREFIX + name, float(value))


def measure_and_report(probe: HealthProbe, *, step: int, summary_writer,
                       log: Callable[[str], None], stage: str = "pretrain"
                       ) -> Dict[str, float]:
  """Measures, writes the scalars and logs one line.

  Args:
    probe: a `HealthProbe`.
    step: the optimizer step the scalars are written at.
    summary_writer: a `tf.summary` writer, or None.
    log: function taking one line of text.
    stage: label shown on the console.

  Returns:
    The signals.
  """
  start = time.time()
  results = probe.measure()
  if summary_writer is not None:
    write_summaries(summary_writer, results, step)
  log(f"[{stage}] health at step {step} ({probe.num_examples} eval images): "
      f"{health.describe(results, probe.feature_dim)}  "
      f"({time.time() - start:.1f} s)")
  return results


class HealthMonitor(keras.callbacks.Callback):
  """The health signals every `every_steps` steps, beside the kNN monitor.

  The end of training is measured by the trainer itself, for the stage's
  result; this callback covers the steps between.

  Args:
    probe: a `HealthProbe`.
    every_steps: measure when the step crosses a multiple of this.
    summary_writer: a `tf.summary` writer, or None.
    log: function taking one line of text.
    stage: label shown on the console.
  """

  def __init__(self, probe: HealthProbe, *, every_steps: int,
               summary_writer=None, log=print, stage="pretrain"):
    super().__init__()
    if every_steps < 1:
      raise ValueError("`every_steps` must be positive. Received: "
                       f"every_steps={every_steps}")
    self.probe = probe
    self.every_steps = every_steps
    self.summary_writer = summary_writer
    self.log = log
    self.stage = stage
    self.history = []  # (step, results) of every measurement

  def _step(self):
    return int(self.model.optimizer.iterations.numpy())

  def on_train_begin(self, logs=None):
    self._last_step = self._step()

  def on_train_batch_end(self, batch, logs=None):
    step = self._step()
    if step // self.every_steps > self._last_step // self.every_steps:
      self.history.append((step, measure_and_report(
          self.probe, step=step, summary_writer=self.summary_writer,
          log=self.log, stage=self.stage)))
    self._last_step = step
