"""Image folders: formats, odd sizes, corrupt files, unlabeled splits."""

import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import AugmentConfig
from simclr_tf.config import DataConfig
from simclr_tf.data import DataError
from simclr_tf.data import build_input_fn
from simclr_tf.data import folder_layout
from simclr_tf.data import get_dataset_info
from simclr_tf.data import registry
from simclr_tf.data import take_skipped_files_report


def write_bmp(path, image: np.ndarray) -> None:
  """24-bit uncompressed BMP (rows bottom-up, BGR, 4-byte aligned)."""
  height, width, _ = image.shape
  row = width * 3
  pad = (4 - row % 4) % 4
  pixels = b"".join(image[y, :, ::-1].tobytes() + b"\0" * pad
                    for y in range(height - 1, -1, -1))
  header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
  info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels),
                     2835, 2835, 0, 0)
  with open(path, "wb") as f:
    f.write(header + info + pixels)


def _gif_frame(indices: np.ndarray) -> bytes:
  """LZW image data that never grows the code table past 9 bits."""
  clear, end = 256, 257
  codes = []
  for start in range(0, indices.size, 250):
    codes.append(clear)
    codes.extend(int(i) for i in indices.ravel()[start:start + 250])
  codes.append(end)
  bits = "".join(format(c, "09b")[::-1] for c in codes)
  bits += "0" * (-len(bits) % 8)
  data = bytes(int(bits[i:i + 8][::-1], 2) for i in range(0, len(bits), 8))
  blocks = b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255]
                    for i in range(0, len(data), 255))
  return bytes([8]) + blocks + b"\0"


def write_gif(path, frames) -> None:
  """Animated GIF of (H, W, 3) uint8 frames, each with its own palette."""
  height, width, _ = frames[0].shape
  out = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
  out += b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
  for frame in frames:
    colors, indices = np.unique(frame.reshape(-1, 3), axis=0,
                                return_inverse=True)
    assert len(colors) <= 256
    palette = np.zeros((256, 3), np.uint8)
    palette[:len(colors)] = colors
    out += b"!\xf9\x04\x00\x0a\x00\x00\x00"
    out += b"," + struct.pack("<HHHHB", 0, 0, width, height, 0x87)
    out += palette.tobytes() + _gif_frame(indices.reshape(height, width))
  with open(path, "wb") as f:
    f.write(out + b";")


def _random_image(height, width, seed):
  # 6 levels per channel: at most 216 colours, so a GIF palette holds them.
  return (np.random.default_rng(seed).integers(0, 6, (height, width, 3)) *
          51).astype(np.uint8)


def _write(path, image):
  ext = os.path.splitext(path)[1].lower()
  if ext == ".png":
    data = tf.io.encode_png(image)
  elif ext in (".jpg", ".jpeg"):
    data = tf.io.encode_jpeg(image, quality=95)
  elif ext == ".bmp":
    return write_bmp(path, image)
  elif ext == ".gif":
    return write_gif(path, [image])
  tf.io.write_file(path, data)


