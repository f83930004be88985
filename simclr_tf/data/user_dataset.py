"""SimCLR views from a dataset the user brings: the notebook path.

`pretraining_views` turns any `tf.data.Dataset` of images (any size, uint8
or float in [0, 1]; alone, in `(image, label)` pairs or in dicts with an
"image" key) into batches that `SimCLRModel.fit` pretrains on. It applies the
same per-example train transform as the program's host pipeline
(`augment.preprocess_for_train`), once per view.
"""

from typing import Optional

import tensorflow as tf

from simclr_tf.augment import host as augment
from simclr_tf.config import AugmentConfig

IMAGE_KEY = "image"


def _image_of(element):
  if isinstance(element, dict):
    if IMAGE_KEY not in element:
      raise ValueError("Dataset elements that are dicts need an 'image' "
                       f"key. Received keys: {sorted(element)}")
    return element[IMAGE_KEY]
  if isinstance(element, (tuple, list)):
    return element[0]
  return element


def pretraining_views(images: tf.data.Dataset, *, image_size: int,
                      batch_size: int,
                      augment_config: Optional[AugmentConfig] = None,
                      num_views: int = 2, shuffle_buffer: int = 0,
                      seed: int = 0) -> tf.data.Dataset:
  """Batches of augmented views for SimCLR pretraining with `fit`.

  Args:
    images: a dataset of (H, W, 3) images, or of tuples / dicts holding
      one first / under "image".
    image_size: side of the square views.
    batch_size: images per batch (the model sees `num_views` times as many).
    augment_config: the augmentation; None uses the paper's ImageNet
      settings (`AugmentConfig()`).
    num_views: views of each image, stacked on the channel axis.
    shuffle_buffer: shuffle images with this buffer first; 0 keeps order.
    seed: seed of the shuffle and of the augmentations, so a run repeats.

  Returns:
    A dataset of float32 (batch, image_size, image_size, 3 * num_views)
    tensors in [0, 1]; the last, smaller batch is dropped.

  Raises:
    ValueError: for a bad size, batch or view count, or
      `augment_config.branch_transforms` (made one view at a time here).
  """
  if batch_size < 1:
    raise ValueError(f"`batch_size` must be positive. Received: "
                     f"batch_size={batch_size}")
  if num_views < 1:
    raise ValueError(f"`num_views` must be positive. Received: "
                     f"num_views={num_views}")
  augment_config = augment_config or AugmentConfig()
  augment_config.validate()
  augment.check_one_view_transform(augment_config, "pretraining_views")
  dataset = images.map(_image_of)
  if shuffle_buffer:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed)

  def views(index, image):
    per_view = [
        augment.preprocess_for_train(
            image, image_size, augment_config,
            seed=tf.stack([tf.cast(seed, tf.int64), index * num_views + v]))
        for v in range(num_views)]
    return tf.concat(per_view, axis=-1)

  return (dataset.enumerate().map(views, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(batch_size, drop_remainder=True)
          .prefetch(tf.data.AUTOTUNE))
