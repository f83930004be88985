"""Class-balanced, repeatable label subsets."""

import numpy as np
import pytest

from simclr_tf.data import DataError
from simclr_tf.data import select_label_subset


def _imbalanced_labels(seed=0):
  # 10 classes with 30..300 examples each, shuffled, plus unlabeled ones.
  rng = np.random.default_rng(seed)
  labels = np.concatenate([np.full(30 * (c + 1), c) for c in range(10)] +
                          [np.full(50, -1)])
  return rng.permutation(labels)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.37])
def test_fraction_is_balanced_and_sized(fraction):
  labels = _imbalanced_labels()
  picked = select_label_subset(labels, 10, fraction=fraction, seed=3)
  num_labeled = (labels >= 0).sum()
  assert len(picked) == round(fraction * num_labeled)
  assert len(np.unique(picked)) == len(picked)
  assert (labels[picked] >= 0).all()
  counts = np.bincount(labels[picked], minlength=10)
  available = np.bincount(labels[labels >= 0], minlength=10)
  # Classes that still have examples left differ by at most one; a class
  # that ran out keeps all it has, which is less than the others.
  open_classes = counts < available
  assert counts[open_classes].max() - counts[open_classes].min() <= 1, counts
  assert (counts[~open_classes] <= counts[open_classes].min()).all(), counts
  if fraction <= 0.1:
    assert counts.max() - counts.min() <= 1, counts


def test_small_classes_give_their_shortfall_to_others():
  labels = np.array([0] * 3 + [1] * 100 + [2] * 100)
  picked = select_label_subset(labels, 3, fraction=0.3, seed=0)
  counts = np.bincount(labels[picked], minlength=3)
  assert len(picked) == 61
  assert counts[0] == 3 and abs(counts[1] - counts[2]) <= 1


def test_per_class():
  labels = _imbalanced_labels()
  picked = select_label_subset(labels, 10, per_class=25, seed=0)
  np.testing.assert_array_equal(np.bincount(labels[picked], minlength=10),
                                [25] * 10)


def test_repeatable_and_seeded():
  labels = _imbalanced_labels()
  a = select_label_subset(labels, 10, fraction=0.1, seed=1)
  b = select_label_subset(labels.copy(), 10, fraction=0.1, seed=1)
  c = select_label_subset(labels, 10, fraction=0.1, seed=2)
  np.testing.assert_array_equal(a, b)
  assert set(a.tolist()) != set(c.tolist())
  # A larger fraction keeps the smaller one's examples (nested subsets).
  d = select_label_subset(labels, 10, fraction=0.2, seed=1)
  assert set(a.tolist()) <= set(d.tolist())


def test_needs_labels_and_one_setting():
  with pytest.raises(DataError, match="unlabeled"):
    select_label_subset(np.full(10, -1), 2, fraction=0.5)
  with pytest.raises(DataError, match="exactly one"):
    select_label_subset(np.zeros(10), 2, fraction=0.5, per_class=2)
