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
