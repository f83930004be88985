"""The batched SimCLR train transform in `keras.ops`, for any Keras backend.

A whole (B, H, W, 3) batch of same-size images in, per-image random
parameters, vectorised so it compiles into the train step. The crop
samplers, the crop-resize, colour jitter, grayscale and blur here are the
only implementation: `simclr_tf.augment.host` (the TensorFlow path) calls them
with its own draws (stateful or seeded, ThreeFry under XLA), and on the
TensorFlow backend they run as the same tf ops. The JAX path uses the
whole transform below, seeded per step.

1. random crop, sampled as the authors' `sample_distorted_bounding_box`
   (or area-uniform), then bicubic resize to `size` (two batched matrix
   products, matching `tf.image.resize(method="bicubic")`);
2. horizontal flip;
3. colour jitter in a random order per image, then grayscale;
4. Gaussian blur, one sigma per image, reflect padding.

The paper's other studied transformations (Figure 4: cutout, Sobel
filtering, Gaussian noise, rotation) are here too, for its one-branch
protocol of Figure 5 (`AugmentConfig.branch_transforms`): every view is a
random crop resized to `size`, and only the first view then gets the listed
transformations, in the listed order (`apply_branch_transforms`).

Randomness is stateless: every draw derives from a seed pair, which the
train step builds from the run's seed, the input pipeline and the optimizer
step (`step_seed`), so a run resumed at step k draws what it would have.
"""

import math

import keras
import numpy as np
from keras import ops

AUTHORS_SAMPLER = "authors"
AREA_UNIFORM_SAMPLER = "area_uniform"
CROP_SAMPLERS = (AUTHORS_SAMPLER, AREA_UNIFORM_SAMPLER)
# `sample_distorted_bounding_box` as the authors call it: 100 attempts, and
# each crop must cover 10% of the image (their only bounding box).
AUTHORS_CROP_ATTEMPTS = 100
MIN_OBJECT_COVERED = 0.1
# Tries of the area-uniform sampler before it takes the whole image.
AREA_UNIFORM_CROP_ATTEMPTS = 10
# Keys' cubic convolution parameter, as TensorFlow's bicubic resize.
CUBIC_A = -0.5
# ITU-R 601 luma weights, as `tf.image.rgb_to_grayscale`.
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
_NUM_JITTER_OPS = 4
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(_NUM_JITTER_OPS)
# The one-branch protocol's transformations (`AugmentConfig.branch_transforms`;
# `simclr_tf.config.BRANCH_TRANSFORMS` lists the same names).
CROP, FLIP, COLOR, BLUR = "crop", "flip", "color", "blur"
CUTOUT, SOBEL, NOISE, ROTATE = "cutout", "sobel", "noise", "rotate"
BRANCH_TRANSFORMS = (CROP, FLIP, COLOR, BLUR, CUTOUT, SOBEL, NOISE, ROTATE)
# Cutout paints its square black (0 on [0, 1] images).
CUTOUT_FILL = 0.0
# Quarter turns `rotate` draws from, uniformly: the paper's Figure 4(f),
# "Rotate {90, 180, 270}" (the identity is not among them).
ROTATION_TURNS = (1, 2, 3)
# Sobel magnitudes scaled into [0, 1]: on [0, 1] images each 3x3 Sobel
# derivative lies in [-4, 4], so |gradient| <= 4 * sqrt(2).
SOBEL_SCALE = 1.0 / (4.0 * math.sqrt(2.0))
# Seed streams of `step_seed`, so crops and colour never share draws.
CROP_STREAM = 1
DISTORT_STREAM = 2


def _backend():
  return keras.backend.backend()


def step_seed(seed: int, step, stream: int, pipeline: int = 0):
  """The seed pair of one train step's draws.

  Args:
    seed: the run's integer seed.
    step: the optimizer step (a scalar integer tensor or int).
    stream: which augmentation stage draws (`CROP_STREAM`, ...).
    pipeline: the input pipeline's (worker's) index, so each pipeline of a
      cluster draws its own parameters.

  Returns:
    A uint32 (2,) tensor: (seed mixed with stream and pipeline, step).
  """
  high = (int(seed) * 1_000_003 + stream * 7919 + pipeline * 104_729)
  high %= 2**32
  return ops.stack([ops.convert_to_tensor(high, "uint32"),
                    ops.cast(step, "uint32")])


