"""The features the health signals are computed from, on any Keras backend.

One pass over eval-split images (the evaluation transform) gives, per
image, side by side:

- h, the encoder's features of the image itself (effective rank);
- z1, z2, the projection head's outputs of two views of it made by the
  training augmentation (alignment; uniformity of z1).

The views are drawn from the evaluation-transformed image (for images of
32 px and below, the whole image, as training crops it) with a fixed seed,
so every measurement of a run sees the same views and a change between two
measurements is the model's. Every network call is in inference mode: each
row depends on its own image alone.

`measure_host` is the JAX trainer's measurement (host batches, the batched
`keras.ops` augmentation); the TensorFlow trainer makes the views eagerly and
runs `forward` under its strategy (`health_monitor`).
"""

from typing import Dict, Tuple

import numpy as np
from keras import ops

from simclr_tf.augment import batched as device_augment
from simclr_tf.data import host_batches as host_data
from simclr_tf.evaluation import health
from simclr_tf.evaluation import sampling

# Folded into the run's seed for the views' draws.
VIEWS_SEED_STREAM = 7_777


def forward(model, images, views):
  """(B, D + 2 d) rows [h | z1 | z2] of a batch.

  Args:
    model: a `SimCLRModel` (its encoder and projection head).
    images: float (B, H, W, 3) evaluation images in [0, 1].
    views: float (B, H, W, 6) two augmented views of them.

  Returns:
    float32 rows: encoder features, then both views' projections.
  """
  count = ops.shape(images)[0]
  # One encoder call for all three: in inference mode rows are independent.
  features = model.encoder(ops.concatenate(
      [images] + ops.split(views, 2, axis=-1), axis=0), training=False)
  projections = model.projection_head(features[count:], training=False)[0]
  return ops.concatenate(
      [ops.cast(features[:count], "float32"),
       ops.cast(projections[:count], "float32"),
       ops.cast(projections[count:], "float32")], axis=-1)


def split_outputs(rows: np.ndarray, feature_dim: int
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(h, z1, z2) of `forward`'s rows, given the encoder's width."""
  projections = rows[:, feature_dim:]
  half = projections.shape[1] // 2
  return rows[:, :feature_dim], projections[:, :half], projections[:, half:]


def feature_dim(model) -> int:
  """The encoder's output width."""
  return int(model.encoder.output_shape[-1])


def measure_host(model, config, split, *, num_examples: int
                 ) -> Dict[str, float]:
  """The health signals of `model` on a host-loaded eval split (JAX path).

  Args:
    model: a `SimCLRModel`.
    config: the stage's `ExperimentConfig`.
    split: the eval split, a `host_batches.Split`.
    num_examples: images to measure on (capped by the split), a seeded
      class-stratified sample of it.

  Returns:
    {health.ALIGNMENT, health.UNIFORMITY, health.EFFECTIVE_RANK}.
  """
  run, data = config.run, config.data
  batch_size = run.eval_batch_size
  # A seeded, class-stratified sample, as on TensorFlow (health_monitor);
  # unreadable files in it are left out, not replaced.
  split = split.take(sampling.capped_indices(split.labels, num_examples,
                                             seed=run.seed))
  batches = host_data.Batches(
      split, batch_size, data.image_size, config.augment, training=False,
      # The labels are not used; their width must only hold them.
      num_classes=max(split.num_classes, 1),
      max_pixels=data.max_image_pixels)
  train_augment = config.train_augment()
  seed = device_augment.step_seed(run.seed, 0, VIEWS_SEED_STREAM)

  def augmentation(images):
    return device_augment.augment_views(images, data.image_size,
                                        train_augment, 2, seed)

  rows, kept = [], 0
  for index in range(len(batches)):
    if kept >= num_examples:
      break
    images, _, weights = batches[index]
    count = len(images)
    if count < batch_size:
      # Whole batches only: the distribution splits each batch evenly over
      # the devices. The padding's rows are dropped.
      images = np.concatenate([images, np.zeros(
          (batch_size - count,) + images.shape[1:], images.dtype)])
    batch_rows = np.asarray(ops.convert_to_numpy(
        forward(model, images, augmentation(images))))[:count]
    # Stand-ins for unreadable files carry weight 0: left out.
    batch_rows = batch_rows[np.asarray(weights) > 0]
    rows.append(batch_rows)
    kept += len(batch_rows)
  if not kept:
    raise ValueError(f"No readable image in the {data.eval_split} split to "
                     "measure the health signals on; set health_examples=0 "
                     "to turn them off.")
  rows = np.concatenate(rows)[:num_examples]
  return health.signals(*split_outputs(rows, feature_dim(model)))
