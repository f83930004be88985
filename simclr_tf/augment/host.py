"""SimCLR image augmentations (paper appendix A) as TensorFlow ops.

Two entry points share every random-parameter sampler, so they draw from the
same distribution:

- `preprocess_for_train` / `preprocess_for_eval`: one image of any size, for
  `tf.data.Dataset.map` on the host. They use `tf.image.resize` (bicubic) on
  crops of data-dependent size, which XLA cannot compile: do not call them
  under `jit_compile=True`.
- `augment_batch`: a whole (B, H, W, 3) batch at once with vectorised ops and
  independent parameters per image, so it can run inside the train step on an
  accelerator (also under `tf.function(jit_compile=True)`).
  `distort_batch_views` is its second half, for crops made on the host; in
  the train step it is seeded by `device_seed` (run seed, replica, step).

The train transform, in the authors' order:

1. random crop of the full-resolution image, drawn by `crop_sampler`
   (below), bicubic resize to `size`;
2. horizontal flip with `flip_probability`;
3. colour jitter with `color_jitter_probability`: brightness (multiplicative,
   the authors' "simclrv2" variant), contrast and saturation with factors in
   [1 - 0.8 s, 1 + 0.8 s] and hue shift in [-0.2 s, 0.2 s], applied in a random
   order per image, clipping to [0, 1] after each;
4. grayscale with `grayscale_probability`, independent of step 3 (the paper's
   `random_apply(color_drop, p=0.2)`), so the overall grayscale rate is
   `grayscale_probability`;
5. Gaussian blur with `blur_probability` when `use_blur`.

With `branch_transforms` set, the paper's one-branch ablation (Figure 5)
replaces steps 2-5: every view is a random crop resized to `size`, and only
the first view gets the listed transformations (cutout, Sobel, noise and
rotation among them), all from `simclr_tf.augment.batched`. The batched
entry points here (`augment_batch_views`, `distort_batch_views`) follow it;
the per-image `preprocess_for_train`, which makes one view at a time,
refuses it.

Where this differs from the authors' TF code, on purpose:

- The crop sampler is plain tensor math, so the batched path shares it and
  it compiles with XLA. By default (`authors`) it vectorises what
  `tf.image.sample_distorted_bounding_box` does with the authors' arguments
  (per attempt: aspect ratio uniform, height uniform between the bounds
  that area and aspect imply, the coverage check; 100 attempts, then the
  whole image). `area_uniform` draws as the paper's text states it (area
  uniform, aspect ratio log-uniform, up to `_CROP_ATTEMPTS` tries).
- Blur pads by reflection instead of zeros, so blurred borders do not darken,
  and each image gets its own sigma (the authors' batch blur shares one sigma
  across the batch).
- Contrast and saturation factors are floored at 0 for strengths above 1.25,
  where `1 - 0.8 s` would turn negative.
"""

import contextlib
from typing import Optional, Union

import tensorflow as tf

from simclr_tf.augment import batched as device_augment

# Crop samplers (`AugmentConfig.crop_sampler`), and the constants the
# batched math shares with the keras.ops implementation it runs on.
AUTHORS_SAMPLER = device_augment.AUTHORS_SAMPLER
AREA_UNIFORM_SAMPLER = device_augment.AREA_UNIFORM_SAMPLER
CROP_SAMPLERS = device_augment.CROP_SAMPLERS
_CROP_ATTEMPTS = device_augment.AREA_UNIFORM_CROP_ATTEMPTS
# At or below this side the evaluation transform only resizes (the authors'
# `test_crop=False` for CIFAR-sized images).
EVAL_CENTER_CROP_MIN_SIZE = 33

SeedType = Optional[Union[int, tf.Tensor]]


def _check_size(size: int) -> None:
  if not isinstance(size, int) or size < 1:
    raise ValueError(f"`size` must be a positive int. Received: size={size!r}")


def to_float_image(image: tf.Tensor) -> tf.Tensor:
  """Converts uint8 images to float32 in [0, 1]; clips float images to [0, 1].

  Args:
    image: uint8 or floating image tensor, any rank, channels last.

  Returns:
    float32 tensor of the same shape with values in [0, 1].
  """
  image = tf.convert_to_tensor(image)
  if image.dtype.is_integer:
    return tf.image.convert_image_dtype(image, tf.float32)
  return tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 1.0)


def _as_seed_pair(seed) -> tf.Tensor:
  """An int or shape-[2] seed as the int64 pair stateless ops take."""
  seed = tf.convert_to_tensor(seed)
  if seed.shape.rank == 0:
    seed = tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
  return tf.cast(seed, tf.int64)


