"""Tests of simclr_tf.augment.host against numpy and the paper's definitions."""

import math

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.augment import host as augment
from simclr_tf.augment import batched as device_augment
from simclr_tf.config import AugmentConfig

SAMPLES = 2000
SIGMAS = 5.0
# Only the op under test is on; the crop keeps the whole image, which a
# same-size bicubic resize returns unchanged.
_IDENTITY = dict(crop_area_range=(1.0, 1.0), crop_aspect_ratio_range=(1.0, 1.0),
                 flip_probability=0.0, color_jitter_probability=0.0,
                 grayscale_probability=0.0, use_blur=False)


def _config(**overrides) -> AugmentConfig:
  return AugmentConfig(**{**_IDENTITY, **overrides})


def _binomial_tolerance(p: float, n: int = SAMPLES) -> float:
  return SIGMAS * math.sqrt(p * (1 - p) / n)


def _colorful_image(height=16, width=16, seed=0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (height, width, 3)).astype(np.uint8)


def _per_example(image, size, config, n=SAMPLES) -> np.ndarray:
  """n independent per-example train views, made inside Dataset.map."""
  ds = tf.data.Dataset.from_tensors(tf.constant(image)).repeat(n)
  ds = ds.map(lambda x: augment.preprocess_for_train(x, size, config))
  return next(iter(ds.batch(n))).numpy()


def _batched(image, size, config, n=SAMPLES) -> np.ndarray:
  images = tf.repeat(tf.constant(image)[None], n, axis=0)
  return augment.augment_batch(images, size, config).numpy()


def _both(image, size, config):
  return {"per_example": _per_example(image, size, config),
          "batched": _batched(image, size, config)}


# name -> fn(image, seed); the eval transforms draw nothing.
_TRANSFORMS = {
    "train": lambda x, seed: augment.preprocess_for_train(
        x, 24, AugmentConfig(), seed=seed),
    "eval_small": lambda x, seed: augment.preprocess_for_eval(
        x, 24, AugmentConfig()),
    "eval_crop": lambda x, seed: augment.preprocess_for_eval(
        x, 48, AugmentConfig()),
    "crop": lambda x, seed: augment.random_crop_with_resize(x, 24, seed=seed),
    "batch": lambda x, seed: augment.augment_batch(
        x[None], 24, AugmentConfig(), seed=seed)[0],
    "views": lambda x, seed: augment.augment_batch_views(
        x[None], 24, AugmentConfig(), num_views=1, seed=seed)[0],
}


@pytest.mark.parametrize("name", sorted(_TRANSFORMS))
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_transform_eager_and_in_dataset_map(name, dtype):
  """Each transform gives the same image eagerly and inside Dataset.map.

  Seeded, every draw is stateless, so the two must agree; unseeded, the
  draws differ, so only the output's kind is checked.
  """
  size = 48 if name == "eval_crop" else 24
  image = _colorful_image(40, 50)
  if dtype == "float32":
    image = image.astype(np.float32) / 255.0
  for seed in (None, 7):
    fn = lambda x, seed=seed: _TRANSFORMS[name](x, seed)  # noqa: E731
    eager = fn(tf.constant(image))
    mapped = next(iter(tf.data.Dataset.from_tensors(image).map(fn)))
    for out in (eager, mapped):
      assert out.shape == (size, size, 3)
      assert out.dtype == tf.float32
      assert float(tf.reduce_min(out)) >= 0.0
      assert float(tf.reduce_max(out)) <= 1.0
      assert float(tf.math.reduce_std(out)) > 0.01  # Not blank.
    if seed is not None or name.startswith("eval"):
      np.testing.assert_array_equal(mapped.numpy(), eager.numpy())
  # The seed matters: a different one gives another view.
  if not name.startswith("eval"):
    other = _TRANSFORMS[name](tf.constant(image), 8)
    assert not np.array_equal(other.numpy(), eager.numpy())


def test_batched_crop_resize_matches_tf_image_resize():
  rng = np.random.default_rng(1)
  images = tf.constant(rng.random((6, 40, 50, 3)), tf.float32)
  boxes = augment.sample_crop_boxes(6, 40, 50, seed=3)
  flip = tf.constant([False, True] * 3)
  out = augment.crop_and_resize_batch(images, boxes, 24, flip=flip).numpy()
  for i in range(6):
    oy, ox, h, w = (int(b[i]) for b in boxes)
    expected = tf.image.resize(images[i, oy:oy + h, ox:ox + w], [24, 24],
                               method="bicubic").numpy()
    if flip[i]:
      expected = expected[:, ::-1]
    # TF's bicubic kernel uses a 1024-entry weight table; ours is exact.
    np.testing.assert_allclose(out[i], expected, atol=2e-3)