class _Random:
  """Uniform draws from a seed pair; each draw gets its own sub-seed."""

  def __init__(self, seed):
    self._seed = ops.cast(ops.convert_to_tensor(seed), "uint32")
    self._count = 0

  def _next_seed(self):
    self._count += 1
    if _backend() == "jax":
      import jax  # Only on the JAX backend.
      return jax.random.fold_in(self._seed, self._count)
    return ops.cast(self._seed, "int32") + ops.convert_to_tensor(
        [0, 7919 * self._count], "int32")

  def uniform(self, shape, minval=0.0, maxval=1.0):
    seed = self._next_seed()
    if _backend() == "jax":
      return keras.random.uniform(shape, minval, maxval, dtype="float32",
                                  seed=seed)
    import tensorflow as tf  # Only on the TensorFlow backend.
    return tf.random.stateless_uniform(shape, seed, minval, maxval,
                                       dtype=tf.float32)

  def bernoulli(self, shape, probability):
    return self.uniform(shape) < probability


def to_float_image(images):
  """uint8 images to float32 in [0, 1]; float images clipped to [0, 1]."""
  if "int" in keras.backend.standardize_dtype(images.dtype):
    return ops.cast(images, "float32") / 255.0
  return ops.clip(ops.cast(images, "float32"), 0.0, 1.0)


def sample_crop_boxes(num: int, height: int, width: int, augment_config,
                      rng: _Random):
  """Random-resized-crop boxes for `num` images of one static size.

  Args:
    num: images.
    height: image height in pixels: an int, or (num,) heights of images of
      mixed sizes (the host's crop windows).
    width: image width in pixels, likewise.
    augment_config: a `simclr_tf.config.AugmentConfig` (crop ranges and
      `crop_sampler`).
    rng: the draws.

  Returns:
    (offset_y, offset_x, crop_height, crop_width), float32 (num,) each,
    whole pixels.
  """
  cfg = augment_config
  return sample_boxes(num, height, width, cfg.crop_area_range,
                      cfg.crop_aspect_ratio_range, cfg.crop_sampler, rng)


def sample_boxes(num, height, width, area_range, aspect_ratio_range,
                 sampler, rng):
  """`sample_crop_boxes` with the ranges given one by one.

  The one implementation of both samplers: `simclr_tf.augment.host` (the
  TensorFlow path, with its own draws) calls it too. `num`, `height` and
  `width` may be tensors of a traced TensorFlow function.

  Args:
    num: images.
    height: an int or (num,) heights.
    width: an int or (num,) widths.
    area_range: (low, high) crop area as a fraction of the image area.
    aspect_ratio_range: (low, high) crop width / height.
    sampler: AUTHORS_SAMPLER or AREA_UNIFORM_SAMPLER.
    rng: an object with `uniform(shape, minval, maxval)`.

  Returns:
    (offset_y, offset_x, crop_height, crop_width), float32 (num,) each.
  """
  height = _per_image(height, num)
  width = _per_image(width, num)
  if sampler == AUTHORS_SAMPLER:
    return _authors_boxes(num, height, width, area_range, aspect_ratio_range,
                          rng)
  if sampler != AREA_UNIFORM_SAMPLER:
    raise ValueError(f"`crop_sampler` must be one of {CROP_SAMPLERS}. "
                     f"Received: crop_sampler={sampler!r}")
  return _area_uniform_boxes(num, height, width, area_range,
                             aspect_ratio_range, rng)


def _per_image(side, num):
  """A side as a float32 (num, 1) column, one row per image."""
  side = ops.cast(ops.convert_to_tensor(side), "float32")
  return ops.broadcast_to(ops.reshape(side, (-1, 1)), (num, 1))


