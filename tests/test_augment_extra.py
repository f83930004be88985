"""The paper's other augmentations and its one-branch protocol (Figure 5).

Cutout, Sobel filtering, Gaussian noise and rotation of
`simclr_tf.augment.batched`, against scipy, numpy and their definitions;
`AugmentConfig.branch_transforms` on every path that makes views: the
device path (`augment_views`, `distort_views`), the TensorFlow host path
(`augment_batch_views`, `distort_batch_views`, under XLA as the pipeline
runs it) and JAX (tests/jax_checks.py). The default recipe's own tests are
in test_augment.py.
"""

import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

import command_line
from simclr_tf import config as config_lib
from simclr_tf.augment import batched
from simclr_tf.augment import host
from simclr_tf.config import AugmentConfig
from simclr_tf.config import ConfigError
from simclr_tf.data import pipeline
from simclr_tf.data import user_dataset

SIGMAS = 5.0
LUMA = np.array([0.2989, 0.5870, 0.1140])  # ITU-R 601, tf.image's weights.
# The documented Sobel scale: |gradient| / (4 sqrt 2) lies in [0, 1].
SOBEL_SCALE = 1.0 / (4.0 * math.sqrt(2.0))


def _images(num, height, width, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (num, height, width, 3)).astype(np.uint8)


def _scipy_sobel(images):
  """Gradient magnitude of the luma with scipy, scaled, as 3 channels."""
  out = []
  for image in np.asarray(images, np.float64):
    gray = image @ LUMA
    # scipy's "mirror" is numpy's (and tf.pad's) "reflect": d c b | a b c d.
    d_x = ndimage.sobel(gray, axis=1, mode="mirror")
    d_y = ndimage.sobel(gray, axis=0, mode="mirror")
    magnitude = np.hypot(d_x, d_y) * SOBEL_SCALE
    out.append(np.repeat(magnitude[..., None], 3, axis=-1))
  return np.stack(out)


def _reference_crops(images, boxes, size):
  """`tf.image.resize` bicubic of each box, clipped: crop-and-resize only."""
  out = []
  for image, (oy, ox, h, w) in zip(images, np.stack(
      [np.asarray(b) for b in boxes], 1).astype(int)):
    crop = tf.image.convert_image_dtype(image[oy:oy + h, ox:ox + w],
                                        tf.float32)
    out.append(np.clip(tf.image.resize(crop, [size, size],
                                       method="bicubic").numpy(), 0, 1))
  return np.stack(out)


# --- the transformations -------------------------------------------------


def test_sobel_matches_scipy_and_a_step_edge():
  images = np.random.default_rng(1).random((3, 13, 11, 3)).astype(np.float32)
  out = np.asarray(batched.sobel(images))
  assert out.shape == images.shape
  np.testing.assert_allclose(out, _scipy_sobel(images), atol=1e-5)
  assert out.min() >= 0.0 and out.max() <= 1.0
  # A vertical black|white edge: the x derivative is 4 white (whose luma is
  # the weights' sum, 0.9999) across it and the y one 0, so the columns
  # beside it read 4 white / (4 sqrt 2); flat parts read 0.
  edge = np.zeros((1, 6, 8, 3), np.float32)
  edge[:, :, 4:] = 1.0
  out = np.asarray(batched.sobel(edge))[0, :, :, 0]
  np.testing.assert_allclose(out[:, 3:5], LUMA.sum() / math.sqrt(2.0),
                             atol=1e-6)
  np.testing.assert_allclose(out[:, [0, 1, 2, 5, 6, 7]], 0.0, atol=1e-6)


def test_cutout_paints_one_exact_square_black():
  num, side = 300, 20
  images = np.full((num, side, side, 3), 0.6, np.float32)
  out = np.asarray(batched.cutout(images, 0.3, batched._Random([3, 4])))
  square = round(0.3 * side)  # 6 px.
  tops, lefts = [], []
  for image in out:
    black = image[..., 0] == 0.0
    assert (image == 0.0).sum() == 3 * square ** 2   # Exact area, all bands.
    assert np.all((image == 0.0) | (image == np.float32(0.6)))
    rows, cols = np.nonzero(black)
    tops.append(rows.min())
    lefts.append(cols.min())
    assert rows.max() - rows.min() + 1 == square     # One square...
    assert cols.max() - cols.min() + 1 == square
    assert black.sum() == square ** 2                # ...filled in.
  # Uniform over every position inside the image, both edges included.
  for starts in (np.array(tops), np.array(lefts)):
    assert starts.min() == 0 and starts.max() == side - square
    assert abs(starts.mean() - (side - square) / 2) < SIGMAS * math.sqrt(
        ((side - square + 1) ** 2 - 1) / 12 / num)
  assert len(set(zip(tops, lefts))) > num / 3  # Each image its own place.


