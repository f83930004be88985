"""Frozen features of a dataset split, under any tf.distribute strategy.

One place computes "run a network over a split in order and collect one
output with the labels": the kNN monitor (under the training strategy), the
linear probe and `tools/embed.py` (one device). Each replica runs its own
batches; the results are gathered from every replica and worker with
`Strategy.gather`, so every process ends with the same arrays.
"""

import dataclasses
import math
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from simclr_tf import data as data_lib
from simclr_tf.data import registry
from simclr_tf.evaluation import sampling


def split_input_fn(data_config, augment_config, *, split: str,
                   batch_size: int, sample_size: Optional[int] = None,
                   seed: int = 0):
  """The evaluation pipeline of `split`: one pass, in order, eval transform.

  Args:
    data_config: a `DataConfig`.
    augment_config: an `AugmentConfig` (its evaluation transform is used).
    split: the split to read (train or eval split alike).
    batch_size: global images per batch.
    sample_size: read only a seeded sample of this many examples, class-
      stratified where the split has labels (`sampling.capped_indices`),
      instead of the whole split; None (or a size at least the split's)
      reads everything. Image folders list their files sorted by class, so
      the first N of a split would cover its first few classes only.
    seed: the sample's seed.

  Returns:
    (`input_fn(input_context)`, number of examples it reads).
  """
  config = dataclasses.replace(data_config, eval_split=split)
  info = data_lib.get_dataset_info(
      dataclasses.replace(config, train_split=split))
  keys = None
  count = info.num_eval_examples
  if sample_size is not None and sample_size < count:
    keys = sample_keys(config, split, sample_size, seed=seed)
    count = len(keys)
  input_fn = data_lib.build_input_fn(
      config, augment_config, training=False, num_views=1,
      global_batch_size=batch_size, eval_keys=keys)
  return input_fn, count


def sample_keys(data_config, split: str, size: int, *,
                seed: int) -> np.ndarray:
  """The keys of a seeded, class-stratified sample of `size` examples.

  The listing is sorted by key first, so the sample does not depend on the
  order a source lists its examples in. Reading the labels of a tfds split
  reads its records once (without decoding the images).

  Args:
    data_config: a `DataConfig`.
    split: the split to sample.
    size: examples in the sample.
    seed: the sample's seed.

  Returns:
    The sampled examples' keys.
  """
  keys, labels = registry.get_source(data_config).keys_and_labels(split)
  order = np.argsort(keys, kind="stable")
  keys, labels = keys[order], labels[order]
  return keys[sampling.capped_indices(labels, size, seed=seed)]


def labels_from_one_hot(one_hot):
  """Class ids from one-hot rows; `data.NO_LABEL` for all-zero rows."""
  return tf.where(tf.reduce_sum(one_hot, axis=-1) > 0,
                  tf.argmax(one_hot, axis=-1, output_type=tf.int64),
                  tf.constant(data_lib.NO_LABEL, tf.int64))