def _authors_boxes(num, height, width, area_range, ratio_range, rng):
  # TensorFlow's kernel, every attempt at once: ratio ~ U(range); height a
  # uniform integer between those the area bounds give at that ratio
  # (capped so the box fits); width round(h * ratio), nudged up at most
  # twice if rounding left the area too small; kept if the area is in
  # range and covers MIN_OBJECT_COVERED of the image.
  height_f, width_f = height, width
  image_area = height_f * width_f
  min_area = area_range[0] * image_area
  max_area = area_range[1] * image_area
  shape = (num, AUTHORS_CROP_ATTEMPTS)
  ratio = rng.uniform(shape, ratio_range[0], ratio_range[1])
  low_h = ops.round(ops.sqrt(min_area / ratio))
  high_h = ops.round(ops.sqrt(max_area / ratio))
  fit_h = ops.floor((width_f + 0.5 - 1e-7) / ratio)
  fit_h = ops.where(ops.round(fit_h * ratio) > width_f, fit_h - 1.0, fit_h)
  high_h = ops.where(ops.round(high_h * ratio) > width_f, fit_h, high_h)
  high_h = ops.minimum(high_h, height_f)
  low_h = ops.minimum(low_h, high_h)
  crop_h = low_h + ops.floor(rng.uniform(shape) * (high_h - low_h + 1.0))
  crop_h = ops.minimum(crop_h, high_h)
  crop_w = ops.round(crop_h * ratio)
  for _ in range(2):
    small = crop_w * crop_h < min_area
    crop_h = ops.where(small, crop_h + 1.0, crop_h)
    crop_w = ops.where(small, ops.round(crop_h * ratio), crop_w)
  area = crop_w * crop_h
  fits = ((area >= min_area) & (area <= max_area) & (crop_w <= width_f) &
          (crop_h <= height_f) & (crop_w > 0) & (crop_h > 0) &
          (area >= MIN_OBJECT_COVERED * image_area))
  return _first_fitting(fits, crop_h, crop_w, height_f, width_f, num, rng,
                        AUTHORS_CROP_ATTEMPTS, offsets_reach_edge=False)


def _area_uniform_boxes(num, height, width, area_range, ratio_range, rng):
  height_f, width_f = height, width
  shape = (num, AREA_UNIFORM_CROP_ATTEMPTS)
  area = rng.uniform(shape, area_range[0], area_range[1]) * height_f * width_f
  ratio = ops.exp(rng.uniform(shape, math.log(ratio_range[0]),
                              math.log(ratio_range[1])))
  crop_w = ops.round(ops.sqrt(area * ratio))
  crop_h = ops.round(ops.sqrt(area / ratio))
  fits = ((crop_w >= 1) & (crop_w <= width_f) &
          (crop_h >= 1) & (crop_h <= height_f))
  return _first_fitting(fits, crop_h, crop_w, height_f, width_f, num, rng,
                        AREA_UNIFORM_CROP_ATTEMPTS, offsets_reach_edge=True)


def _first_fitting(fits, crop_h, crop_w, height_f, width_f, num, rng,
                   attempts, offsets_reach_edge):
  height_f, width_f = height_f[:, 0], width_f[:, 0]
  attempt = ops.arange(attempts, dtype="int32")[None, :]
  first = ops.argmin(ops.where(fits, attempt, attempts), axis=1)
  found = ops.any(fits, axis=1)
  first = ops.expand_dims(ops.cast(first, "int32"), 1)
  crop_w = ops.where(found, ops.take_along_axis(crop_w, first, 1)[:, 0],
                     width_f)
  crop_h = ops.where(found, ops.take_along_axis(crop_h, first, 1)[:, 0],
                     height_f)
  # TensorFlow's kernel draws offsets in [0, H - h): a box shorter than the
  # image never touches its bottom edge. The area-uniform sampler reaches
  # every position.
  extra = 1.0 if offsets_reach_edge else 0.0
  span_y = ops.maximum(height_f - crop_h + extra, 1.0)
  span_x = ops.maximum(width_f - crop_w + extra, 1.0)
  offset_y = ops.clip(ops.floor(rng.uniform((num,)) * span_y), 0.0,
                      height_f - crop_h)
  offset_x = ops.clip(ops.floor(rng.uniform((num,)) * span_x), 0.0,
                      width_f - crop_w)
  return offset_y, offset_x, crop_h, crop_w


def _cubic_weights(distance):
  d = ops.abs(distance)
  a = CUBIC_A
  near = ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
  far = ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
  return ops.where(d <= 1.0, near, ops.where(d < 2.0, far, 0.0))


