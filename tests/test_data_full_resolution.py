"""Photo-sized non-square images: crops and evaluation views at full size.

Reference points are independent of our code: a numpy implementation of the
authors' `center_crop` (tf2/data_util.py) followed by the bicubic resize
they call, and images whose pixel colour is their position, so a view shows
which window of the full-resolution image it came from.
"""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.augment import host as augment
from simclr_tf.config import AugmentConfig
from simclr_tf.config import DataConfig
from simclr_tf.data import build_input_fn
from simclr_tf.data import get_dataset_info
from simclr_tf.data import pipeline
from simclr_tf.data import registry

SIZE = 40
# Height x width of the photos: non-square both ways, larger than 32 px.
PHOTO_SHAPES = [(120, 200), (150, 90), (97, 161)]
# Only geometry: no colour, so a view's colours are positions.
GEOMETRY_ONLY = AugmentConfig(color_jitter_probability=0.0,
                              grayscale_probability=0.0, use_blur=False,
                              flip_probability=0.0)


def _coordinate_image(height, width):
  """Red = column, green = row (scaled to 0..255), blue = 0."""
  x = np.round(np.arange(width) * 255 / (width - 1))
  y = np.round(np.arange(height) * 255 / (height - 1))
  image = np.zeros((height, width, 3), np.uint8)
  image[..., 0] = x[None, :]
  image[..., 1] = y[:, None]
  return image


