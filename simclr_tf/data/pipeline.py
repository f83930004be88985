"""The `tf.data` input pipeline: one dataset per input pipeline (replica).

    source shard (encoded) -> label-subset filter
      -> decode [-> resize to a fixed side] -> cache      (when cached)
      -> shuffle -> repeat                                 (training)
      -> augment views | evaluation transform -> batch -> prefetch

Elements are `(images, labels)`:

- images: float32 (per_replica_batch, size, size, 3 * num_views) in [0, 1],
  views on the channel axis as in the authors' code (view 1 is channels 0:3,
  view 2 channels 3:6). Evaluation views are the same deterministic transform
  repeated. With `augment_config.on_device` and `training`, images are instead
  uint8 (per_replica_batch, size, size, 3), resized to `size` but not
  augmented: the model runs `simclr_tf.augment.augment_batch_views` in its
  train step, and `num_views` does not shape the data.
- labels: float32 one-hot (per_replica_batch, num_classes); an example
  without a label has an all-zero row.

Caching happens after decoding and any resize, before random augmentation, so
nothing that could be kept is decoded or resized twice.
"""

import functools
import math
from typing import Callable, Optional

import tensorflow as tf

from simclr_tf import augment
from simclr_tf.data import registry
from simclr_tf.data import source as source_lib
from simclr_tf.data.errors import DataError
from simclr_tf.data.source import DatasetInfo

# `cache_dataset=None` caches a pipeline's shard when it needs at most this
# much memory.
AUTO_CACHE_MAX_BYTES = 2 * 1024 ** 3
_AUTOTUNE = tf.data.AUTOTUNE


def _validate(data_config, augment_config=None) -> None:
  try:
    data_config.validate()
    if augment_config is not None:
      augment_config.validate()
  except ValueError as e:
    raise DataError(str(e)) from e


def get_dataset_info(data_config) -> DatasetInfo:
  """Prepares and checks the source, and describes it.

  Generates `synthetic_shapes` on first use, scans image folders (skipping
  unreadable files), and checks tfds datasets are prepared in `data_dir`.

  Args:
    data_config: a `simclr_tf.config.DataConfig`.

  Returns:
    A `DatasetInfo`. `num_train_examples` counts the label subset when
    `label_fraction` or `labels_per_class` is set.

  Raises:
    DataError: with a one-line message for the user.
  """
  _validate(data_config)
  cfg = data_config
  source = registry.get_source(cfg)
  num_train = source.num_examples(cfg.train_split)
  num_eval = source.num_examples(cfg.eval_split)
  keep = registry.get_label_subset_keys(cfg)
  if keep is not None:
    num_train = len(keep)
  return DatasetInfo(
      num_classes=source.num_classes, num_train_examples=num_train,
      num_eval_examples=num_eval, image_shape=source.image_shape,
      train_has_labels=source.has_labels(cfg.train_split))


def _cache_side(image_size: int, eval_crop_fraction: float) -> int:
  """Side that variable-size images are squashed to before caching.

  Large enough that the evaluation centre crop needs no upsampling (the
  classic "resize 256, crop 224").
  """
  if image_size < augment.EVAL_CENTER_CROP_MIN_SIZE:
    return image_size
  return int(math.ceil(image_size / eval_crop_fraction))


def _resize_uint8(image: tf.Tensor, side: int) -> tf.Tensor:
  image = tf.image.resize(image, [side, side], method="bicubic",
                          antialias=True)
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def batch_augmenter(size: int, augment_config, num_views: int):
  """The host pipeline's batched SimCLR transform, compiled with XLA.

  The colour jitter applies its four ops in a per-image order as four dense
  passes over the batch; XLA fuses their many small elementwise ops, which
  makes the whole transform about 3x faster on CPU (measured at 32 px,
  batch 256, in `Dataset.map`). Random draws stay independent per call.

  Args:
    size: output side.
    augment_config: a `simclr_tf.config.AugmentConfig`.
    num_views: views per image.

  Returns:
    A function from uint8 (B, H, W, 3) images to float32
    (B, size, size, 3 * num_views) views.
  """
  return tf.function(
      functools.partial(augment.augment_batch_views, size=size,
                        augment_config=augment_config, num_views=num_views),
      jit_compile=True)