def resize_matrix(offset, length, in_size, out_size: int):
  """(B, out_size, in_size) rows resampling [offset, offset + length).

  Args:
    offset: float32 (B,) window starts, whole pixels.
    length: float32 (B,) window lengths.
    in_size: the input side (an int, or a scalar tensor in TensorFlow).
    out_size: the output side.


  Bicubic with half-pixel centres and no antialiasing; taps outside the
  window get weight 0 and the rest renormalise, as `tf.image.resize` does
  on the cropped window.
  """
  length = length[:, None]
  scale = length / float(out_size)
  centre = (ops.arange(out_size, dtype="float32")[None, :] + 0.5) * scale
  centre = centre - 0.5
  base = ops.floor(centre)
  taps, weights = [], []
  for k in range(-1, 3):
    tap = base + k
    weight = _cubic_weights(centre - tap)
    taps.append(tap)
    weights.append(ops.where((tap >= 0) & (tap < length), weight, 0.0))
  total = weights[0] + weights[1] + weights[2] + weights[3]
  matrix = 0.0
  for tap, weight in zip(taps, weights):
    index = ops.clip(tap, 0.0, length - 1.0) + offset[:, None]
    matrix = matrix + ops.one_hot(ops.cast(index, "int32"), in_size) * (
        weight / total)[..., None]
  return matrix


def crop_and_resize(images, boxes, size: int, flip=None):
  """Crops a box per image and resizes it bicubically to (size, size).

  Args:
    images: float32 (B, H, W, C).
    boxes: (offset_y, offset_x, crop_height, crop_width), (B,) each, whole
      pixels (integer or float).
    size: output side.
    flip: optional bool (B,): mirror these outputs left-right.

  Returns:
    float32 (B, size, size, C), not clipped (bicubic overshoots).
  """
  offset_y, offset_x, crop_h, crop_w = (ops.cast(v, "float32") for v in boxes)
  shape = ops.shape(images)
  rows = resize_matrix(offset_y, crop_h, shape[1], size)
  cols = resize_matrix(offset_x, crop_w, shape[2], size)
  if flip is not None:
    cols = ops.where(flip[:, None, None], ops.flip(cols, axis=1), cols)
  out = ops.einsum("bhwc,bjw->bhjc", images, cols)
  return ops.einsum("bih,bhjc->bijc", rows, out)


def _adjust_contrast(images, factor):
  mean = ops.mean(images, axis=(1, 2), keepdims=True)
  return (images - mean) * factor[:, None, None, None] + mean


def _adjust_saturation_and_hue(images, saturation, hue):
  """As `tf.image.adjust_saturation` then `adjust_hue`, per-image amounts."""
  hsv = ops.image.rgb_to_hsv(images, data_format="channels_last")
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  h = ops.mod(h + hue[:, None, None], 1.0)
  s = ops.clip(s * saturation[:, None, None], 0.0, 1.0)
  return ops.image.hsv_to_rgb(ops.stack([h, s, v], axis=-1),
                              data_format="channels_last")


def color_jitter(images, strength: float, rng):
  """Brightness, contrast, saturation and hue, in a random order per image.

  Args:
    images: float32 (B, H, W, 3) in [0, 1].
    strength: the colour jitter strength s.
    rng: the draws: an object with `uniform(shape, minval, maxval)`, as
      `_Random` here or `simclr_tf.augment.host`'s.

  Returns:
    float32 (B, H, W, 3) in [0, 1].
  """
  num = ops.shape(images)[0]
  amount = 0.8 * strength
  low = max(0.0, 1.0 - amount)
  brightness = rng.uniform((num,), low, 1.0 + amount)
  contrast = rng.uniform((num,), low, 1.0 + amount)
  saturation = rng.uniform((num,), low, 1.0 + amount)
  hue = rng.uniform((num,), -0.2 * strength, 0.2 * strength)
  order = ops.argsort(rng.uniform((num, _NUM_JITTER_OPS)), axis=1)
  # Each slot applies one op per image, identity amounts for the others, so
  # every image follows its own order without per-image control flow.
  for slot in range(_NUM_JITTER_OPS):
    op = order[:, slot]
    images = images * ops.where(op == _BRIGHTNESS, brightness, 1.0)[
        :, None, None, None]
    images = ops.clip(images, 0.0, 1.0)
    images = _adjust_contrast(images,
                              ops.where(op == _CONTRAST, contrast, 1.0))
    images = ops.clip(images, 0.0, 1.0)
    images = _adjust_saturation_and_hue(
        images, ops.where(op == _SATURATION, saturation, 1.0),
        ops.where(op == _HUE, hue, 0.0))
    images = ops.clip(images, 0.0, 1.0)
  return images