def test_area_uniform_crop_boxes_follow_the_paper_ranges():
  side = 64
  oy, ox, h, w = (b.numpy() for b in augment.sample_crop_boxes(
      SAMPLES, side, side, (0.08, 1.0), (3 / 4, 4 / 3), seed=0,
      sampler=augment.AREA_UNIFORM_SAMPLER))
  area = h * w / side ** 2
  assert (oy >= 0).all() and (ox >= 0).all()
  assert (oy + h <= side).all() and (ox + w <= side).all()
  # Rounding to whole pixels moves the area and ratio a little.
  assert area.min() >= 0.08 - 0.02 and area.max() <= 1.0
  ratio = w / h
  assert ratio.min() >= 0.75 - 0.05 and ratio.max() <= 4 / 3 + 0.05
  # Area is spread over the whole range, roughly uniformly (each quarter of
  # [0.08, 1] holds a share; large areas are a little rarer because crops
  # wider than the image are redrawn).
  counts, _ = np.histogram(area, bins=4, range=(0.08, 1.0))
  assert (counts / SAMPLES > 0.12).all(), counts
  assert abs(np.median(area) - 0.54) < 0.08


def _coordinate_image(side=64):
  ramp = np.arange(side, dtype=np.float32) / (side - 1)
  x, y = np.meshgrid(ramp, ramp)
  return np.stack([x, y, np.zeros_like(x)], axis=-1)


def _crop_area_estimate(views, side=64):
  # The red channel spans the crop's columns, green its rows.
  width = views[..., 0].max(axis=(1, 2)) - views[..., 0].min(axis=(1, 2))
  height = views[..., 1].max(axis=(1, 2)) - views[..., 1].min(axis=(1, 2))
  return (width * (side - 1) + 1) * (height * (side - 1) + 1) / side ** 2


def test_crop_area_distribution_same_for_per_example_and_batched():
  config = _config(crop_area_range=(0.08, 1.0),
                   crop_aspect_ratio_range=(3 / 4, 4 / 3))
  views = _both(_coordinate_image(), 32, config)
  areas = {k: _crop_area_estimate(v) for k, v in views.items()}
  for area in areas.values():
    assert area.min() > 0.05 and area.max() <= 1.01
    assert np.quantile(area, 0.05) < 0.15 and np.quantile(area, 0.95) > 0.75
  # Means agree within 5 standard errors of their difference.
  a, b = areas["per_example"], areas["batched"]
  tolerance = SIGMAS * math.sqrt(a.var() / len(a) + b.var() / len(b))
  assert abs(a.mean() - b.mean()) < tolerance
  for q in (0.25, 0.5, 0.75):
    assert abs(np.quantile(a, q) - np.quantile(b, q)) < 0.08


def test_flip_rate_is_half():
  image = _coordinate_image(32)
  for name, views in _both(image, 32, _config(flip_probability=0.5)).items():
    flipped = np.all(np.abs(views - image[:, ::-1]) < 1e-4, axis=(1, 2, 3))
    kept = np.all(np.abs(views - image) < 1e-4, axis=(1, 2, 3))
    assert (flipped | kept).all(), name
    assert abs(flipped.mean() - 0.5) < _binomial_tolerance(0.5), name


def test_color_jitter_rate():
  image = _colorful_image()
  config = _config(color_jitter_probability=0.8)
  for name, views in _both(image, 16, config).items():
    changed = np.abs(views - image / 255.0).max(axis=(1, 2, 3)) > 1e-3
    assert abs(changed.mean() - 0.8) < _binomial_tolerance(0.8), name


def _is_gray(views):
  return (np.abs(views[..., 0] - views[..., 1]).max(axis=(1, 2)) < 1e-6) & (
      np.abs(views[..., 1] - views[..., 2]).max(axis=(1, 2)) < 1e-6)


def test_grayscale_rate_is_independent_of_jitter():
  # The paper's color_distortion: random_apply(color_jitter, p=0.8), then
  # random_apply(color_drop, p=0.2). Grayscale does not depend on jitter, so
  # its overall rate is 0.2 (not 0.8 * 0.2).
  config = _config(color_jitter_probability=0.8, grayscale_probability=0.2)
  for name, views in _both(_colorful_image(), 16, config).items():
    gray = _is_gray(views)
    assert abs(gray.mean() - 0.2) < _binomial_tolerance(0.2), name


