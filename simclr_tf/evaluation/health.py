"""Label-free health signals of a contrastive representation.

Three numbers that need no labels and show a collapsing run early:

- alignment (Wang & Isola 2020): how close the two views of an image land,
  the mean of ||z1 - z2||^alpha over positive pairs of L2-normalised
  projections. 0 is perfect agreement (or collapse); at most 2^alpha.
- uniformity (Wang & Isola 2020): how evenly the projections spread over
  the sphere, log mean_{i<j} exp(-t ||z_i - z_j||^2). 0 when every
  projection is the same point (collapse); more negative is more uniform
  (for t=2 the floor is about -4 in high dimensions).
- effective rank (RankMe, Garrido et al. 2023): exp of the entropy of the
  normalised singular values of the encoder's features (N x D, not
  centred, as in the paper). 1 for features on one line; at most
  min(N, D).

A collapsed run shows alignment -> 0 with uniformity -> 0 and effective
rank -> 1. Plain numpy, so both backends use it.
"""

from typing import Dict

import numpy as np

ALIGNMENT = "alignment"
UNIFORMITY = "uniformity"
EFFECTIVE_RANK = "effective_rank"
# TensorBoard scalars are written as HEALTH_PREFIX + key.
HEALTH_PREFIX = "health/"
# Uniformity's pairwise cost is O(N^2): at most this many vectors, drawn
# with UNIFORMITY_SEED, so a run's values are comparable over time.
UNIFORMITY_MAX_VECTORS = 2048
UNIFORMITY_SEED = 0
# RankMe's epsilon, added to each normalised singular value.
RANK_EPSILON = 1e-7


def _matrix(name, values) -> np.ndarray:
  array = np.asarray(values, np.float64)
  if array.ndim != 2:
    raise ValueError(f"`{name}` must be a 2-D (N, D) array. Received: "
                     f"{name}.shape={array.shape}")
  return array


def _normalised(array: np.ndarray) -> np.ndarray:
  # A zero row stays zero rather than becoming NaN.
  norms = np.linalg.norm(array, axis=1, keepdims=True)
  return array / np.maximum(norms, 1e-12)


def alignment(z1, z2, alpha: float = 2.0) -> float:
  """Wang & Isola's alignment of positive pairs.

  Args:
    z1: (N, D) projections of the first view of N images.
    z2: (N, D) projections of their second view, row for row.
    alpha: the distance's power (the paper's default, 2).

  Returns:
    mean_i ||z1_i - z2_i||^alpha of the L2-normalised rows.

  Raises:
    ValueError: shapes that differ, an empty batch or alpha <= 0.
  """
  z1, z2 = _matrix("z1", z1), _matrix("z2", z2)
  if z1.shape != z2.shape:
    raise ValueError("`z1` and `z2` must have the same shape. Received: "
                     f"z1.shape={z1.shape}, z2.shape={z2.shape}")
  if not len(z1):
    raise ValueError("Alignment needs at least one pair. Received: 0 rows.")
  if not alpha > 0:
    raise ValueError(f"`alpha` must be positive. Received: alpha={alpha}")
  distances = np.linalg.norm(_normalised(z1) - _normalised(z2), axis=1)
  return float(np.mean(distances ** alpha))


def uniformity(z, t: float = 2.0, *,
               max_vectors: int = UNIFORMITY_MAX_VECTORS,
               seed: int = UNIFORMITY_SEED) -> float:
  """Wang & Isola's uniformity of a set of projections.

  Args:
    z: (N, D) projections, N >= 2.
    t: the Gaussian kernel's scale (the paper's default, 2).
    max_vectors: above this many rows, a random subset of this size (drawn
      with `seed`) is used: the cost is quadratic in the rows.
    seed: seed of that subset.

  Returns:
    log mean_{i<j} exp(-t ||z_i - z_j||^2) of the L2-normalised rows,
    computed with a log-sum-exp (no underflow for large t).

  Raises:
    ValueError: fewer than 2 rows, t <= 0 or max_vectors < 2.
  """
  z = _matrix("z", z)
  if len(z) < 2:
    raise ValueError("Uniformity needs at least 2 vectors. Received: "
                     f"{len(z)}.")
  if not t > 0:
    raise ValueError(f"`t` must be positive. Received: t={t}")
  if max_vectors < 2:
    raise ValueError("`max_vectors` must be at least 2. Received: "
                     f"max_vectors={max_vectors}")
  if len(z) > max_vectors:
    rows = np.random.default_rng(seed).choice(len(z), max_vectors,
                                              replace=False)
    z = z[np.sort(rows)]
  z = _normalised(z)
  squared = np.sum(z * z, axis=1)
  # ||a - b||^2 = |a|^2 + |b|^2 - 2 a.b; rounding can make it slightly < 0.
  distances = np.maximum(squared[:, None] + squared[None, :] - 2 * z @ z.T,
                         0.0)
  upper = -t * distances[np.triu_indices(len(z), k=1)]
  peak = np.max(upper)
  return float(peak + np.log(np.mean(np.exp(upper - peak))))


def effective_rank(h, epsilon: float = RANK_EPSILON) -> float:
  """RankMe: the effective rank of a feature matrix.

  Args:
    h: (N, D) features (the encoder's output), used as they are: RankMe
      does not centre them.
    epsilon: added to each normalised singular value (the paper's epsilon).

  Returns:
    exp(-sum_k p_k log p_k), p_k = s_k / sum(s) + epsilon over the
    min(N, D) singular values s_k of h; 1 for rank-1 features, 0 for
    all-zero features (no spectrum) and NaN for non-finite ones (a
    diverged run is reported, not raised on).

  Raises:
    ValueError: an empty matrix.
  """
  h = _matrix("h", h)
  if not h.size:
    raise ValueError("Effective rank needs a non-empty matrix. Received: "
                     f"h.shape={h.shape}")
  if not np.all(np.isfinite(h)):
    return float("nan")
  singular = np.linalg.svd(h, compute_uv=False)
  total = np.sum(singular)
  if not total > 0:
    return 0.0
  p = singular / total + epsilon
  return float(np.exp(-np.sum(p * np.log(p))))


def signals(features, projections_1, projections_2) -> Dict[str, float]:
  """All three signals of one measurement.

  Args:
    features: (N, D) encoder features of un-augmented images.
    projections_1: (M, d) projection-head outputs of one augmented view of
      M images.
    projections_2: (M, d) those of a second view of the same M images.

  Returns:
    {ALIGNMENT, UNIFORMITY (of the first views), EFFECTIVE_RANK}.
  """
  return {ALIGNMENT: alignment(projections_1, projections_2),
          UNIFORMITY: uniformity(projections_1),
          EFFECTIVE_RANK: effective_rank(features)}


def describe(results: Dict[str, float], feature_dim: int = 0) -> str:
  """One line for the console: the three signals.

  Args:
    results: what `signals` returned.
    feature_dim: the features' width, shown beside the rank; 0 omits it.

  Returns:
    A line like "alignment 0.412  uniformity -3.21  effective rank 41.3".
  """
  rank = f"effective rank {results[EFFECTIVE_RANK]:.1f}"
  if feature_dim:
    rank += f" (of {feature_dim})"
  return (f"alignment {results[ALIGNMENT]:.3f}  uniformity "
          f"{results[UNIFORMITY]:.3f}  {rank}")