def to_grayscale(images):
  """Luma replicated to 3 channels."""
  gray = ops.sum(images * ops.convert_to_tensor(GRAY_WEIGHTS, images.dtype),
                 axis=-1, keepdims=True)
  return ops.concatenate([gray] * 3, axis=-1)


def blur_kernel_radius(size: int, kernel_fraction: float) -> int:
  """The authors' `(size * fraction) // 2`; 0 means no blur."""
  return int(size * kernel_fraction) // 2


def gaussian_blur(images, sigma, radius: int):
  """Separable Gaussian blur, one sigma per image, reflect padding.

  Each 1-D pass is a matrix product with a banded (L, L) matrix per image
  whose rows hold the kernel, with the reflect padding folded in. It equals
  padding and convolving (the authors' `depthwise_conv2d`), up to the order
  of the sums, and it runs fast under XLA on CPU, whose depthwise
  convolutions are many times slower than TensorFlow's own: at 224 px the
  convolution made the XLA-compiled host augmentation ten times slower.

  Args:
    images: float32 (B, H, W, C) with static H and W > radius.
    sigma: float32 (B,) standard deviations in pixels.
    radius: kernel radius r (2r + 1 taps); 0 returns the images.

  Returns:
    float32 (B, H, W, C).
  """
  if radius <= 0:
    return images
  height, width = int(images.shape[1]), int(images.shape[2])
  if radius >= min(height, width):
    raise ValueError(f"The blur radius must be below the image side. "
                     f"Received: radius={radius} for {height}x{width}")
  taps = ops.arange(-radius, radius + 1, dtype="float32")
  kernel = ops.exp(-ops.square(taps)[None, :] /
                   (2.0 * ops.square(sigma)[:, None]))
  kernel = kernel / ops.sum(kernel, axis=1, keepdims=True)        # (B, K)
  rows = ops.einsum("bk,ikj->bij", kernel, _reflect_taps(height, radius))
  out = ops.einsum("bij,bjwc->biwc", rows, images)
  columns = rows if width == height else ops.einsum(
      "bk,ikj->bij", kernel, _reflect_taps(width, radius))
  return ops.einsum("bij,bhjc->bhic", columns, out)


def _reflect_taps(length: int, radius: int) -> np.ndarray:
  """(L, K, L) one-hots: tap k of output i reads input j.

  Reflect padding as numpy's and TensorFlow's "reflect" mode: the edge is
  not repeated (index -1 reads 1, index L reads L - 2).
  """
  positions = (np.arange(length)[:, None] +
               np.arange(-radius, radius + 1)[None, :])
  positions = np.abs(positions)
  positions = np.where(positions > length - 1, 2 * (length - 1) - positions,
                       positions)
  return np.eye(length, dtype=np.float32)[positions]


def _mask(rng, num, probability):
  """Per-image coin flips, shaped to select whole (B, H, W, C) images."""
  return rng.bernoulli((num,), probability)[:, None, None, None]


def _color_distortion(images, augment_config, rng):
  # The paper's colour distortion: jitter with its probability, then an
  # independent colour drop (grayscale).
  cfg = augment_config
  num = ops.shape(images)[0]
  jitter = _mask(rng, num, cfg.color_jitter_probability)
  images = ops.where(
      jitter, color_jitter(images, cfg.color_jitter_strength, rng), images)
  return ops.where(_mask(rng, num, cfg.grayscale_probability),
                   to_grayscale(images), images)


def _random_blur(images, radius, augment_config, rng):
  cfg = augment_config
  num = ops.shape(images)[0]
  blur = _mask(rng, num, cfg.blur_probability)
  sigma = rng.uniform((num,), cfg.blur_sigma_range[0],
                      cfg.blur_sigma_range[1])
  return ops.where(blur, gaussian_blur(images, sigma, radius), images)


