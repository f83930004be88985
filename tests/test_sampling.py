"""Evaluation caps: seeded, class-stratified samples of a class-sorted
listing, checked against the proportional shares computed here."""

import numpy as np
import pytest

from simclr_tf.evaluation import sampling


def _sorted_listing(sizes):
  """Labels as a folder lists them: class 0's examples, then class 1's..."""
  return np.repeat(np.arange(len(sizes)), sizes)


@pytest.mark.parametrize("sizes, cap", [
    ([100] * 10, 250), ([500, 30, 7, 120, 1, 64], 73),
    ([3] * 1000, 100), ([10, 20], 29)])
def test_every_class_gets_its_share_within_one_example(sizes, cap):
  labels = _sorted_listing(sizes)
  keep = sampling.capped_indices(labels, cap, seed=3)
  assert len(keep) == cap and len(set(keep.tolist())) == cap
  assert np.all(np.diff(keep) > 0)  # the listing's order
  counts = np.bincount(labels[keep], minlength=len(sizes))
  shares = cap * np.asarray(sizes) / len(labels)
  assert np.all(np.abs(counts - shares) < 1), (counts, shares)


def test_the_head_of_a_sorted_listing_is_not_what_is_kept():
  labels = _sorted_listing([100] * 10)
  keep = sampling.capped_indices(labels, 100, seed=0)
  # The first 100 would be class 0 only; every class gives 10.
  assert np.bincount(labels[keep]).tolist() == [10] * 10
  # Within a class the examples are drawn, not its first ones.
  assert not np.array_equal(keep[:10], np.arange(10))


def test_the_sample_is_seeded():
  labels = _sorted_listing([40, 60, 80])
  first = sampling.capped_indices(labels, 50, seed=1)
  np.testing.assert_array_equal(first,
                                sampling.capped_indices(labels, 50, seed=1))
  assert not np.array_equal(first, sampling.capped_indices(labels, 50,
                                                           seed=2))


def test_unlabelled_examples_give_a_uniform_sample():
  labels = np.full(10_000, -1)
  keep = sampling.capped_indices(labels, 1_000, seed=0)
  assert len(keep) == 1_000
  # Uniform over the listing: each tenth holds about a tenth of the sample
  # (binomial sd 9.5; 5 sd bounds).
  per_tenth = np.bincount(keep // 1_000, minlength=10)
  assert np.all(np.abs(per_tenth - 100) < 48), per_tenth


@pytest.mark.parametrize("cap", [None, 0, 50, 51])
def test_no_cap_or_a_cap_at_the_split_size_keeps_everything(cap):
  labels = _sorted_listing([25, 25])
  np.testing.assert_array_equal(sampling.capped_indices(labels, cap, seed=0),
                                np.arange(50))


def test_a_negative_cap_is_refused():
  with pytest.raises(ValueError, match="Received: cap=-1"):
    sampling.capped_indices([0, 1], -1, seed=0)


def test_no_label_agrees_with_the_data_sources():
  from simclr_tf.data import source
  assert sampling.NO_LABEL == source.NO_LABEL


def test_the_knn_bank_of_a_class_sorted_folder_covers_every_class(tmp_path):
  # An image folder lists its files by class; the bank, the random-init
  # BatchNorm images and the health images are read through this sample.
  import tensorflow as tf
  from simclr_tf.config import AugmentConfig, DataConfig
  from simclr_tf.data import registry
  from simclr_tf.evaluation import features

  sizes = [13, 2, 7, 1, 9]  # unequal classes
  rng = np.random.default_rng(0)
  for label, size in enumerate(sizes):
    class_dir = tmp_path / "train" / f"class_{label}"
    class_dir.mkdir(parents=True)
    for index in range(size):
      # Non-square images of mixed sizes.
      height, width = rng.integers(24, 60), rng.integers(24, 60)
      image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
      tf.io.write_file(str(class_dir / f"{index:03d}.jpg"),
                       tf.io.encode_jpeg(image))
  registry.clear_caches()
  config = DataConfig(dataset="image_folder", data_dir=str(tmp_path),
                      train_split="train", eval_split="train", image_size=16)
  cap = 10
  input_fn, count = features.split_input_fn(
      config, AugmentConfig(), split="train", batch_size=4, sample_size=cap,
      seed=5)
  assert count == cap
  labels = np.concatenate([np.argmax(one_hot, axis=-1) for _, one_hot in
                           input_fn(None).as_numpy_iterator()])
  assert len(labels) == cap
  counts = np.bincount(labels, minlength=len(sizes))
  shares = cap * np.asarray(sizes) / sum(sizes)
  assert np.all(np.abs(counts - shares) < 1), (counts, shares)
  # The head of the listing would have been class 0 only.
  assert np.count_nonzero(counts) >= 4
  # Seeded: the same seed reads the same images, another seed others.
  again, _ = features.split_input_fn(
      config, AugmentConfig(), split="train", batch_size=4, sample_size=cap,
      seed=5)
  first = np.concatenate([i for i, _ in input_fn(None).as_numpy_iterator()])
  second = np.concatenate([i for i, _ in again(None).as_numpy_iterator()])
  np.testing.assert_array_equal(first, second)
  other, _ = features.split_input_fn(
      config, AugmentConfig(), split="train", batch_size=4, sample_size=cap,
      seed=6)
  third = np.concatenate([i for i, _ in other(None).as_numpy_iterator()])
  assert not np.array_equal(first, third)