def test_noise_std_on_mid_gray_and_the_clip_at_black():
  std, shape = 0.1, (4, 48, 48, 3)
  n = int(np.prod(shape))
  gray = np.full(shape, 0.5, np.float32)
  noisy = np.asarray(batched.gaussian_noise(gray, std, batched._Random([5, 6])))
  noise = noisy - 0.5
  # At 0.5 the clip is 5 sigma away: the spread is std's.
  assert abs(noise.mean()) < SIGMAS * std / math.sqrt(n)
  assert abs(noise.std() - std) < SIGMAS * std / math.sqrt(2 * n)
  # Every pixel and channel draws its own noise.
  assert abs(np.corrcoef(noise[..., 0].ravel(), noise[..., 1].ravel())[0, 1]
             ) < SIGMAS / math.sqrt(n / 3)
  # At 0 the documented clip keeps max(0, noise): mean std / sqrt(2 pi).
  black = np.asarray(batched.gaussian_noise(np.zeros(shape, np.float32), std,
                                            batched._Random([5, 7])))
  assert black.min() == 0.0 and (black == 0.0).mean() == pytest.approx(
      0.5, abs=SIGMAS * 0.5 / math.sqrt(n))
  assert black.mean() == pytest.approx(std / math.sqrt(2 * math.pi),
                                       abs=SIGMAS * std / math.sqrt(n))


def test_rot90_is_numpys_and_rotation_draws_90_180_270_evenly():
  image = _images(1, 7, 7)[0].astype(np.float32)
  for turns in range(4):
    np.testing.assert_array_equal(
        np.asarray(batched.rot90(image[None], turns))[0],
        np.rot90(image, turns, axes=(0, 1)))
  num = 600
  out = np.asarray(batched.random_rotation(np.repeat(image[None], num, 0),
                                           batched._Random([1, 9])))
  counts = {1: 0, 2: 0, 3: 0}
  for rotated in out:
    matches = [k for k in range(4)
               if np.array_equal(rotated, np.rot90(image, k, axes=(0, 1)))]
    assert len(matches) == 1 and matches[0] in counts  # Never 0 degrees.
    counts[matches[0]] += 1
  for count in counts.values():
    assert abs(count / num - 1 / 3) < SIGMAS * math.sqrt(2 / 9 / num)


# --- the one-branch protocol ---------------------------------------------


def test_device_views_second_is_the_plain_crop_first_its_sobel():
  # Every default distortion stays on (flip, colour, blur): the protocol
  # must skip them all, on both views.
  images = _images(3, 30, 26)
  size = 16
  cfg = AugmentConfig(branch_transforms="sobel", blur_kernel_fraction=0.2)
  seed = batched.step_seed(3, 7, batched.CROP_STREAM)
  views = np.asarray(batched.augment_views(images, size, cfg, 2, seed))
  expected = {}
  for view in range(2):
    # The boxes view k draws first: its seed is the views' + (1000 (k+1), 0).
    rng = batched._Random(np.asarray(seed) + np.array([1000 * (view + 1), 0],
                                                      np.uint32))
    boxes = batched.sample_crop_boxes(3, 30, 26, cfg, rng)
    expected[view] = _reference_crops(images, boxes, size)
  # TF's bicubic kernel uses a weight table; ours is exact (test_augment).
  np.testing.assert_allclose(views[..., 3:], expected[1], atol=2e-3)
  np.testing.assert_allclose(views[..., :3], _scipy_sobel(expected[0]),
                             atol=1e-2)
  # The plain view is not a Sobel image, nor the Sobel view a crop.
  assert np.abs(views[..., 3:] - _scipy_sobel(expected[1])).max() > 0.2
  plain = dataclasses.replace(cfg, branch_transforms="")
  usual = np.asarray(batched.augment_views(images, size, plain, 2, seed))
  assert np.abs(usual - views).max() > 0.2