def distort(images, size: int, augment_config, rng):
  """Colour jitter, grayscale and blur of float (B, size, size, 3) images.

  Args:
    images: float32 (B, size, size, 3) in [0, 1].
    size: their side (sets the blur kernel).
    augment_config: a `simclr_tf.config.AugmentConfig`.
    rng: the draws, as for `color_jitter`.

  Returns:
    float32 (B, size, size, 3) in [0, 1].
  """
  cfg = augment_config
  # Strength 0 means no colour distortion, grayscale included, as the
  # authors' `if color_jitter_strength > 0`.
  if cfg.color_jitter_strength > 0:
    images = _color_distortion(images, cfg, rng)
  radius = blur_kernel_radius(size, cfg.blur_kernel_fraction)
  if cfg.use_blur and radius > 0:
    images = _random_blur(images, radius, cfg, rng)
  return ops.clip(images, 0.0, 1.0)


def cutout(images, fraction: float, rng):
  """Paints one square per image with `CUTOUT_FILL` (DeVries & Taylor 2017).

  The square's side is `round(fraction * side)` pixels (at least 1) and it
  lies wholly inside the image, at a uniform position, so every image loses
  exactly side**2 pixels.

  Args:
    images: float32 (B, H, W, C) with static H and W.
    fraction: the square's side as a fraction of the image's shorter side.
    rng: the draws.

  Returns:
    float32 (B, H, W, C).
  """
  height, width = images.shape[1], images.shape[2]
  side = max(1, int(round(fraction * min(height, width))))
  num = ops.shape(images)[0]
  top = ops.floor(rng.uniform((num,)) * float(height - side + 1))
  left = ops.floor(rng.uniform((num,)) * float(width - side + 1))
  top = ops.clip(top, 0.0, float(height - side))[:, None]
  left = ops.clip(left, 0.0, float(width - side))[:, None]
  rows = ops.arange(height, dtype="float32")[None, :]
  cols = ops.arange(width, dtype="float32")[None, :]
  in_rows = (rows >= top) & (rows < top + side)                   # (B, H)
  in_cols = (cols >= left) & (cols < left + side)                 # (B, W)
  square = in_rows[:, :, None, None] & in_cols[:, None, :, None]
  return ops.where(square, CUTOUT_FILL, images)


def sobel(images):
  """Sobel edge magnitude of the luma, as a gray image in [0, 1].

  The luma (`GRAY_WEIGHTS`) is padded by reflection (no edge at the
  border), differentiated with the 3x3 Sobel kernels along each axis, and
  the gradient's length times `SOBEL_SCALE` is replicated to 3 channels.

  Args:
    images: float32 (B, H, W, 3) in [0, 1], static H and W.

  Returns:
    float32 (B, H, W, 3) in [0, 1].
  """
  height, width = images.shape[1], images.shape[2]
  gray = to_grayscale(images)[..., :1]
  padded = ops.pad(gray, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect")

  def at(dy, dx):  # The neighbour (dy, dx) of every pixel.
    return padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width, :]

  d_x = (at(-1, 1) + 2.0 * at(0, 1) + at(1, 1)) - (
      at(-1, -1) + 2.0 * at(0, -1) + at(1, -1))
  d_y = (at(1, -1) + 2.0 * at(1, 0) + at(1, 1)) - (
      at(-1, -1) + 2.0 * at(-1, 0) + at(-1, 1))
  magnitude = ops.sqrt(ops.square(d_x) + ops.square(d_y)) * SOBEL_SCALE
  return ops.concatenate([ops.clip(magnitude, 0.0, 1.0)] * 3, axis=-1)


def standard_normal(shape, rng):
  """N(0, 1) draws from uniform ones (Box-Muller), so any `rng` serves."""
  radius = ops.sqrt(-2.0 * ops.log(1.0 - rng.uniform(shape)))  # 1 - u > 0.
  return radius * ops.cos(2.0 * math.pi * rng.uniform(shape))


def gaussian_noise(images, std: float, rng):
  """Adds N(0, std^2) to every pixel and channel, then clips to [0, 1].

  Args:
    images: float32 (B, H, W, C) in [0, 1].
    std: the noise's standard deviation, on the [0, 1] scale.
    rng: the draws.

  Returns:
    float32 (B, H, W, C) in [0, 1]. The clip shrinks the spread near 0 and
    1; at mid-gray it is std.
  """
  noise = standard_normal(ops.shape(images), rng) * std
  return ops.clip(images + noise, 0.0, 1.0)