@pytest.fixture
def folder(tmp_path):
  """Labeled train/test splits, every format, a corrupt and an odd file."""
  root = tmp_path / "images"
  layout = {
      "train/cat": ["a.jpg", "b.png", "c.bmp", "d.gif", "e.JPEG"],
      "train/dog": ["f.png", "g.jpg", "h.bmp"],
      "test/cat": ["i.png"],
      "test/dog": ["j.png", "k.png"],
      "unlabeled": ["l.png", "m.jpg"],
  }
  seed = 0
  for folder_name, names in layout.items():
    (root / folder_name).mkdir(parents=True)
    for name in names:
      seed += 1
      _write(str(root / folder_name / name), _random_image(20, 20, seed))
  _write(str(root / "train/dog/odd.png"), _random_image(23, 37, 99))
  (root / "train/dog/broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
  (root / "train/cat/notes.txt").write_text("not an image, ignored")
  registry.clear_caches()
  return root


def test_formats_labels_and_skipped_files(folder):
  config = DataConfig(dataset="image_folder", data_dir=str(folder),
                      train_split="train", eval_split="test", image_size=16)
  take_skipped_files_report()
  info = get_dataset_info(config)
  # 10 image files listed in train; broken.jpg is found when it is read.
  assert info.num_train_examples == 10
  assert info.num_eval_examples == 3
  assert info.num_classes == 2
  assert info.train_has_labels
  # "Not known to be one shape": proving one would open every file.
  assert info.image_shape is None
  assert take_skipped_files_report() is None
  source = registry.get_source(config)
  assert source.class_names == ["cat", "dog"]

  ds = build_input_fn(config, AugmentConfig(), training=False, num_views=1,
                      global_batch_size=4)(None)
  images, labels = [], []
  for x, y in ds:
    images.append(x.numpy())
    labels.append(y.numpy())
  images, labels = np.concatenate(images), np.concatenate(labels)
  assert images.shape == (3, 16, 16, 3) and images.dtype == np.float32
  np.testing.assert_array_equal(labels, [[1, 0], [0, 1], [0, 1]])

  train = build_input_fn(config, AugmentConfig(), training=True, num_views=2,
                         global_batch_size=4)(None)
  for x, y in train.take(5):
    assert x.shape == (4, 16, 16, 6) and x.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0
    np.testing.assert_array_equal(tf.reduce_sum(y, axis=1), [1, 1, 1, 1])
  report = take_skipped_files_report()
  assert report.startswith("skipped 1 unreadable image file(s): ")
  assert "broken.jpg (" in report


def test_every_format_decodes_to_its_pixels(folder):
  source = registry.get_source(DataConfig(dataset="image_folder",
                                          data_dir=str(folder)))
  paths = [p for p in source.paths("train") if "broken" not in p]
  for path in paths:
    image = source.decode({"image": tf.constant(path), "label": 0})["image"]
    name = os.path.basename(path)
    expected_shape = (23, 37, 3) if name == "odd.png" else (20, 20, 3)
    assert image.shape == expected_shape, name
    if name.endswith((".png", ".bmp", ".gif")) and name != "odd.png":
      seed = "abcdefghijklm".index(name[0]) + 1
      np.testing.assert_array_equal(image, _random_image(20, 20, seed), name)


def test_gif_first_frame(tmp_path):
  root = tmp_path / "gifs"
  (root / "train" / "anim").mkdir(parents=True)
  first = np.zeros((6, 5, 3), np.uint8)
  first[..., 0] = 200
  second = np.full((6, 5, 3), 30, np.uint8)
  write_gif(str(root / "train/anim/x.gif"), [first, second])
  source = registry.get_source(DataConfig(dataset="image_folder",
                                          data_dir=str(root)))
  assert source.num_examples("train") == 1
  path = source.paths("train")[0]
  image = source.decode({"image": tf.constant(path), "label": 0})["image"]
  np.testing.assert_array_equal(image, first)


def test_unlabeled_split_gives_zero_label_rows(folder):
  config = DataConfig(dataset="image_folder", data_dir=str(folder),
                      train_split="unlabeled", eval_split="test",
                      image_size=16)
  info = get_dataset_info(config)
  assert not info.train_has_labels
  assert info.num_train_examples == 2 and info.num_classes == 2
  ds = build_input_fn(config, AugmentConfig(), training=True, num_views=2,
                      global_batch_size=2)(None)
  x, y = next(iter(ds))
  assert x.shape == (2, 16, 16, 6)
  np.testing.assert_array_equal(y, np.zeros((2, 2)))


def test_all_files_bad_is_an_error(tmp_path):
  root = tmp_path / "bad"
  (root / "train" / "a").mkdir(parents=True)
  for name in ("x.jpg", "y.png"):
    (root / "train" / "a" / name).write_bytes(b"garbage")
  with pytest.raises(DataError, match="None of 2 image files checked"):
    get_dataset_info(DataConfig(dataset="image_folder", data_dir=str(root),
                                eval_split="train"))


def test_missing_empty_and_misnamed_folders(tmp_path):
  def info(root, **kwargs):
    return get_dataset_info(DataConfig(dataset="image_folder",
                                       data_dir=str(root), **kwargs))

  with pytest.raises(DataError, match="does not exist.*Expected layout"):
    info(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no split subfolders"):
    info(tmp_path / "empty")
  (tmp_path / "root" / "training" / "cat").mkdir(parents=True)
  _write(str(tmp_path / "root/training/cat/a.png"), _random_image(8, 8, 0))
  with pytest.raises(DataError, match=r"split 'train' not found.*training"):
    info(tmp_path / "root")
  (tmp_path / "root" / "test" / "cat").mkdir(parents=True)
  with pytest.raises(DataError, match="No images in .*test.*Expected layout"):
    info(tmp_path / "root", train_split="training")


def test_one_line_errors(tmp_path):
  with pytest.raises(DataError) as error:
    get_dataset_info(DataConfig(dataset="image_folder",
                                data_dir=str(tmp_path / "nowhere")))
  assert "\n" not in str(error.value)


def test_opening_a_folder_reads_a_few_files_and_decodes_none(tmp_path,
                                                              monkeypatch):
  from simclr_tf.data import encoded_image
  root = tmp_path / "many"
  (root / "train" / "a").mkdir(parents=True)
  png = tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)).numpy()
  for i in range(300):
    (root / "train" / "a" / f"{i:03d}.png").write_bytes(png)
  calls = {"inspect": 0, "decode": 0}
  inspect, decode = encoded_image.inspect, encoded_image.decode_rgb

  def counting_inspect(*args):
    calls["inspect"] += 1
    return inspect(*args)

  def counting_decode(*args):
    calls["decode"] += 1
    return decode(*args)
  monkeypatch.setattr(encoded_image, "inspect", counting_inspect)
  monkeypatch.setattr(encoded_image, "decode_rgb", counting_decode)
  registry.clear_caches()
  info = get_dataset_info(DataConfig(dataset="image_folder",
                                     data_dir=str(root), eval_split="train"))
  assert info.num_train_examples == 300
  assert calls["decode"] == 0
  assert 1 <= calls["inspect"] <= folder_layout.SAMPLE_CHECKED
  # All 300 files are 8x8, but only reading them all could prove it.
  assert info.image_shape is None