def test_distort_views_leave_the_second_crop_as_it_came():
  crops = _images(4, 12, 12, seed=2).repeat(2, axis=-1)
  crops[..., 3:] = _images(4, 12, 12, seed=3)
  cfg = AugmentConfig(branch_transforms="sobel")
  as_float = crops.astype(np.float32) / 255.0
  outputs = {
      "device": np.asarray(batched.distort_views(
          crops, 12, cfg, 2, batched.step_seed(0, 1, batched.DISTORT_STREAM))),
      "host": host.distort_batch_views(crops, 12, cfg, 2, seed=5).numpy(),
  }
  for name, out in outputs.items():
    np.testing.assert_allclose(out[..., 3:], as_float[..., 3:], atol=1e-7,
                               err_msg=name)
    np.testing.assert_allclose(out[..., :3], _scipy_sobel(as_float[..., :3]),
                               atol=1e-5, err_msg=name)


def test_host_views_follow_the_protocol():
  images = _images(2, 28, 32, seed=4)
  cfg = AugmentConfig(branch_transforms="rotate")
  views = host.augment_batch_views(images, 16, cfg, 2, seed=11).numpy()
  for view in range(2):
    # The host's view k draws its boxes first from seed folded with 1000+k.
    rng = host._Random(host._view_seed(11, 1000 + view))
    boxes = host._sample_crop_boxes(2, 28, 32, cfg.crop_area_range,
                                    cfg.crop_aspect_ratio_range, rng,
                                    cfg.crop_sampler)
    crops = _reference_crops(images, [b.numpy() for b in boxes], 16)
    got = views[..., 3 * view:3 * view + 3]
    if view == 1:
      np.testing.assert_allclose(got, crops, atol=2e-3)
      continue
    for image, crop in zip(got, crops):  # A quarter turn of its crop.
      errors = [np.abs(image - np.rot90(crop, k, axes=(0, 1))).max()
                for k in (1, 2, 3)]
      assert min(errors) < 2e-3, errors


def test_the_new_transforms_compile_with_xla_as_the_pipeline_runs_them():
  # The default recipe's ops are compiled in test_augment; these are new.
  cfg = AugmentConfig(branch_transforms="flip,cutout,noise,sobel,rotate")
  seed = tf.constant([1, 2], tf.int64)
  views = pipeline.batch_augmenter(16, cfg, 2)(_images(2, 20, 20), seed=seed)
  assert views.shape == (2, 16, 16, 6)
  views = views.numpy()
  assert views.min() >= 0.0 and views.max() <= 1.0
  # The last ops turn a gray (Sobel) image: gray channels; view 2 keeps
  # its colour.
  np.testing.assert_allclose(views[..., 0], views[..., 2], atol=1e-6)
  assert np.abs(views[..., 3] - views[..., 5]).max() > 0.05


def test_every_transform_applies_in_the_listed_order():
  cfg = AugmentConfig(branch_transforms="crop,flip,color,blur,cutout,noise,"
                      "sobel,rotate", blur_kernel_fraction=0.3)
  every = np.asarray(batched.apply_branch_transforms(
      _images(2, 16, 16).astype(np.float32) / 255, 16, cfg,
      batched._Random([1, 1])))
  assert every.shape == (2, 16, 16, 3)
  assert every.min() >= 0.0 and every.max() <= 1.0
  np.testing.assert_array_equal(every[..., 0], every[..., 1])  # Sobel last.
  # Order matters: noise after Sobel leaves colour noise, Sobel after noise
  # leaves gray.
  noisy_sobel = batched.apply_branch_transforms(
      _images(2, 16, 16).astype(np.float32) / 255, 16,
      AugmentConfig(branch_transforms="sobel,noise"), batched._Random([1, 1]))
  sobel_of_noise = batched.apply_branch_transforms(
      _images(2, 16, 16).astype(np.float32) / 255, 16,
      AugmentConfig(branch_transforms="noise,sobel"), batched._Random([1, 1]))
  assert np.abs(np.asarray(noisy_sobel)[..., 0] -
                np.asarray(noisy_sobel)[..., 1]).max() > 0.05
  np.testing.assert_array_equal(np.asarray(sobel_of_noise)[..., 0],
                                np.asarray(sobel_of_noise)[..., 1])