def rot90(images, turns: int):
  """Every image turned `turns` quarter turns anticlockwise (`np.rot90`).

  Args:
    images: (B, S, S, C) square images.
    turns: 0 to 3.

  Returns:
    (B, S, S, C).
  """
  for _ in range(turns % 4):
    images = ops.flip(ops.transpose(images, (0, 2, 1, 3)), axis=1)
  return images


def random_rotation(images, rng):
  """Each square image turned by an angle drawn from `ROTATION_TURNS`.

  Args:
    images: float32 (B, S, S, C).
    rng: the draws.

  Returns:
    float32 (B, S, S, C).
  """
  num = ops.shape(images)[0]
  pick = ops.floor(rng.uniform((num,)) * len(ROTATION_TURNS))
  pick = ops.clip(pick, 0.0, len(ROTATION_TURNS) - 1.0)[:, None, None, None]
  out = images
  for index, turns in enumerate(ROTATION_TURNS):
    out = ops.where(pick == float(index), rot90(images, turns), out)
  return out


def apply_branch_transforms(images, size: int, augment_config, rng):
  """`augment_config.branch_transform_names`, in order, on one branch.

  Each op draws its own parameters per image; cutout, Sobel, noise and
  rotation always apply, flip, colour and blur with their settings'
  probabilities (blur whatever `use_blur`, since it was asked for here).

  Args:
    images: float32 (B, size, size, 3) crops in [0, 1].
    size: their side.
    augment_config: a `simclr_tf.config.AugmentConfig`.
    rng: the draws.

  Returns:
    float32 (B, size, size, 3) in [0, 1].
  """
  cfg = augment_config
  num = ops.shape(images)[0]
  for name in cfg.branch_transform_names:
    if name == CROP:
      # A second random crop of the resized crop, resized back.
      boxes = sample_crop_boxes(num, size, size, cfg, rng)
      images = ops.clip(crop_and_resize(images, boxes, size), 0.0, 1.0)
    elif name == FLIP:
      images = ops.where(_mask(rng, num, cfg.flip_probability),
                         ops.flip(images, axis=2), images)
    elif name == COLOR:
      images = _color_distortion(images, cfg, rng)
    elif name == BLUR:
      radius = blur_kernel_radius(size, cfg.blur_kernel_fraction)
      if radius > 0:
        images = _random_blur(images, radius, cfg, rng)
    elif name == CUTOUT:
      images = cutout(images, cfg.cutout_fraction, rng)
    elif name == SOBEL:
      images = sobel(images)
    elif name == NOISE:
      images = gaussian_noise(images, cfg.noise_std, rng)
    elif name == ROTATE:
      images = random_rotation(images, rng)
    else:
      raise ValueError(f"`branch_transforms` must list names among "
                       f"{', '.join(BRANCH_TRANSFORMS)}. Received: "
                       f"branch_transforms={cfg.branch_transforms!r}")
    images = ops.clip(images, 0.0, 1.0)
  return images


def one_branch_view(crops, size: int, augment_config, rng, view: int):
  """A view of Figure 5's protocol: view 0 transformed, the others not.

  Args:
    crops: float32 (B, size, size, 3) random crops, resized, in [0, 1].
    size: their side.
    augment_config: a `simclr_tf.config.AugmentConfig` with
      `branch_transforms`.
    rng: the draws.
    view: the view's index.

  Returns:
    float32 (B, size, size, 3) in [0, 1].
  """
  if view == 0:
    return apply_branch_transforms(crops, size, augment_config, rng)
  return crops


