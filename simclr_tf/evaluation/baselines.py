"""Feature functions for the probe's baselines: raw pixels, random init.

A representation means something only next to baselines read out the same
way. These give `features.FeatureExtractor` the two usual ones:

- raw pixels: the evaluation-transformed image, flattened;
- a randomly initialised encoder of the same architecture. Its BatchNorm
  layers start with moving mean 0 and variance 1, which normalises nothing
  (activations of a random network are far from those statistics), so by
  default the statistics are first estimated from training images: the
  average of the batch statistics of a few batches (`BN_FROM_TRAIN_IMAGES`).
  `BN_AS_INITIALISED` keeps the initial ones.
"""

import dataclasses

import keras
import tensorflow as tf

from simclr_tf.models import resnet_encoder as resnet_lib

RAW_PIXELS = "raw_pixels"
RANDOM_INIT = "random_init"
BASELINES = (RAW_PIXELS, RANDOM_INIT)
BN_FROM_TRAIN_IMAGES = "train_images"
BN_AS_INITIALISED = "initial"
BN_MODES = (BN_FROM_TRAIN_IMAGES, BN_AS_INITIALISED)


def raw_pixels(images):
  """(B, H, W, 3) images as (B, H * W * 3) features."""
  return tf.reshape(images, [tf.shape(images)[0], -1])


def random_init_encoder(model_config, image_size: int, seed: int = 0):
  """A freshly initialised encoder of `model_config`'s architecture.

  Args:
    model_config: a `ModelConfig`.
    image_size: the input side (decides the stem as training does).
    seed: Keras' random seed for the initialisation.

  Returns:
    A built `resnet()` Keras model.
  """
  keras.utils.set_random_seed(seed)
  model_config = dataclasses.replace(model_config, global_bn=False)
  encoder = resnet_lib.resnet(
      model_config.resnet_depth,
      width_multiplier=model_config.width_multiplier,
      cifar_stem=model_config.use_cifar_stem(image_size),
      sk_ratio=model_config.sk_ratio, se_ratio=model_config.se_ratio,
      bn_momentum=model_config.batch_norm_decay, name="random_init_encoder")
  encoder.build((None, image_size, image_size, 3))
  return encoder


def _batch_norm_layers(model):
  return [layer for layer in model._flatten_layers(include_self=False)  # pylint: disable=protected-access
          if isinstance(layer, keras.layers.BatchNormalization)]


def set_batch_norm_statistics(encoder, batches) -> int:
  """Sets every BatchNorm's moving statistics from `batches` of images.

  Each batch runs through the encoder in training mode (each layer then
  normalises with that batch's statistics, as in training) with the moving
  average momentum set to 1 - 1/t for batch t, so the moving statistics end
  as the plain average of the batches' statistics. Weights do not change.

  Args:
    encoder: a Keras model whose BatchNorm layers to set.
    batches: an iterable of float (B, H, W, 3) image batches.

  Returns:
    The number of images used.
  """
  layers = _batch_norm_layers(encoder)
  momenta = [layer.momentum for layer in layers]
  seen = 0
  try:
    for count, images in enumerate(batches, start=1):
      for layer in layers:
        layer.momentum = 1.0 - 1.0 / count
      encoder(images, training=True)
      seen += int(images.shape[0])
  finally:
    for layer, momentum in zip(layers, momenta):
      layer.momentum = momentum
  return seen


def train_image_batches(data_config, augment_config, *, split, batch_size,
                        num_examples, seed=0):
  """A seeded, class-stratified sample of `split`'s images, batched.

  The sample is `features.sample_keys`', not the head of the listing,
  which in an image folder is its first classes only.

  Args:
    data_config: a `DataConfig`.
    augment_config: an `AugmentConfig`.
    split: the split to read.
    batch_size: images per batch.
    num_examples: images in all.
    seed: the sample's seed.

  Returns:
    A `tf.data.Dataset` of float (B, H, W, 3) image batches.
  """
  from simclr_tf.evaluation import features as features_lib  # pylint: disable=g-import-not-at-top
  input_fn, _ = features_lib.split_input_fn(
      data_config, augment_config, split=split, batch_size=batch_size,
      sample_size=num_examples, seed=seed)
  return input_fn(None).map(lambda images, labels: images)


def random_init_forward(model_config, image_size, *, seed=0,
                        bn_mode=BN_FROM_TRAIN_IMAGES, bn_batches=None,
                        log=None):
  """The feature function of a random-init encoder (final average pool).

  Args:
    model_config: a `ModelConfig` (the architecture).
    image_size: input side.
    seed: initialisation seed.
    bn_mode: `BN_FROM_TRAIN_IMAGES` or `BN_AS_INITIALISED`.
    bn_batches: image batches for `BN_FROM_TRAIN_IMAGES`.
    log: function taking one line, or None.

  Returns:
    A function from images to (B, d) features (BatchNorm in inference
    mode).
  """
  if bn_mode not in BN_MODES:
    raise ValueError(f"`bn_mode` must be one of {', '.join(BN_MODES)}. "
                     f"Received: bn_mode={bn_mode!r}")
  encoder = random_init_encoder(model_config, image_size, seed)
  if bn_mode == BN_FROM_TRAIN_IMAGES:
    if bn_batches is None:
      raise ValueError("bn_mode=train_images needs `bn_batches`.")
    seen = set_batch_norm_statistics(encoder, bn_batches)
    if log:
      log(f"random_init: BatchNorm statistics set from {seen} training "
          "images.")
  return lambda images: encoder(images, training=False)
