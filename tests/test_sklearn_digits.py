"""The built-in sklearn_digits dataset: scikit-learn's digits, a fixed split,
read offline through tf.data and the JAX host path."""

import hashlib
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits

from simclr_tf.config import AugmentConfig
from simclr_tf.config import DataConfig
from simclr_tf.data import DataError
from simclr_tf.data import build_input_fn
from simclr_tf.data import digits_data
from simclr_tf.data import get_dataset_info
from simclr_tf.data import host_batches
from simclr_tf.data import registry
from simclr_tf.data import sklearn_digits

# The sklearn indices of the test split, pinned: the split must never change.
TEST_INDICES_SHA256 = (
    "b4fc04a9034d7af712e7eb369aa449d4a4f9d10906ec8465e5d382701c32cc48")


@pytest.fixture(scope="module")
def digits():
  return load_digits()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _config(data_dir, **kwargs):
  values = dict(dataset="sklearn_digits", data_dir=data_dir, image_size=16)
  values.update(kwargs)
  return DataConfig(**values)


def _reference_test_indices(targets):
  # The documented rule, written out with Python integers: sort by
  # (label, index); position p is a test example when floor((p+1)*360/N)
  # passes an integer.
  order = sorted(range(len(targets)), key=lambda i: (int(targets[i]), i))
  total = len(targets)
  return sorted(i for p, i in enumerate(order)
                if (p + 1) * 360 // total > p * 360 // total)


def test_split_sizes_disjoint_and_covering(digits):
  train = digits_data.indices("train")
  test = digits_data.indices("test")
  assert (len(train), len(test)) == (1437, 360)
  assert digits_data.num_examples("train") == 1437
  assert digits_data.num_examples("test") == 360
  assert not set(train) & set(test)
  assert sorted(set(train) | set(test)) == list(range(len(digits.target)))


def test_split_is_the_documented_rule_and_never_changes(digits):
  test = digits_data.indices("test")
  assert list(test) == _reference_test_indices(digits.target)
  digest = hashlib.sha256(np.asarray(test, np.int64).tobytes()).hexdigest()
  assert digest == TEST_INDICES_SHA256


def test_split_is_stratified(digits):
  counts = np.bincount(digits.target, minlength=10)
  test_counts = np.bincount(digits.target[digits_data.indices("test")],
                            minlength=10)
  proportional = counts * 360 / len(digits.target)
  assert np.all(np.abs(test_counts - proportional) <= 1), (
      test_counts, proportional)
  assert test_counts.sum() == 360


@pytest.mark.parametrize("split", ["train", "test"])
def test_pixels_and_labels_are_sklearns(digits, split):
  images, labels = digits_data.load(split)
  rows = digits_data.indices(split)
  assert images.dtype == np.uint8 and images.shape == (len(rows), 8, 8, 3)
  expected = np.round(digits.data[rows] * 255.0 / 16.0).reshape(-1, 8, 8)
  for channel in range(3):
    np.testing.assert_array_equal(images[..., channel], expected)
  np.testing.assert_array_equal(labels, digits.target[rows])
  assert images.max() == 255 and images.min() == 0
  # The one tie of the scaling: level 8 is 127.5, stored as 128.
  assert 128 in images[digits.data[rows].reshape(-1, 8, 8) == 8]


def test_every_call_gives_the_same_images():
  first_images, first_labels = digits_data.load("train")
  digits_data._all_examples.cache_clear()  # Read scikit-learn's data again.
  again_images, again_labels = digits_data.load("train")
  np.testing.assert_array_equal(first_images, again_images)
  np.testing.assert_array_equal(first_labels, again_labels)


def test_unknown_split_is_a_clear_error(data_dir):
  with pytest.raises(DataError, match=r"sklearn_digits has splits train and "
                     r"test .*Received: split='validation'"):
    digits_data.load("validation")
  with pytest.raises(DataError, match="split='val'"):
    host_batches.load_split(_config(data_dir), "val")
  with pytest.raises(DataError, match="has no split 'validation'.*test, "
                     "train"):
    get_dataset_info(_config(data_dir, eval_split="validation"))


def test_missing_scikit_learn_names_the_install_command(monkeypatch):
  digits_data._all_examples.cache_clear()
  monkeypatch.setitem(sys.modules, "sklearn", None)  # import fails.
  try:
    with pytest.raises(DataError, match=r"`pip install scikit-learn`"):
      digits_data.load("train")
  finally:
    digits_data._all_examples.cache_clear()


def test_dataset_info_is_what_the_program_needs(data_dir):
  registry.clear_caches()
  info = get_dataset_info(_config(data_dir))
  assert info.num_classes == 10
  assert (info.num_train_examples, info.num_eval_examples) == (1437, 360)
  assert info.image_shape == (8, 8, 3)
  assert info.train_has_labels
  # Offline and in data_dir, as synthetic_shapes.
  builder = sklearn_digits.prepare(data_dir)
  assert str(builder.data_dir).startswith(data_dir)
  assert builder.info.features["label"].names == [str(d) for d in range(10)]


def test_the_tfds_copy_holds_the_same_examples(data_dir):
  builder = sklearn_digits.prepare(data_dir)
  for split in ("train", "test"):
    stored = [(ex["image"], int(ex["label"]))
              for ex in builder.as_dataset(split=split).as_numpy_iterator()]
    images, labels = digits_data.load(split)
    def rows(pairs):
      return sorted(image.tobytes() + bytes([label]) for image, label in pairs)
    assert rows(stored) == rows(zip(images, labels))


def test_tf_data_batches_have_the_requested_size(data_dir, digits):
  registry.clear_caches()
  config = _config(data_dir)
  # The host's part of training (crops resized to image_size); on_device
  # leaves the colour distortion out, which is what makes this test slow.
  train = build_input_fn(config, AugmentConfig(on_device=True),
                         training=True, num_views=2, global_batch_size=16,
                         seed=0)(None)
  images, labels = next(iter(train))
  assert images.shape == (16, 16, 16, 6) and labels.shape == (16, 10)
  assert images.dtype == np.uint8
  assert np.all(labels.numpy().sum(axis=1) == 1)
  evaluation = build_input_fn(config, AugmentConfig(), training=False,
                              num_views=1, global_batch_size=100)(None)
  batches = [(x.numpy(), y.numpy()) for x, y in evaluation]
  images = np.concatenate([x for x, _ in batches])
  labels = np.concatenate([y for _, y in batches]).argmax(axis=1)
  assert images.shape == (360, 16, 16, 3)
  assert 0.0 <= images.min() and images.max() <= 1.0
  np.testing.assert_array_equal(
      np.bincount(labels, minlength=10),
      np.bincount(digits.target[digits_data.indices("test")], minlength=10))
  # Real strokes: ink covers part of each image, not all of it.
  ink = (images.mean(axis=-1) > 0.5).mean(axis=(1, 2))
  assert 0.05 < ink.mean() < 0.6


def test_host_batches_serve_the_same_split(data_dir):
  cfg = _config(data_dir)
  split = host_batches.load_split(cfg, "test")
  images, labels = digits_data.load("test")
  assert split.num_classes == 10 and len(split) == 360
  np.testing.assert_array_equal(split.images, images)
  np.testing.assert_array_equal(split.labels, labels)
  batches = host_batches.Batches(split, 64, 16, AugmentConfig(),
                                 training=False, num_classes=10)
  x, y, weights = batches[0]
  assert x.shape == (64, 16, 16, 3) and y.shape == (64, 10)
  assert np.all(weights == 1.0)


def test_an_unknown_dataset_offers_it():
  with pytest.raises(DataError, match="sklearn_digits.*Did you mean "
                     "sklearn_digits"):
    get_dataset_info(DataConfig(dataset="sklearn_digit"))
