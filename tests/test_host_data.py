"""The TF-free input path of the JAX backend, against TensorFlow's ops.

`host_data` must resample as `tf.image.resize` does, take the authors'
centre crop, and crop training views from the full-resolution photo.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from simclr_tf import config as config_lib
from simclr_tf.data import host_batches as host_data
from simclr_tf.data.errors import DataError


def _tf_resize(pixels, size):
  out = tf.image.resize(pixels.astype(np.float32), [size, size],
                        method="bicubic").numpy()
  return np.round(np.clip(out, 0, 255)).astype(int)


@pytest.mark.parametrize("shape,size", [((375, 500), 224), ((500, 333), 96),
                                        ((20, 30), 64)])
def test_resize_matches_tf_image_resize_bicubic(shape, size):
  pixels = np.random.default_rng(0).integers(0, 256, shape + (3,),
                                             dtype=np.uint8)
  ours = host_data._resize(pixels, size).astype(int)
  theirs = _tf_resize(pixels, size)
  # float32 sums in another order: a rounding step apart, rarely.
  assert np.abs(ours - theirs).max() <= 1
  assert (ours != theirs).mean() < 0.05


def _authors_center_crop(pixels, size, fraction):
  """tf2/data_util.center_crop for a square target, in numpy + TF resize."""
  height, width = pixels.shape[:2]
  side = int(np.rint(np.float32(fraction) * np.float32(min(height, width))))
  top = ((height - side) + 1) // 2
  left = ((width - side) + 1) // 2
  return _tf_resize(pixels[top:top + side, left:left + side], size)


@pytest.mark.parametrize("shape", [(375, 500), (500, 333), (480, 481)])
def test_eval_view_is_the_authors_center_crop(shape):
  pixels = np.random.default_rng(1).integers(0, 256, shape + (3,),
                                             dtype=np.uint8)
  ours = host_data.center_crop(pixels, 224, 0.875).astype(int)
  assert np.abs(ours - _authors_center_crop(pixels, 224, 0.875)).max() <= 1
  # At 32 px and below the authors only resize.
  small = host_data.center_crop(pixels, 32, 0.875).astype(int)
  assert np.abs(small - _tf_resize(pixels, 32)).max() <= 1


def _coordinate_image(height, width):
  """Red = column, green = row, both scaled to 0..255 over the image."""
  rows, cols = np.mgrid[0:height, 0:width]
  image = np.zeros((height, width, 3), np.uint8)
  image[..., 0] = np.round(cols * 255.0 / (width - 1))
  image[..., 1] = np.round(rows * 255.0 / (height - 1))
  return image


def _write_folder(root, shapes, broken=()):
  for index, (height, width) in enumerate(shapes):
    folder = os.path.join(root, "train", f"class{index % 2}")
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(_coordinate_image(height, width)).save(
        os.path.join(folder, f"photo{index}.png"))
  for name in broken:
    with open(os.path.join(root, "train", "class0", name), "wb") as handle:
      handle.write(b"not an image")


def test_training_views_are_cropped_from_the_full_resolution_photo(tmp_path):
  shapes = [(375, 500), (500, 333), (240, 320), (333, 500)]
  _write_folder(str(tmp_path), shapes, broken=["broken.jpg"])
  cfg = config_lib.DataConfig(dataset="image_folder", data_dir=str(tmp_path),
                              image_size=32)
  split = host_data.load_split(cfg, "train")
  assert len(split) == 5 and split.num_classes == 2
  batches = host_data.Batches(split, 5, 32, config_lib.AugmentConfig(),
                              training=True, num_views=2, num_classes=2)
  assert not batches.crops_on_device
  fractions = []
  for index in range(len(batches)):
    views, labels = batches[index]
    assert views.shape == (5, 32, 32, 6) and views.dtype == np.uint8
    assert labels.shape == (5, 2)
    for view in np.concatenate([views[..., :3], views[..., 3:]]):
      if (view == 128).all():
        continue  # The stand-in for the broken file.
      # The window the view shows, in fractions of the photo's sides.
      width_fraction = (int(view[..., 0].max()) - int(view[..., 0].min())) / 255
      height_fraction = (int(view[..., 1].max()) - int(view[..., 1].min())) / 255
      fractions.append(width_fraction * height_fraction)
  fractions = np.array(fractions)
  # A crop of a resized 32 px square would still span the coordinates; what
  # shows the full resolution is that the windows have the sampler's areas:
  # between 8% and the whole photo, and mostly well below the whole.
  assert fractions.min() > 0.05 and fractions.max() <= 1.0
  assert np.median(fractions) < 0.8
  assert batches.skipped.report() == ("skipped 1 unreadable files: "
                                      "broken.jpg")
  # Another epoch reads it again; it is still one file.
  batches.on_epoch_end()
  for index in range(len(batches)):
    batches[index]
  assert batches.skipped.report() == ("skipped 1 unreadable files: "
                                      "broken.jpg")


def test_builtin_dataset_is_the_tfds_builders_images(tmp_path):
  from simclr_tf.data import shapes_render
  cfg = config_lib.DataConfig(dataset="synthetic_shapes", image_size=16,
                              synthetic_train_examples=40,
                              synthetic_test_examples=20)
  split = host_data.load_split(cfg, "test")
  images, labels = shapes_render.render_shapes(20, 16, 0, stream=1)
  np.testing.assert_array_equal(split.images, images)
  np.testing.assert_array_equal(split.labels, labels)
  batches = host_data.Batches(split, 8, 16, config_lib.AugmentConfig(),
                              training=False, num_classes=10)
  assert len(batches) == 3
  last, one_hot, weights = batches[2]
  assert list(weights) == [1.0] * 4
  assert last.shape == (4, 16, 16, 3) and last.dtype == np.float32
  np.testing.assert_allclose(last, images[16:] / 255.0, atol=1e-7)
  np.testing.assert_array_equal(one_hot.argmax(1), labels[16:])


def test_unsupported_dataset_and_missing_split_are_one_line_errors(tmp_path):
  with pytest.raises(DataError, match="tfds datasets need the TensorFlow "
                     "backend"):
    host_data.load_split(config_lib.DataConfig(dataset="cifar10"), "train")
  with pytest.raises(DataError, match="has no split subfolders"):
    host_data.load_split(config_lib.DataConfig(
        dataset="image_folder", data_dir=str(tmp_path)), "train")
  (tmp_path / "test").mkdir()
  with pytest.raises(DataError, match="split 'train' not found"):
    host_data.load_split(config_lib.DataConfig(
        dataset="image_folder", data_dir=str(tmp_path)), "train")


def test_a_folder_of_bad_files_fails_and_bad_eval_files_weigh_nothing(
    tmp_path):
  for name in ("1.jpg", "2.png"):
    os.makedirs(tmp_path / "bad" / "a", exist_ok=True)
    (tmp_path / "bad" / "a" / name).write_bytes(b"not an image")
  cfg = config_lib.DataConfig(dataset="image_folder", data_dir=str(tmp_path))
  with pytest.raises(DataError, match="None of 2 image files checked in "):
    host_data.load_split(cfg, "bad")
  # One good photo-sized image beside the bad ones: the split opens, and
  # evaluation gives the bad file a gray stand-in of weight 0.
  Image.new("RGB", (500, 375), (200, 10, 10)).save(
      tmp_path / "bad" / "a" / "3.jpg")
  split = host_data.load_split(cfg, "bad")
  batches = host_data.Batches(split, 3, 32, config_lib.AugmentConfig(),
                              training=False, num_classes=1)
  images, labels, weights = batches[0]
  assert images.shape == (3, 32, 32, 3) and labels.shape == (3, 1)
  assert list(weights) == [0.0, 0.0, 1.0]
  assert batches.skipped.report() == "skipped 2 unreadable files: 1.jpg, 2.png"


def test_an_unreadable_training_file_is_replaced_by_a_readable_one(
    tmp_path):
  # Red photos in class a, blue in b, one broken file in b: every training
  # view must be a real photo whose colour matches its label (no gray
  # stand-in), as the TF path drops the file and reads on.
  for name, colour in (("a/1.jpg", (230, 0, 0)), ("a/2.jpg", (230, 0, 0)),
                       ("b/3.jpg", (0, 0, 230)), ("b/4.jpg", (0, 0, 230))):
    os.makedirs(tmp_path / "train" / os.path.dirname(name), exist_ok=True)
    Image.new("RGB", (500, 375), colour).save(tmp_path / "train" / name)
  (tmp_path / "train" / "b" / "bad.jpg").write_bytes(b"not an image")
  cfg = config_lib.DataConfig(dataset="image_folder", data_dir=str(tmp_path))
  split = host_data.load_split(cfg, "train")
  batches = host_data.Batches(split, 5, 16, config_lib.AugmentConfig(),
                              training=True, num_classes=2, seed=3)
  for epoch in range(3):
    views, one_hot = batches[0]
    red = views[..., 0].mean(axis=(1, 2)) > views[..., 2].mean(axis=(1, 2))
    assert views.shape == (5, 16, 16, 3)
    assert np.all(np.abs(views.astype(int) - 128).max(axis=(1, 2, 3)) > 60)
    np.testing.assert_array_equal(red, one_hot[:, 0] == 1, err_msg=epoch)
    batches.on_epoch_end()
  assert batches.skipped.report() == "skipped 1 unreadable files: bad.jpg"


def test_class_ids_come_from_every_splits_folders(tmp_path):
  # tfds ImageFolder's rule: ids are the sorted class folder names of all
  # splits, so a split that lacks a class keeps the others' ids.
  tiny = Image.new("RGB", (6, 4), (10, 20, 30))
  for split, classes in (("train", "abc"), ("test", "ac")):
    for name in classes:
      os.makedirs(tmp_path / split / name)
      tiny.save(tmp_path / split / name / f"{name}.png")
  os.makedirs(tmp_path / "unlabeled")
  tiny.save(tmp_path / "unlabeled" / "x.png")
  (tmp_path / "unlabeled" / "notes.png.txt").write_text("not an image")
  cfg = config_lib.DataConfig(dataset="image_folder", data_dir=str(tmp_path))
  test = host_data.load_split(cfg, "test")
  assert [os.path.basename(p) for p in test.paths] == ["a.png", "c.png"]
  assert list(test.labels) == [0, 2] and test.num_classes == 3
  unlabeled = host_data.load_split(cfg, "unlabeled")
  assert list(unlabeled.labels) == [-1] and unlabeled.num_classes == 0