def augment_batch(images, size: int, augment_config, seed, view: int = 0):
  """The whole train transform on a batch of same-size images.

  Args:
    images: uint8 or float (B, H, W, 3) with static shape.
    size: output side.
    augment_config: a `simclr_tf.config.AugmentConfig`.
    seed: a (2,) seed pair (`step_seed`).
    view: which view this is; matters only with `branch_transforms`, where
      view 0 is the crop with the listed transformations and the others
      the plain crop (`one_branch_view`).

  Returns:
    float32 (B, size, size, 3) in [0, 1].
  """
  if not isinstance(size, int) or size < 1:
    raise ValueError(f"`size` must be a positive int. Received: size={size!r}")
  cfg = augment_config
  rng = _Random(seed)
  images = to_float_image(images)
  num, height, width = images.shape[0], images.shape[1], images.shape[2]
  boxes = sample_crop_boxes(num, height, width, cfg, rng)
  if cfg.branch_transform_names:
    crops = ops.clip(crop_and_resize(images, boxes, size), 0.0, 1.0)
    return one_branch_view(crops, size, cfg, rng, view)
  flip = rng.bernoulli((num,), cfg.flip_probability)
  images = ops.clip(crop_and_resize(images, boxes, size, flip=flip), 0.0, 1.0)
  return distort(images, size, cfg, rng)


def augment_views(images, size: int, augment_config, num_views: int, seed):
  """`num_views` independent views, stacked on the channel axis.

  With `branch_transforms` set, Figure 5's protocol: each view is its own
  random crop, and only view 0 gets the listed transformations.

  Args:
    images: uint8 or float (B, H, W, 3).
    size: output side.
    augment_config: a `simclr_tf.config.AugmentConfig`.
    num_views: views per image (2 for pretraining).
    seed: a (2,) seed pair; each view folds in its index.

  Returns:
    float32 (B, size, size, 3 * num_views): view k is channels 3k:3k+3.
  """
  if num_views < 1:
    raise ValueError(f"`num_views` must be >= 1. Received: num_views="
                     f"{num_views}")
  seed = ops.cast(ops.convert_to_tensor(seed), "uint32")
  views = [augment_batch(images, size, augment_config,
                         seed + ops.convert_to_tensor([1000 * (k + 1), 0],
                                                      "uint32"), view=k)
           for k in range(num_views)]
  return ops.concatenate(views, axis=-1)


def distort_views(views, size: int, augment_config, num_views: int, seed):
  """Flip, colour jitter, grayscale and blur of crops made on the host.

  With `branch_transforms` set, view 0 gets the listed transformations
  instead and the other views stay the host's crops (`one_branch_view`).

  Args:
    views: uint8 or float (B, size, size, 3 * num_views) crops.
    size: their side.
    augment_config: a `simclr_tf.config.AugmentConfig`.
    num_views: views on the channel axis.
    seed: a (2,) seed pair; each view folds in its index.

  Returns:
    float32 (B, size, size, 3 * num_views) in [0, 1].
  """
  views = to_float_image(views)
  seed = ops.cast(ops.convert_to_tensor(seed), "uint32")
  out = []
  for k in range(num_views):
    rng = _Random(seed + ops.convert_to_tensor([2000 * (k + 1), 0], "uint32"))
    images = views[..., 3 * k:3 * k + 3]
    if augment_config.branch_transform_names:
      out.append(one_branch_view(images, size, augment_config, rng, k))
      continue
    flip = rng.bernoulli((images.shape[0],), augment_config.flip_probability)
    images = ops.where(flip[:, None, None, None], ops.flip(images, axis=2),
                       images)
    out.append(distort(images, size, augment_config, rng))
  return ops.concatenate(out, axis=-1)


def train_augmentation(size: int, augment_config, num_views: int, seed: int,
                       *, crop: bool, pipeline: int = 0):
  """The `SimCLRModel.compile(train_augmentation=...)` function on JAX.

  Args:
    size: output side.
    augment_config: a `simclr_tf.config.AugmentConfig`.
    num_views: views per image.
    seed: the run's integer seed.
    crop: the batches hold whole same-size images, to crop here
      (`augment_views`); False: the host already cropped each view from
      the full-resolution image (`distort_views`).
    pipeline: this input pipeline's index.

  Returns:
    A function `(uint8 images, replica_id, step) -> float32 views`; on JAX
    the replica is 0 (one program holds the global batch).
  """

  def augmentation(images, replica_id=0, step=0):
    del replica_id  # The batch axis already spans every device.
    if crop:
      return augment_views(images, size, augment_config, num_views,
                           step_seed(seed, step, CROP_STREAM, pipeline))
    return distort_views(images, size, augment_config, num_views,
                         step_seed(seed, step, DISTORT_STREAM, pipeline))

  return augmentation
