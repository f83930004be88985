"""The health signals of a pretraining run on TensorFlow: features under the
training strategy, the `health/` scalars, and a callback beside the kNN
monitor.

The features are `health_features.forward`'s, of a seeded, class-stratified
sample of `run.health_examples` eval-split images, with the TensorFlow path's
training augmentation (`augment.host.augment_batch_views`, run eagerly)
making the two views; `evaluation.health` computes the signals from them.
"""

import time
from typing import Callable, Dict, Optional

import keras
import numpy as np
import tensorflow as tf

from simclr_tf import data as data_lib
from simclr_tf.augment import host as augment
from simclr_tf.evaluation import features as features_lib
from simclr_tf.evaluation import health
from simclr_tf.evaluation import health_features


class HealthProbe:
  """Measures the health signals of a model, reusing its traced step.

  Args:
    model: a `SimCLRModel`.
    config: the stage's `ExperimentConfig`.
    strategy: the training `tf.distribute.Strategy`.
    num_examples: images to measure on (a seeded, class-stratified sample
      of the eval split), capped by the split and, when at least one eval
      batch, rounded down to whole batches.
  """

  def __init__(self, model, config, strategy, *, num_examples: int):
    if num_examples < 1:
      raise ValueError("`num_examples` must be positive. Received: "
                       f"num_examples={num_examples}")
    run, data = config.run, config.data
    self.batch_size = run.eval_batch_size
    split_size = data_lib.get_dataset_info(data).num_eval_examples
    num_examples = min(num_examples, split_size)
    # Whole batches when there are enough: a smaller last batch would trace
    # the step a second time, which costs more than the measurement.
    if num_examples >= self.batch_size:
      num_examples -= num_examples % self.batch_size
    self.num_examples = num_examples
    # A seeded, class-stratified sample, not the head of a class-sorted
    # listing: the effective rank of one class's images is not the model's.
    self._input_fn, _ = features_lib.split_input_fn(
        data, config.augment, split=data.eval_split,
        batch_size=self.batch_size, sample_size=num_examples, seed=run.seed)
    self.feature_dim = health_features.feature_dim(model)
    self._image_size = data.image_size
    self._train_augment = config.train_augment()
    self._seed = run.seed

    def forward(images):
      # Channels 0:3 the image, 3:9 its two views.
      return health_features.forward(model, images[..., :3], images[..., 3:])

    self._extractor = features_lib.FeatureExtractor(forward, strategy)

  def _images(self):
    """The sampled eval images, read whole by this process."""
    batches, count = [], 0
    for images, _ in self._input_fn(tf.distribute.InputContext()):
      batches.append(images[..., :3])
      count += int(images.shape[0])
      if count >= self.num_examples:
        break
    return tf.concat(batches, axis=0)[:self.num_examples]

  def measure(self) -> Dict[str, float]:
    """The three signals of the model as it is now.

    The views are made eagerly, one eval batch at a time: traced, the
    augmentation's graph costs many times the measurement on a CPU. Every
    process makes the same views (same images, same seed); the network runs
    under the strategy.

    Returns:
      {health.ALIGNMENT, health.UNIFORMITY, health.EFFECTIVE_RANK}.
    """
    images = self._images()
    rows = []
    for index, start in enumerate(range(0, len(images), self.batch_size)):
      chunk = images[start:start + self.batch_size]
      views = augment.augment_batch_views(
          chunk, self._image_size, self._train_augment, num_views=2,
          seed=[self._seed, health_features.VIEWS_SEED_STREAM + index])
      rows.append(self._extractor(_batch_input_fn(
          tf.concat([chunk, views], axis=-1), self.batch_size))[0])
    return health.signals(*health_features.split_outputs(
        np.concatenate(rows), self.feature_dim))


def _batch_input_fn(batch, global_batch_size):
  """An `input_fn` of one global batch, sharded over input pipelines.

  The rows' order across replicas does not matter: each row holds one
  image's three outputs.
  """
  def input_fn(context):
    dataset = tf.data.Dataset.from_tensor_slices(
        (batch, tf.zeros([len(batch), 1])))
    dataset = dataset.shard(context.num_input_pipelines,
                            context.input_pipeline_id)
    return dataset.batch(context.get_per_replica_batch_size(
        global_batch_size))
  return input_fn


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
