"""Class-balanced, repeatable label subsets for semi-supervised fine-tuning.

For ImageNet, the paper's 1% and 10% subsets are the tfds datasets
`imagenet2012_subset/1pct` and `/10pct` (the official image lists); use them
rather than `label_fraction` to compare with published numbers.
"""

import logging
from typing import Optional

import numpy as np

from simclr_tf.data.errors import DataError


def select_label_subset(labels: np.ndarray, num_classes: int, *,
                        fraction: Optional[float] = None,
                        per_class: Optional[int] = None,
                        seed: int = 0) -> np.ndarray:
  """Picks a class-balanced subset of the labeled examples.

  With `fraction`, `round(fraction * num_labeled)` examples are kept and shared
  as evenly as the classes allow: per-class counts differ by at most one unless
  a class runs out of examples (its shortfall goes to the others). With
  `per_class`, up to that many of each class. Unlabeled examples (label < 0)
  are never picked.

  Args:
    labels: int array (N,) of class ids; negative means unlabeled.
    num_classes: number of classes.
    fraction: fraction of the labeled examples to keep, in (0, 1].
    per_class: examples to keep per class.
    seed: the same seed and labels give the same subset.

  Returns:
    Sorted int64 array of the kept example indices.

  Raises:
    DataError: no labeled examples, or neither/both of fraction and per_class.
  """
  if (fraction is None) == (per_class is None):
    raise DataError("Set exactly one of label_fraction and labels_per_class. "
                    f"Received: label_fraction={fraction}, "
                    f"labels_per_class={per_class}")
  labels = np.asarray(labels).astype(np.int64)
  labeled = labels >= 0
  if not labeled.any():
    raise DataError("label_fraction/labels_per_class need a labeled training "
                    "split, but every example of it is unlabeled.")
  rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
  # A fixed random order within each class; the subset is its head.
  by_class = []
  for c in range(num_classes):
    members = np.nonzero(labels == c)[0]
    by_class.append(members[rng.permutation(len(members))])
  available = np.array([len(m) for m in by_class])
  if per_class is not None:
    quota = np.minimum(available, per_class)
    if (available < per_class).any():
      logging.warning("labels_per_class=%d: %d classes have fewer examples "
                      "and keep all they have.", per_class,
                      int((available < per_class).sum()))
  else:
    total = int(round(fraction * labeled.sum()))
    total = max(total, 1)
    quota = _balanced_quota(total, available, rng)
  picked = np.concatenate([m[:q] for m, q in zip(by_class, quota)])
  return np.sort(picked).astype(np.int64)


def _balanced_quota(total: int, available: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
  """Splits `total` over classes as evenly as their sizes allow."""
  quota = np.zeros_like(available)
  open_classes = available > 0
  remaining = total
  while remaining > 0 and open_classes.any():
    idx = np.nonzero(open_classes)[0]
    share, extra = divmod(remaining, len(idx))
    give = np.full(len(idx), share)
    # Which classes get the one extra example is random but seeded.
    give[rng.permutation(len(idx))[:extra]] += 1
    give = np.minimum(give, available[idx] - quota[idx])
    quota[idx] += give
    remaining -= int(give.sum())
    open_classes = quota < available
  return quota