def build_input_fn(data_config, augment_config, *, training: bool,
                   num_views: int, global_batch_size: int,
                   seed: Optional[int] = None
                   ) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
  """Builds the `input_fn` for `strategy.distribute_datasets_from_function`.

  The source is opened (and synthetic data generated) here, so bad settings
  fail before training starts.

  Args:
    data_config: a `simclr_tf.config.DataConfig`.
    augment_config: a `simclr_tf.config.AugmentConfig`.
    training: True: the train split, label-subset filtered, shuffled,
      repeated forever, augmented, `drop_remainder=True`, non-deterministic
      order. False: the eval split, one pass in order, evaluation transform,
      last partial batch kept, so every example counts once.
    num_views: augmented views per image on the channel axis (2 to pretrain,
      1 to fine-tune or evaluate).
    global_batch_size: images per step over all replicas.
    seed: seed of the file and example shuffles (None: random).

  Returns:
    `input_fn(input_context)` returning this pipeline's dataset of
    `(images, labels)`; see the module docstring for the element format.
    Passing `None` reads everything as one replica.

  Raises:
    DataError: bad settings or data. `input_fn` raises it when the global
      batch does not divide over the replicas.
  """
  _validate(data_config, augment_config)
  if num_views < 1:
    raise DataError(f"`num_views` must be at least 1. Received: "
                    f"num_views={num_views}")
  if global_batch_size < 1:
    raise DataError(f"The global batch size must be positive. Received: "
                    f"global_batch_size={global_batch_size}")
  cfg, aug = data_config, augment_config
  source = registry.get_source(cfg)
  split = cfg.train_split if training else cfg.eval_split
  num_examples = source.num_examples(split)
  keep = registry.get_label_subset_keys(cfg) if training else None
  if keep is not None:
    num_examples = len(keep)
  num_classes = source.num_classes
  size = cfg.image_size
  on_device = training and aug.on_device

  # Decide the fixed image shape after decoding, if any.
  fixed = source.image_shape
  resize_side = None
  if on_device and fixed != (size, size, 3):
    resize_side = size
  elif fixed is None:
    resize_side = _cache_side(size, aug.eval_crop_fraction)
  if resize_side is not None:
    cached_shape = (resize_side, resize_side, 3)
  else:
    cached_shape = fixed

  def input_fn(input_context: Optional[tf.distribute.InputContext] = None):
    context = input_context or tf.distribute.InputContext()
    replicas = context.num_replicas_in_sync
    if global_batch_size % replicas:
      raise DataError(
          f"The global batch size {global_batch_size} does not divide over "
          f"{replicas} replicas; use a multiple of {replicas}.")
    batch = context.get_per_replica_batch_size(global_batch_size)
    pipelines = max(context.num_input_pipelines, 1)
    per_pipeline = num_examples / pipelines
    cache = cfg.cache_dataset
    if cache is None:
      cache = (per_pipeline * math.prod(cached_shape) <= AUTO_CACHE_MAX_BYTES)
    # Without a cache, variable-size images go to the per-example transforms
    # at full resolution (as the authors crop ImageNet); a cache or the
    # on-device path needs one fixed size.
    side = resize_side if (cache or on_device) else None
    image_shape = cached_shape if (side or fixed) else None

    def decode(example):
      example = source.decode(example)
      image = example[source_lib.IMAGE_KEY]
      if side is not None:
        image = _resize_uint8(image, side)
      return image, example[source_lib.LABEL_KEY]

    ds = source.read(split, input_context=context,
                     shuffle_files=training and cfg.shuffle_files, seed=seed,
                     keep_keys=keep)
    if cache:
      ds = ds.map(decode, num_parallel_calls=_AUTOTUNE).cache()
    if training:
      ds = ds.shuffle(cfg.shuffle_buffer, seed=seed,
                      reshuffle_each_iteration=True).repeat()
    if not cache:
      ds = ds.map(decode, num_parallel_calls=_AUTOTUNE)

    one_hot = lambda label: tf.one_hot(label, num_classes)  # noqa: E731
    if not training:
      def eval_map(image, label):
        view = augment.preprocess_for_eval(image, size, aug)
        return tf.concat([view] * num_views, axis=-1), one_hot(label)
      ds = ds.map(eval_map, num_parallel_calls=_AUTOTUNE)
      ds = ds.batch(batch, drop_remainder=False)
    elif on_device:
      ds = ds.batch(batch, drop_remainder=True).map(
          lambda images, labels: (tf.ensure_shape(images, [batch, size, size,
                                                           3]),
                                  one_hot(labels)),
          num_parallel_calls=_AUTOTUNE)
    elif image_shape is not None:
      # Same-size images: augment whole batches with vectorised ops (1.6x
      # the per-example rate at 32 px on CPU, no slower at 96 or 224 px).
      augment_views = batch_augmenter(size, aug, num_views)
      ds = ds.batch(batch, drop_remainder=True).map(
          lambda images, labels: (augment_views(images), one_hot(labels)),
          num_parallel_calls=_AUTOTUNE)
    else:
      def train_map(image, label):
        views = [augment.preprocess_for_train(image, size, aug)
                 for _ in range(num_views)]
        return tf.concat(views, axis=-1), one_hot(label)
      ds = ds.map(train_map, num_parallel_calls=_AUTOTUNE)
      ds = ds.batch(batch, drop_remainder=True)
    ds = ds.prefetch(_AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = not training
    return ds.with_options(options)

  return input_fn