def _photo(height, width, seed):
  rng = np.random.default_rng(seed)
  smooth = rng.random((height // 8 + 2, width // 8 + 2, 3))
  image = tf.image.resize(smooth[None], [height, width], "bilinear")[0]
  return np.round(np.asarray(image) * 255).astype(np.uint8)


def _write(root, images, ext=".png"):
  for i, image in enumerate(images):
    path = root / "train" / f"c{i % 2}" / f"{i:02d}{ext}"
    path.parent.mkdir(parents=True, exist_ok=True)
    encode = tf.io.encode_png if ext == ".png" else (
        lambda x: tf.io.encode_jpeg(x, quality=100))
    tf.io.write_file(str(path), encode(image))
  registry.clear_caches()


def _config(root, **kwargs):
  return DataConfig(dataset="image_folder", data_dir=str(root),
                    train_split="train", eval_split="train", image_size=SIZE,
                    **kwargs)


def _authors_center_crop(image, size, fraction=0.875):
  """tf2/data_util.py `center_crop` for a square output, in numpy."""
  height, width = image.shape[:2]
  # aspect_ratio = 1: the limiting side keeps `fraction`, rounded to even.
  if 1.0 > width / height:
    crop_h = crop_w = int(np.rint(fraction * width))
  else:
    crop_h = crop_w = int(np.rint(fraction * height))
  top = (height - crop_h + 1) // 2
  left = (width - crop_w + 1) // 2
  crop = image[top:top + crop_h, left:left + crop_w].astype(np.float32) / 255
  out = tf.image.resize(crop[None], [size, size], method="bicubic")[0]
  return np.clip(np.asarray(out), 0.0, 1.0)


def _context(pipeline_id, pipelines):
  return tf.distribute.InputContext(num_input_pipelines=pipelines,
                                    input_pipeline_id=pipeline_id,
                                    num_replicas_in_sync=pipelines)


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("pipelines", [1, 2])
def test_eval_view_is_the_authors_center_crop(tmp_path, cache, pipelines):
  photos = [_photo(h, w, i) for i, (h, w) in enumerate(PHOTO_SHAPES * 2)]
  _write(tmp_path, photos)
  references = np.stack([_authors_center_crop(p, SIZE) for p in photos])
  input_fn = build_input_fn(_config(tmp_path, cache_dataset=cache),
                            AugmentConfig(), training=False, num_views=1,
                            global_batch_size=2 * pipelines)
  views = np.concatenate([
      x.numpy() for i in range(pipelines)
      for x, _ in input_fn(_context(i, pipelines))])
  assert len(views) == len(photos)
  # Each view equals the reference of exactly one photo.
  errors = np.abs(views[:, None] - references[None]).max(axis=(2, 3, 4))
  assert sorted(errors.argmin(axis=1)) == list(range(len(photos)))
  np.testing.assert_allclose(errors.min(axis=1), 0.0, atol=1e-5)


def _windows(views, height, width):
  """The crop window (rows, cols) each coordinate view shows, in pixels."""
  views = np.asarray(views, np.float32)
  if views.max() > 1.5:
    views = views / 255.0
  red, green = views[..., 0], views[..., 1]
  cols = (red.max(axis=(1, 2)) - red.min(axis=(1, 2))) * (width - 1) + 1
  rows = (green.max(axis=(1, 2)) - green.min(axis=(1, 2))) * (height - 1) + 1
  return rows, cols


def _check_windows_are_full_resolution_crops(views, height, width):
  rows, cols = _windows(views, height, width)
  ratio = cols / rows
  area = rows * cols / (height * width)
  # Crops keep their aspect ratio in the photo's own pixels (3/4..4/3, plus
  # a few pixels of bicubic edge effects). A crop from a squashed square
  # would have width / height scaled by the photo's aspect (here 5/3 or
  # 3/5): mean ratio far from 1.
  assert 0.9 < ratio.mean() < 1.12, ratio.mean()
  assert ratio.min() > 0.65 and ratio.max() < 1.5, (ratio.min(), ratio.max())
  assert area.min() > 0.08 and area.max() <= 1.02


# Every path of the per-image crop (two views from one decode, a JPEG's
# window, another format's whole decode), host and on-device, cache on/off.
@pytest.mark.parametrize("num_views,ext,cache,on_device", [
    (2, ".png", True, False), (2, ".png", False, True),
    (1, ".jpg", False, False), (1, ".jpg", True, True),
    (1, ".png", True, True)])
def test_train_crops_come_from_the_full_resolution_image(
    tmp_path, num_views, ext, cache, on_device):
  height, width = PHOTO_SHAPES[0]
  _write(tmp_path, [_coordinate_image(height, width)] * 4, ext)
  aug = AugmentConfig(**{**GEOMETRY_ONLY.__dict__, "on_device": on_device})
  ds = build_input_fn(_config(tmp_path, cache_dataset=cache), aug,
                      training=True, num_views=num_views,
                      global_batch_size=16, seed=1)(None)
  views = np.concatenate([x.numpy() for x, _ in ds.take(4)])
  assert views.dtype == (np.uint8 if on_device else np.float32)
  assert views.shape[1:] == (SIZE, SIZE, 3 * num_views)
  views = np.concatenate([views[..., 3 * k:3 * k + 3]
                          for k in range(num_views)])
  # JPEG (quality 100) moves colours by a level or two.
  _check_windows_are_full_resolution_crops(views, height, width)


@pytest.mark.parametrize("transform", [augment.augment_batch_views,
                                       augment.crop_views_batch])
def test_batched_crops_of_same_size_photos_are_full_resolution(transform):
  # The XLA host path and the on-device path's host crops, as the pipeline
  # runs them on batches of same-size (e.g. tfds) images.
  height, width = PHOTO_SHAPES[1]
  batch = np.stack([_coordinate_image(height, width)] * 32)
  # XLA as the pipeline runs it, but only for the cheap crops alone.
  fn = tf.function(lambda images, seed: transform(
      images, size=SIZE, augment_config=GEOMETRY_ONLY, num_views=2,
      seed=seed), jit_compile=transform is augment.crop_views_batch)
  views = fn(batch, tf.constant(3, tf.int64)).numpy()
  views = np.concatenate([views[..., :3], views[..., 3:]])
  _check_windows_are_full_resolution_crops(views, height, width)


def _flat_folder(root, count):
  for i in range(count):
    path = root / "train" / f"c{i % 2}" / f"{i:02d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((36, 48, 3), np.uint8)
    image[..., 0] = 10 * i
    tf.io.write_file(str(path), tf.io.encode_png(image))
  registry.clear_caches()


def test_label_subset_only_for_supervised_stages(tmp_path):
  _flat_folder(tmp_path, 20)
  config = _config(tmp_path, label_fraction=0.1, cache_dataset=False)
  # Host crops only (uint8, no XLA compile): flat images stay flat.
  crops_only = AugmentConfig(**{**GEOMETRY_ONLY.__dict__, "on_device": True})
  assert get_dataset_info(config, supervised=False).num_train_examples == 20
  assert get_dataset_info(config, supervised=True).num_train_examples == 2

  def first_epoch(supervised, batch):
    ds = build_input_fn(config, crops_only, training=True, num_views=1,
                        global_batch_size=batch, seed=0,
                        supervised=supervised)(None)
    images, labels = next(iter(ds))
    index = np.round(images.numpy()[..., 0].mean(axis=(1, 2)) / 10)
    return index.astype(int), labels.numpy()

  # Pretraining reads every image once per epoch; 2 of them keep labels.
  index, labels = first_epoch(False, 20)
  assert sorted(index) == list(range(20))
  labeled = labels.sum(axis=1) > 0
  assert labeled.sum() == 2
  np.testing.assert_array_equal(labels[labeled].argmax(axis=1),
                                index[labeled] % 2)
  # Fine-tuning reads only those 2, with their labels.
  tuned, tuned_labels = first_epoch(True, 2)
  assert sorted(tuned) == sorted(index[labeled])
  np.testing.assert_array_equal(tuned_labels.argmax(axis=1), tuned % 2)


def _boxes_of_pipeline(root, pipeline_id, pipelines, seed):
  """Crop windows of one pipeline's first views, order made deterministic."""
  height, width = PHOTO_SHAPES[0]
  # The host's crops (on-device path: no XLA compile per pipeline).
  crops_only = AugmentConfig(**{**GEOMETRY_ONLY.__dict__, "on_device": True})
  ds = build_input_fn(_config(root, cache_dataset=True), crops_only,
                      training=True, num_views=1, global_batch_size=8 *
                      pipelines, seed=seed)(_context(pipeline_id, pipelines))
  options = tf.data.Options()
  options.deterministic = True
  views = np.concatenate([x.numpy() for x, _ in
                          ds.with_options(options).take(2)])
  return np.stack(_windows(views, height, width), axis=1)


def test_each_input_pipeline_draws_its_own_augmentations(tmp_path):
  # Every file is the same image, so only the random draws tell views apart.
  height, width = PHOTO_SHAPES[0]
  _write(tmp_path, [_coordinate_image(height, width)] * 8)
  first = _boxes_of_pipeline(tmp_path, 0, 2, seed=5)
  second = _boxes_of_pipeline(tmp_path, 1, 2, seed=5)
  assert not np.allclose(first, second)
  np.testing.assert_array_equal(first, _boxes_of_pipeline(tmp_path, 0, 2, 5))
  assert not np.allclose(first, _boxes_of_pipeline(tmp_path, 0, 2, seed=6))
  assert pipeline.pipeline_seed(5, 0) != pipeline.pipeline_seed(5, 1)


def test_shuffle_buffer_default_is_the_authors():
  # tf2/data.py: buffer_size = 50 * batch for images <= 32 px, else 10 *.
  assert pipeline.shuffle_buffer_size(DataConfig(image_size=32), 64) == 3200
  assert pipeline.shuffle_buffer_size(DataConfig(image_size=224), 64) == 640
  assert pipeline.shuffle_buffer_size(
      DataConfig(image_size=224, shuffle_buffer=7), 64) == 7


def test_color_strength_zero_skips_colour_and_grayscale():
  config = AugmentConfig(color_jitter_strength=0.0,
                         color_jitter_probability=1.0,
                         grayscale_probability=1.0, use_blur=False,
                         flip_probability=0.0)
  crops = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), np.uint8)
  views = augment.distort_batch_views(crops, 16, config, num_views=1, seed=1)
  np.testing.assert_allclose(views.numpy(), crops / 255.0, atol=1e-6)
  # With any strength, grayscale (p = 1) makes the channels equal.
  strong = AugmentConfig(**{**config.__dict__, "color_jitter_strength": 0.5})
  gray = augment.distort_batch_views(crops, 16, strong, num_views=1,
                                     seed=1).numpy()
  np.testing.assert_allclose(gray[..., 0], gray[..., 1], atol=1e-5)


def test_cifar10_linear_eval_preset_uses_the_authors_linear_scaling():
  # The authors' README linear-eval command sets lr 0.1, batch 512 and
  # leaves learning_rate_scaling at its default, linear: 0.1 * 512 / 256.
  from simclr_tf import optimizers
  from tests.command_line import REPO
  from tests.command_line import config_of
  config = config_of([f"--flagfile={REPO}/flags/cifar10_linear_eval.cfg"])
  stage = config.for_linear_eval(model_dir="/tmp/x", checkpoint="/tmp/y")
  opt = stage.optimizer
  schedule = optimizers.WarmUpAndCosineDecay(
      opt.learning_rate, batch_size=stage.run.train_batch_size,
      num_examples=50000, warmup_epochs=0, total_steps=100,
      scaling=opt.learning_rate_scaling)
  assert abs(schedule.scaled_learning_rate - 0.1 * 512 / 256) < 1e-9