def test_grayscale_uses_luma_weights():
  rgb = np.random.default_rng(2).random((4, 5, 3)).astype(np.float32)
  expected = rgb @ np.array([0.2989, 0.5870, 0.1140], np.float32)
  out = augment.to_grayscale(tf.constant(rgb)).numpy()
  for c in range(3):
    np.testing.assert_allclose(out[..., c], expected, atol=1e-6)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_brightness_range_on_gray_image(strength):
  # On a flat gray image only brightness acts (contrast, saturation and hue
  # leave it unchanged), so outputs are 0.5 * U[1 - 0.8 s, 1 + 0.8 s].
  image = np.full((8, 8, 3), 0.5, np.float32)
  config = _config(color_jitter_probability=1.0,
                   color_jitter_strength=strength)
  low, high = 0.5 * (1 - 0.8 * strength), 0.5 * (1 + 0.8 * strength)
  for name, views in _both(image, 8, config).items():
    values = views[:, 0, 0, 0]
    assert values.min() >= low - 1e-5 and values.max() <= high + 1e-5, name
    assert values.min() < low + 0.02 and values.max() > high - 0.02, name
    assert abs(np.median(values) - 0.5) < 0.05, name


def test_contrast_saturation_hue_match_tf_image():
  rng = np.random.default_rng(3)
  images = tf.constant(rng.random((3, 6, 7, 3)), tf.float32)
  factors = tf.constant([0.2, 1.0, 1.8])
  hues = tf.constant([-0.2, 0.0, 0.15])
  contrast = device_augment._adjust_contrast(images, factors)
  sat_hue = device_augment._adjust_saturation_and_hue(images, factors, hues)
  for i in range(3):
    np.testing.assert_allclose(
        contrast[i], tf.image.adjust_contrast(images[i], factors[i]),
        atol=1e-5)
    expected = tf.image.adjust_hue(
        tf.image.adjust_saturation(images[i], factors[i]), hues[i])
    np.testing.assert_allclose(sat_hue[i], expected, atol=1e-4)


def test_gaussian_blur_matches_numpy_kernel():
  radius, sigma = 3, 1.5
  image = np.zeros((2, 15, 15, 3), np.float32)
  image[:, 7, 7, :] = 1.0
  taps = np.arange(-radius, radius + 1)
  kernel = np.exp(-taps ** 2 / (2 * sigma ** 2))
  kernel /= kernel.sum()
  expected = np.outer(kernel, kernel)
  out = augment.gaussian_blur_batch(tf.constant(image),
                                    tf.constant([sigma, 0.1]), radius).numpy()
  np.testing.assert_allclose(out[0, 4:11, 4:11, 0], expected, atol=1e-6)
  assert abs(out[0].sum() - 3.0) < 1e-4  # Mass kept.
  # sigma 0.1 barely spreads; each image used its own sigma.
  assert out[1, 7, 7, 0] > 0.99
  # Reflect padding: a flat image stays flat up to the border.
  flat = np.full((1, 10, 10, 3), 0.7, np.float32)
  blurred = augment.gaussian_blur_batch(tf.constant(flat), tf.constant([2.0]),
                                        radius)
  np.testing.assert_allclose(blurred, flat, atol=1e-6)


def test_blur_rate_and_kernel_size():
  assert augment.blur_kernel_radius(224, 0.1) == 11  # 23 taps, as authors.
  assert augment.blur_kernel_radius(32, 0.1) == 1
  image = _colorful_image(24, 24)
  config = _config(use_blur=True, blur_probability=0.5,
                   blur_kernel_fraction=0.2)
  for name, views in _both(image, 24, config).items():
    blurred = np.abs(views - image / 255.0).max(axis=(1, 2, 3)) > 1e-3
    assert abs(blurred.mean() - 0.5) < _binomial_tolerance(0.5), name
  off = _batched(image, 24, _config(use_blur=False, blur_probability=1.0),
                 n=50)
  np.testing.assert_allclose(off, np.repeat(image[None] / 255.0, 50, 0),
                             atol=1e-6)


def test_two_views_differ_and_eval_is_deterministic():
  image = tf.constant(_colorful_image(48, 48))
  config = AugmentConfig()
  a = augment.preprocess_for_train(image, 32, config)
  b = augment.preprocess_for_train(image, 32, config)
  assert float(tf.reduce_max(tf.abs(a - b))) > 0.05
  views = augment.augment_batch_views(image[None], 32, config, num_views=2)
  assert views.shape == (1, 32, 32, 6)
  assert float(tf.reduce_max(tf.abs(views[..., :3] - views[..., 3:]))) > 0.05
  e1 = augment.preprocess_for_eval(image, 40, config)
  e2 = augment.preprocess_for_eval(image, 40, config)
  np.testing.assert_array_equal(e1, e2)