class FeatureExtractor:
  """Runs `forward` over a split under `strategy` and gathers the outputs.

  The traced step is kept, so calling the extractor again (the kNN monitor
  does, every few epochs) costs no new tracing.

  Args:
    forward: function from float images (B, H, W, 3) in [0, 1] to a
      (B, ...) tensor whose rows depend on their own image only (a network
      in inference mode); runs in each replica.
    strategy: a `tf.distribute.Strategy`; None is the default strategy
      (one device).
  """

  def __init__(self, forward: Callable, strategy=None):
    self.forward = forward
    self.strategy = strategy or tf.distribute.get_strategy()

    def replica_step(images, one_hot):
      # A replica's last batch may be empty, and the network fails on an
      # empty batch (oneDNN: "Incompatible shapes: [8] vs. [0,16,16,3]").
      # One blank image is appended and its output dropped: in inference
      # mode each example's output depends on that example alone.
      count = tf.shape(images)[0]
      blank = tf.zeros(tf.concat([[1], tf.shape(images)[1:]], axis=0),
                       images.dtype)
      padded = tf.concat([images, blank], axis=0)
      outputs = tf.cast(self.forward(padded), tf.float32)[:count]
      return outputs, labels_from_one_hot(one_hot)

    # Last batches are smaller (and empty on some replicas): one trace for
    # any batch size.
    @tf.function(reduce_retracing=True)
    def step(images, one_hot):
      per_replica = self.strategy.run(replica_step, args=(images, one_hot))
      # One gather per tensor: inside a tf.function, MirroredStrategy's
      # gather of a tuple returned only the first replica's values
      # (TF 2.21; measured, see tests/test_knn.py).
      return tuple(self.strategy.gather(value, axis=0)
                   for value in per_replica)

    self._step = step

  def __call__(self, input_fn, *, num_examples: Optional[int] = None,
               max_examples: Optional[int] = None, batch_size: int = 0,
               log: Optional[Callable[[str], None]] = None,
               log_every: int = 0, name: str = "features"):
    """Extracts the outputs of one pass over `input_fn`'s dataset.

    Args:
      input_fn: an eval `input_fn(input_context)` (see `split_input_fn`).
      num_examples: examples in the split, for progress lines.
      max_examples: keep only the first this many examples (whole batches
        are read, then cut); None keeps all.
      batch_size: the global batch, to stop early for `max_examples`.
      log: where progress lines go, or None.
      log_every: report every this many batches; 0 never.
      name: the prefix of progress lines.

    Returns:
      (outputs float32 (N, ...), labels int64 (N,), NO_LABEL where
      unlabeled), in the split's order for a single input pipeline.
    """
    dataset = self.strategy.distribute_datasets_from_function(input_fn)
    limit = None
    if max_examples is not None and batch_size:
      limit = math.ceil(max_examples / batch_size)
    total = num_examples if max_examples is None else (
        min(num_examples or max_examples, max_examples))
    num_batches = math.ceil(total / batch_size) if (total and batch_size) \
        else None
    outputs, labels = [], []
    done, start = 0, time.time()
    for index, (images, one_hot) in enumerate(dataset, start=1):
      batch_outputs, batch_labels = self._step(images, one_hot)
      outputs.append(batch_outputs.numpy())
      labels.append(batch_labels.numpy())
      done += len(labels[-1])
      if log and log_every and (index % log_every == 0 or
                                index == num_batches):
        elapsed = max(time.time() - start, 1e-9)
        log(f"{name}: batch {index}/{num_batches or '?'}, "
            f"{min(done, total or done)}/{total or '?'} images, "
            f"{done / elapsed:.0f} img/s")
      if limit is not None and index >= limit:
        break
    if not outputs:
      raise data_lib.DataError("The split to extract features from is "
                               "empty.")
    outputs = np.concatenate(outputs).astype(np.float32)
    labels = np.concatenate(labels).astype(np.int64)
    if max_examples is not None:
      outputs, labels = outputs[:max_examples], labels[:max_examples]
    return outputs, labels


def split_features(forward, data_config, augment_config, *, splits,
                   batch_size, max_examples=None, seed=0, strategy=None,
                   log=None, log_every=0):
  """`forward`'s outputs and the labels of each split in `splits`.

  Args:
    forward: see `FeatureExtractor`.
    data_config: a `DataConfig`.
    augment_config: an `AugmentConfig` (its evaluation transform).
    splits: split names.
    batch_size: global images per batch.
    max_examples: cap on the examples of each split, a seeded class-
      stratified sample of it (`split_input_fn`); None for all.
    seed: the sample's seed.
    strategy: a `tf.distribute.Strategy`, or None for one device.
    log: where progress lines go, or None.
    log_every: progress every this many batches; 0 never.

  Returns:
    {split: (outputs, labels)}.
  """
  extractor = FeatureExtractor(forward, strategy)
  results = {}
  for split in splits:
    input_fn, num_examples = split_input_fn(
        data_config, augment_config, split=split, batch_size=batch_size,
        sample_size=max_examples, seed=seed)
    results[split] = extractor(
        input_fn, num_examples=num_examples, batch_size=batch_size, log=log,
        log_every=log_every, name=split)
  return results