# The stateless algorithm `_Random` traces with. TensorFlow's default on CPU
# (Philox) compiles to slow code under XLA: 100k draws take ~31 ms against
# ~0.3 ms with ThreeFry (measured on this project's 2-core CPU), which made
# the seeded batched pipeline 3x slower. ThreeFry has kernels only under
# XLA, so it is used only where the caller compiles (`xla_random`).
_stateless_algorithm = ["auto_select"]


@contextlib.contextmanager
def xla_random():
  """Within this block, traced stateless draws use ThreeFry (XLA only)."""
  _stateless_algorithm.append("threefry")
  try:
    yield
  finally:
    _stateless_algorithm.pop()


class _Random:
  """Uniform draws, stateful or (with a seed) stateless and repeatable.

  Each draw folds a running counter into the seed, so one seed gives
  independent streams to each parameter in a fixed call order.
  """

  def __init__(self, seed: SeedType):
    self._seed = None if seed is None else _as_seed_pair(seed)
    self._count = 0

  def uniform(self, shape, minval=0.0, maxval=1.0) -> tf.Tensor:
    self._count += 1
    if self._seed is None:
      return tf.random.uniform(shape, minval, maxval, dtype=tf.float32)
    seed = self._seed + tf.constant([0, 1], tf.int64) * self._count
    return tf.random.stateless_uniform(shape, seed, minval, maxval,
                                       dtype=tf.float32,
                                       alg=_stateless_algorithm[-1])

  def bernoulli(self, shape, probability: float) -> tf.Tensor:
    return self.uniform(shape) < probability


def sample_crop_boxes(num: Union[int, tf.Tensor], height, width,
                      area_range=(0.08, 1.0),
                      aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
                      seed: SeedType = None, sampler: str = AUTHORS_SAMPLER):
  """Samples random-resized-crop boxes, one per image.

  Args:
    num: number of boxes (images).
    height: image height in pixels (int or scalar tensor).
    width: image width in pixels (int or scalar tensor).
    area_range: (low, high) crop area as a fraction of the image area.
    aspect_ratio_range: (low, high) crop width / height.
    seed: optional int or shape-[2] seed for stateless sampling.
    sampler: AUTHORS_SAMPLER (`tf.image.sample_distorted_bounding_box` as
      the authors call it, vectorised) or AREA_UNIFORM_SAMPLER (the paper's
      wording: area uniform, aspect ratio log-uniform).

  Returns:
    (offset_y, offset_x, crop_height, crop_width), each an int32 tensor of
    shape (num,).
  """
  return _sample_crop_boxes(num, height, width, area_range,
                            aspect_ratio_range, _Random(seed), sampler)


def _sample_crop_boxes(num, height, width, area_range, aspect_ratio_range,
                       rng: _Random, sampler=AUTHORS_SAMPLER):
  # The samplers are `device_augment`'s (one implementation in keras.ops,
  # for every backend), drawing from this module's `_Random`.
  boxes = device_augment.sample_boxes(num, height, width, area_range,
                                      aspect_ratio_range, sampler, rng)
  return tuple(tf.cast(v, tf.int32) for v in boxes)


# The crop-resize, colour jitter, grayscale and blur are `device_augment`'s
# keras.ops code, the one implementation for every backend: on TensorFlow
# it runs as tf ops and draws from this module's `_Random`.
crop_and_resize_batch = device_augment.crop_and_resize
to_grayscale = device_augment.to_grayscale
blur_kernel_radius = device_augment.blur_kernel_radius
gaussian_blur_batch = device_augment.gaussian_blur
_distort_batch = device_augment.distort