def test_eval_center_crop_geometry():
  # 80x100 image, target 64 > 32: the central square of 0.875 * 80 = 70 px.
  image = np.random.default_rng(4).random((80, 100, 3)).astype(np.float32)
  out = augment.preprocess_for_eval(tf.constant(image), 64, AugmentConfig())
  top, left = (80 - 70 + 1) // 2, (100 - 70 + 1) // 2
  expected = tf.image.resize(image[top:top + 70, left:left + 70], [64, 64],
                             method="bicubic")
  np.testing.assert_allclose(out, np.clip(expected, 0, 1), atol=1e-6)
  # At 32 px and below: a plain resize of the whole image.
  small = augment.preprocess_for_eval(tf.constant(image), 16, AugmentConfig())
  expected = tf.image.resize(image, [16, 16], method="bicubic")
  np.testing.assert_allclose(small, np.clip(expected, 0, 1), atol=1e-6)


def test_augment_batch_under_xla_and_seeds():
  images = tf.constant(np.stack([_colorful_image(20, 20, s) for s in range(4)]))
  config = AugmentConfig()

  @tf.function(jit_compile=True)
  def seeded(x, seed):
    return augment.augment_batch(x, 16, config, seed=seed)

  a = seeded(images, tf.constant([1, 2]))
  b = seeded(images, tf.constant([1, 2]))
  c = seeded(images, tf.constant([1, 3]))
  assert a.shape == (4, 16, 16, 3) and a.dtype == tf.float32
  assert 0.0 <= float(tf.reduce_min(a)) and float(tf.reduce_max(a)) <= 1.0
  np.testing.assert_array_equal(a, b)
  assert float(tf.reduce_max(tf.abs(a - c))) > 0.05
  # Images of one batch get different parameters.
  same = augment.augment_batch(tf.repeat(images[:1], 4, axis=0), 16, config,
                               seed=5).numpy()
  assert np.abs(same[0] - same[1]).max() > 0.05
  unseeded = tf.function(lambda x: augment.augment_batch(x, 16, config),
                         jit_compile=True)(images)
  assert unseeded.shape == (4, 16, 16, 3)


def test_bad_size_is_rejected():
  with pytest.raises(ValueError, match="Received: size=0"):
    augment.preprocess_for_train(tf.zeros([8, 8, 3]), 0, AugmentConfig())


def _numpy_separable_blur(image, sigma, radius):
  """Reflect-pad and convolve, rows then columns, in float64."""
  taps = np.arange(-radius, radius + 1)
  kernel = np.exp(-taps ** 2 / (2 * sigma ** 2))
  kernel /= kernel.sum()
  padded = np.pad(image.astype(np.float64),
                  [(radius, radius), (radius, radius), (0, 0)],
                  mode="reflect")
  height, width = image.shape[:2]
  rows = sum(kernel[t] * padded[t:t + height] for t in range(len(taps)))
  return sum(kernel[t] * rows[:, t:t + width] for t in range(len(taps)))


@pytest.mark.parametrize("height, width, radius", [
    (15, 15, 3), (24, 17, 8), (224, 224, 11), (40, 64, 1)])
def test_gaussian_blur_matches_numpy_at_the_borders(height, width, radius):
  # Random images, so that every reflected tap near the borders counts;
  # non-square, and a radius close to the shorter side.
  rng = np.random.default_rng(radius)
  images = rng.random((3, height, width, 3)).astype(np.float32)
  sigmas = np.array([0.1, 1.3, 2.0], np.float32)
  out = augment.gaussian_blur_batch(tf.constant(images), tf.constant(sigmas),
                                    radius).numpy()
  for index in range(3):
    expected = _numpy_separable_blur(images[index], sigmas[index], radius)
    np.testing.assert_allclose(out[index], expected, atol=2e-6)
  # As the authors compute it: reflect padding, then depthwise convolution.
  kernel = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * 1.3 ** 2))
  kernel = (kernel / kernel.sum()).astype(np.float32)
  padded = tf.pad(images[1:2], [[0, 0], [radius, radius], [radius, radius],
                                [0, 0]], mode="REFLECT")
  horizontal = tf.nn.depthwise_conv2d(
      padded, np.tile(kernel[None, :, None, None], (1, 1, 3, 1)),
      [1, 1, 1, 1], "VALID")
  both = tf.nn.depthwise_conv2d(
      horizontal, np.tile(kernel[:, None, None, None], (1, 1, 3, 1)),
      [1, 1, 1, 1], "VALID")
  np.testing.assert_allclose(out[1], both[0], atol=2e-6)


def test_gaussian_blur_refuses_a_radius_as_large_as_the_image():
  with pytest.raises(ValueError, match="radius=8 for 8x20"):
    augment.gaussian_blur_batch(tf.zeros((1, 8, 20, 3)), tf.ones((1,)), 8)
