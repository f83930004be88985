"""Seeded subsets of a split's examples for the evaluation caps.

Image folders and many tfds splits list their examples sorted by class, so
"the first N" of a split covers only its first few classes. A cap here is a
seeded sample instead: class-stratified where the examples have labels (each
class gets its share of the cap, within one example), uniform otherwise.
"""

import numpy as np

# `data.source.NO_LABEL`, spelled out so that the JAX trainer's host path
# can sample without importing TensorFlow (tests/test_sampling.py checks
# that the two agree).
NO_LABEL = -1


def capped_indices(labels, cap, *, seed: int) -> np.ndarray:
  """Indices of a seeded, class-stratified sample of at most `cap` examples.

  Each class c of n_c examples out of N gets floor(cap * n_c / N) examples,
  and the examples left over go one each to the classes with the largest
  remainders (ties broken by the seed), so every class is within one example
  of its proportional share. Examples without a label (`NO_LABEL`) make the
  sample uniform over all examples.

  Args:
    labels: int array (N,) of class ids, `NO_LABEL` where unlabelled.
    cap: the most examples to keep; None or 0 keeps all.
    seed: the sample's seed.

  Returns:
    Sorted int64 indices into `labels` (the listing's order is kept).
  """
  labels = np.asarray(labels).reshape(-1)
  total = labels.shape[0]
  if cap is not None and cap < 0:
    raise ValueError(f"`cap` must be positive or None. Received: cap={cap}")
  if not cap or cap >= total:
    return np.arange(total, dtype=np.int64)
  rng = np.random.default_rng(seed)
  if np.any(labels == NO_LABEL):
    return np.sort(rng.choice(total, size=cap, replace=False)).astype(
        np.int64)
  classes, counts = np.unique(labels, return_counts=True)
  shares = cap * counts / total
  quotas = np.floor(shares).astype(np.int64)
  left = cap - int(quotas.sum())
  if left:
    # Largest remainder first; a random key breaks ties reproducibly.
    order = np.lexsort((rng.random(len(classes)), -(shares - quotas)))
    quotas[order[:left]] += 1
  chosen = [rng.choice(np.flatnonzero(labels == label), size=quota,
                       replace=False)
            for label, quota in zip(classes, quotas) if quota]
  return np.sort(np.concatenate(chosen)).astype(np.int64)