def augment_batch(images: tf.Tensor, size: int, augment_config,
                  seed: SeedType = None, view: int = 0) -> tf.Tensor:
  """The SimCLR train transform on a whole batch, per-image parameters.

  Vectorised (no per-example loop): the crop, resize and flip are two batched
  matrix products, colour ops are elementwise with per-image amounts, and the
  blur is one depthwise convolution. Works eagerly, in `tf.function`, in
  `Dataset.map` after `batch`, and under `jit_compile=True`.

  Args:
    images: uint8 or float (B, H, W, 3) batch (float in [0, 1]).
    size: output side in pixels.
    augment_config: a `simclr_tf.config.AugmentConfig`.
    seed: optional int or shape-[2] int tensor: stateless, repeatable draws.
      None uses TensorFlow's stateful random ops.
    view: the view's index; with `branch_transforms`, view 0 is the crop
      with the listed transformations and the others the plain crop.

  Returns:
    float32 (B, size, size, 3) in [0, 1].
  """
  _check_size(size)
  cfg = augment_config
  rng = _Random(seed)
  images = to_float_image(images)
  shape = tf.shape(images)
  num = shape[0]
  boxes = _sample_crop_boxes(num, shape[1], shape[2], cfg.crop_area_range,
                             cfg.crop_aspect_ratio_range, rng,
                             cfg.crop_sampler)
  if cfg.branch_transform_names:
    crops = tf.clip_by_value(crop_and_resize_batch(images, boxes, size), 0.0,
                             1.0)
    crops = tf.ensure_shape(crops, [None, size, size, 3])
    images = device_augment.one_branch_view(crops, size, cfg, rng, view)
    return tf.ensure_shape(images, [None, size, size, 3])
  flip = rng.bernoulli([num], cfg.flip_probability)
  images = crop_and_resize_batch(images, boxes, size, flip=flip)
  images = tf.clip_by_value(images, 0.0, 1.0)
  images = _distort_batch(images, size, cfg, rng)
  return tf.ensure_shape(images, [None, size, size, 3])


def augment_batch_views(images: tf.Tensor, size: int, augment_config,
                        num_views: int = 2, seed: SeedType = None) -> tf.Tensor:
  """Independent `augment_batch` views concatenated on the channel axis.

  This is the on-device counterpart of the tf.data pretraining element:
  view 1 is channels 0:3, view 2 channels 3:6, as in the authors' code.

  Args:
    images: uint8 or float (B, H, W, 3).
    size: output side.
    augment_config: a `simclr_tf.config.AugmentConfig`.
    num_views: views per image.
    seed: optional seed; view k uses the seed folded with k.

  Returns:
    float32 (B, size, size, 3 * num_views).
  """
  if num_views < 1:
    raise ValueError(f"`num_views` must be >= 1. Received: num_views="
                     f"{num_views}")
  views = []
  for k in range(num_views):
    views.append(augment_batch(images, size, augment_config,
                               seed=_view_seed(seed, 1000 + k), view=k))
  return tf.concat(views, axis=-1)


def crop_views_batch(images: tf.Tensor, size: int, augment_config,
                     num_views: int = 2, seed: SeedType = None) -> tf.Tensor:
  """Random crops of same-size full-resolution images, resized, per view.

  The host half of the on-device augmentation: the crops come from the
  full-resolution batch; flip and colour are left to `distort_batch_views`.

  Args:
    images: uint8 or float (B, H, W, 3).
    size: output side.
    augment_config: a `simclr_tf.config.AugmentConfig`.
    num_views: crops per image.
    seed: optional seed; view k uses the seed folded with k.

  Returns:
    uint8 (B, size, size, 3 * num_views).
  """
  _check_size(size)
  cfg = augment_config
  images = to_float_image(images)
  shape = tf.shape(images)
  views = []
  for k in range(num_views):
    rng = _Random(_view_seed(seed, k))
    boxes = _sample_crop_boxes(shape[0], shape[1], shape[2],
                               cfg.crop_area_range,
                               cfg.crop_aspect_ratio_range, rng,
                               cfg.crop_sampler)
    views.append(crop_and_resize_batch(images, boxes, size))
  return to_uint8(tf.concat(views, axis=-1))


def crop_views(image: tf.Tensor, size: int, augment_config,
               num_views: int = 1, seed: SeedType = None) -> tf.Tensor:
  """Random crops of one decoded image of any size, resized, per view.

  Args:
    image: uint8 or float (H, W, 3), at full resolution.
    size: output side.
    augment_config: a `simclr_tf.config.AugmentConfig`.
    num_views: crops.
    seed: optional seed; view k uses the seed folded with k.

  Returns:
    float32 (size, size, 3 * num_views) in [0, 1].
  """
  _check_size(size)
  cfg = augment_config
  image = to_float_image(image)
  return tf.concat(
      [_random_crop(image, size, cfg.crop_area_range,
                    cfg.crop_aspect_ratio_range,
                    _Random(_view_seed(seed, k)), cfg.crop_sampler)
       for k in range(num_views)], axis=-1)