def test_one_view_functions_refuse_the_protocol():
  cfg = AugmentConfig(branch_transforms="noise")
  with pytest.raises(ValueError, match="Received: branch_transforms='noise'"):
    host.preprocess_for_train(tf.zeros([8, 8, 3]), 8, cfg)
  with pytest.raises(ValueError, match="branch_transforms"):
    user_dataset.pretraining_views(
        tf.data.Dataset.from_tensors(tf.zeros([8, 8, 3])), image_size=8,
        batch_size=1, augment_config=cfg)


# --- the settings ----------------------------------------------------------


def test_the_settings_name_the_implemented_transforms():
  assert config_lib.BRANCH_TRANSFORMS == batched.BRANCH_TRANSFORMS
  default = AugmentConfig()
  assert default.branch_transforms == "" and default.branch_transform_names == ()
  names = AugmentConfig(branch_transforms=" Sobel, noise ,rotate,")
  assert names.branch_transform_names == ("sobel", "noise", "rotate")
  as_tuple = AugmentConfig(branch_transforms=("cutout", "crop"))
  assert as_tuple.branch_transform_names == ("cutout", "crop")
  assert as_tuple == AugmentConfig(branch_transforms="cutout,crop")


@pytest.mark.parametrize("overrides, message", [
    (dict(branch_transforms="sobel,jpeg"),
     "unknown: jpeg). Received: branch_transforms='sobel,jpeg'"),
    (dict(branch_transforms="color", color_jitter_strength=0.0),
     "color_jitter_strength=0 turns colour distortion off"),
    (dict(cutout_fraction=0.0), "`cutout_fraction` must be > 0.0"),
    (dict(cutout_fraction=1.5), "`cutout_fraction` must be <= 1.0"),
    (dict(noise_std=0.0), "`noise_std` must be > 0.0"),
])
def test_bad_settings_are_refused_by_name(overrides, message):
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(
      ")", r"\)")):
    AugmentConfig(**overrides).validate()


def test_flags_json_and_the_fine_tuning_stage():
  config = command_line.config_of(["--branch_transforms=cutout,noise",
                                   "--cutout_fraction=0.25",
                                   "--noise_std=0.05"])
  assert config.augment.branch_transform_names == ("cutout", "noise")
  assert (config.augment.cutout_fraction, config.augment.noise_std) == (
      0.25, 0.05)
  again = config_lib.ExperimentConfig.from_json(config.to_json())
  assert again.augment == config.augment
  assert config.train_augment().branch_transforms == "cutout,noise"
  finetune = config.replace(run=dataclasses.replace(
      config.run, train_mode="finetune"))
  assert finetune.train_augment().branch_transform_names == ()
  with pytest.raises(Exception, match="branch_transforms"):
    command_line.config_of(["--branch_transforms=rotation"])


# --- JAX -------------------------------------------------------------------


def test_the_protocol_on_jax(tmp_path):
  pytest.importorskip("jax", reason="the JAX backend needs `pip install jax`")
  images = _images(3, 30, 26, seed=6)
  np.savez(tmp_path / "inputs.npz", images=images)
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
             PYTHONPATH=command_line.REPO + os.pathsep +
             os.environ.get("PYTHONPATH", ""))
  checks = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "jax_checks.py")
  result = subprocess.run([sys.executable, checks, "branch", str(tmp_path)],
                          env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  out = np.load(tmp_path / "branch.npz")
  assert str(out["backend"]) == "jax"
  assert not bool(out["tensorflow_imported"])
  views = out["views"]
  crops = {k: _reference_crops(images, tuple(out[f"boxes{k}"].T), 16)
           for k in range(2)}
  np.testing.assert_allclose(views[..., 3:], crops[1], atol=2e-3)
  np.testing.assert_allclose(views[..., :3], _scipy_sobel(crops[0]),
                             atol=1e-2)
  others = out["others"]
  assert others.shape == (3, 16, 16, 6)
  assert others.min() >= 0.0 and others.max() <= 1.0
  np.testing.assert_allclose(others[..., 3:], crops[1], atol=2e-3)
  np.testing.assert_allclose(others[..., 0], others[..., 1], atol=1e-6)
  assert np.abs(others[..., :3] - views[..., :3]).max() > 0.05