def crop_box(height, width, augment_config, view: int = 0,
             seed: SeedType = None):
  """The box `crop_views` takes for `view` of an image of this size.

  Lets a decoder read only that window (`tf.image.decode_and_crop_jpeg`).

  Args:
    height: image height (int or scalar tensor).
    width: image width.
    augment_config: a `simclr_tf.config.AugmentConfig`.
    view: view index.
    seed: the seed given to `crop_views`.

  Returns:
    (offset_y, offset_x, crop_height, crop_width) int32 scalars.
  """
  cfg = augment_config
  box = _sample_crop_boxes(1, height, width, cfg.crop_area_range,
                           cfg.crop_aspect_ratio_range,
                           _Random(_view_seed(seed, view)), cfg.crop_sampler)
  return tuple(v[0] for v in box)


def distort_batch_views(views: tf.Tensor, size: int, augment_config,
                        num_views: int, seed: SeedType = None) -> tf.Tensor:
  """Flip, colour jitter, grayscale and blur of already-cropped views.

  The second half of the train transform, for crops made elsewhere (by the
  host, from the full-resolution image): vectorised like `augment_batch`,
  so it runs on an accelerator or under XLA. With `branch_transforms`,
  view 0 gets the listed transformations instead and the others stay the
  crops.

  Args:
    views: uint8 or float (B, size, size, 3 * num_views) crops.
    size: their side.
    augment_config: a `simclr_tf.config.AugmentConfig`.
    num_views: views on the channel axis.
    seed: optional seed; view k uses the seed folded with k.

  Returns:
    float32 (B, size, size, 3 * num_views) in [0, 1].
  """
  cfg = augment_config
  views = to_float_image(views)
  out = []
  for k in range(num_views):
    rng = _Random(_view_seed(seed, 2000 + k))
    images = tf.ensure_shape(views[..., 3 * k:3 * k + 3],
                             [None, size, size, 3])
    if cfg.branch_transform_names:
      out.append(device_augment.one_branch_view(images, size, cfg, rng, k))
      continue
    flip = rng.bernoulli(tf.shape(images)[:1], cfg.flip_probability)
    images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]),
                      images)
    out.append(_distort_batch(images, size, cfg, rng))
  return tf.ensure_shape(tf.concat(out, axis=-1),
                         [None, size, size, 3 * num_views])


def to_uint8(images: tf.Tensor) -> tf.Tensor:
  """Float images in [0, 1] (clipped) rounded to uint8."""
  return tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0),
                 tf.uint8)


# Folded into the run's seed first on the device path, so its draws are a
# stream of their own, apart from the host pipelines'.
_DEVICE_STREAM = 0x5EED


def device_seed(seed, replica_id, step) -> tf.Tensor:
  """The seed of one replica's on-device draws at one training step.

  Stateless: the same run seed, replica and step give the same draws on any
  run with that cluster shape (and after resuming); two replicas, or two
  workers of a cluster, never share their draws.

  Args:
    seed: the run's int seed (or a shape-[2] seed).
    replica_id: the replica's id in the sync group, over all workers.
    step: the optimizer step the batch is for.

  Returns:
    A shape-[2] int64 seed for `distort_batch_views` and the like.
  """
  pair = tf.random.experimental.stateless_fold_in(_as_seed_pair(seed),
                                                   _DEVICE_STREAM)
  pair = tf.random.experimental.stateless_fold_in(
      pair, tf.cast(replica_id, tf.int64))
  return tf.random.experimental.stateless_fold_in(pair,
                                                  tf.cast(step, tf.int64))


def _view_seed(seed: SeedType, view: int):
  if seed is None:
    return None
  return tf.random.experimental.stateless_fold_in(_as_seed_pair(seed), view)


def random_crop_with_resize(image: tf.Tensor, size: int,
                            area_range=(0.08, 1.0),
                            aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
                            seed: SeedType = None,
                            sampler: str = AUTHORS_SAMPLER) -> tf.Tensor:
  """Random-resized crop of one image (any size) to (size, size).

  Args:
    image: uint8 or float (H, W, 3).
    size: output side.
    area_range: crop area as a fraction of the image area.
    aspect_ratio_range: crop width / height.
    seed: optional stateless seed.
    sampler: one of CROP_SAMPLERS.

  Returns:
    float32 (size, size, 3) in [0, 1].
  """
  _check_size(size)
  return _random_crop(to_float_image(image), size, area_range,
                      aspect_ratio_range, _Random(seed), sampler)


def _random_crop(image, size, area_range, aspect_ratio_range, rng,
                 sampler=AUTHORS_SAMPLER):
  shape = tf.shape(image)
  oy, ox, h, w = _sample_crop_boxes(1, shape[0], shape[1], area_range,
                                    aspect_ratio_range, rng, sampler)
  crop = tf.image.crop_to_bounding_box(image, oy[0], ox[0], h[0], w[0])
  return resize_crop(crop, size)


def resize_crop(crop: tf.Tensor, size: int) -> tf.Tensor:
  """A crop's bicubic resize to (size, size), as the authors, clipped.

  Args:
    crop: uint8 or float (h, w, 3).
    size: output side.

  Returns:
    float32 (size, size, 3) in [0, 1].
  """
  crop = tf.image.resize(to_float_image(crop), [size, size], method="bicubic")
  return tf.clip_by_value(crop, 0.0, 1.0)


def preprocess_for_train(image: tf.Tensor, size: int, augment_config,
                         seed: SeedType = None) -> tf.Tensor:
  """The SimCLR train transform on one image of any size.

  Crops with `tf.image` ops on the image itself (cheap for large decoded
  images) and shares the colour and blur code with `augment_batch`.

  Args:
    image: uint8 or float (H, W, 3) image (float in [0, 1]).
    size: output side in pixels.
    augment_config: a `simclr_tf.config.AugmentConfig`.
    seed: optional int or shape-[2] seed for stateless, repeatable draws.

  Returns:
    float32 (size, size, 3) in [0, 1].

  Raises:
    ValueError: `branch_transforms` is set: that protocol treats the two
      views differently, which a one-view function cannot.
  """
  _check_size(size)
  cfg = augment_config
  check_one_view_transform(cfg, "preprocess_for_train")
  rng = _Random(seed)
  image = _random_crop(to_float_image(image), size, cfg.crop_area_range,
                       cfg.crop_aspect_ratio_range, rng, cfg.crop_sampler)
  flip = rng.bernoulli([], cfg.flip_probability)
  image = tf.where(flip, tf.reverse(image, axis=[1]), image)
  image = _distort_batch(image[None], size, cfg, rng)[0]
  return tf.ensure_shape(image, [size, size, 3])


def check_one_view_transform(augment_config, where: str) -> None:
  """Refuses `branch_transforms` where views are made one at a time.

  Args:
    augment_config: a `simclr_tf.config.AugmentConfig`.
    where: the function or tool that would make the views, for the message.

  Raises:
    ValueError: `branch_transforms` is set.
  """
  if augment_config.branch_transform_names:
    raise ValueError(
        f"`branch_transforms` (the one-branch ablation) needs both views of "
        f"an image at once, which {where} does not make; train through the "
        f"program (both of its input paths support it) or leave "
        f"branch_transforms empty. Received: branch_transforms="
        f"{augment_config.branch_transforms!r}")


def center_crop(image: tf.Tensor, size: int,
                crop_fraction: float = 0.875) -> tf.Tensor:
  """Central square crop of `crop_fraction` of the short side, resized.

  As the authors' `center_crop` for a square target: the crop keeps the
  target's aspect ratio and `crop_fraction` of the image along its limiting
  side, then a bicubic resize to (size, size).

  Args:
    image: float (H, W, 3).
    size: output side.
    crop_fraction: fraction of the short side kept.

  Returns:
    float32 (size, size, 3), not clipped.
  """
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  side = tf.cast(tf.round(crop_fraction * tf.cast(tf.minimum(height, width),
                                                  tf.float32)), tf.int32)
  side = tf.maximum(side, 1)
  offset_y = (height - side + 1) // 2
  offset_x = (width - side + 1) // 2
  crop = tf.image.crop_to_bounding_box(image, offset_y, offset_x, side, side)
  return tf.image.resize(crop, [size, size], method="bicubic")


def preprocess_for_eval(image: tf.Tensor, size: int,
                        augment_config) -> tf.Tensor:
  """The deterministic evaluation transform on one image.

  For `size` > 32 a central crop of `eval_crop_fraction` (0.875) then a
  bicubic resize; at 32 px and below a plain bicubic resize, as the authors
  (who decide on the target size, not the source size).

  Args:
    image: uint8 or float (H, W, 3).
    size: output side.
    augment_config: a `simclr_tf.config.AugmentConfig`.

  Returns:
    float32 (size, size, 3) in [0, 1].
  """
  _check_size(size)
  image = to_float_image(image)
  if size >= EVAL_CENTER_CROP_MIN_SIZE:
    image = center_crop(image, size, augment_config.eval_crop_fraction)
  else:
    image = tf.image.resize(image, [size, size], method="bicubic")
  image = tf.clip_by_value(image, 0.0, 1.0)
  return tf.ensure_shape(image, [size, size, 3])
