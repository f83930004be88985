"""The paper's linear probe on frozen features (SimCLR appendix B.8).

An l2-regularised multinomial logistic regression fitted with L-BFGS
(scikit-learn's `LogisticRegression`). The regularisation strength is chosen
from 45 log-spaced values between 1e-6 and 1e5 by accuracy on a held-out part
of the train split; the model is then refitted on the whole train split and
scored on the test split.

The strength lambda weighs the penalty against the MEAN cross-entropy,

    (1 / n) * sum_i loss_i + (lambda / 2) * ||w||^2,

while scikit-learn minimises `0.5 * ||w||^2 + C * sum_i loss_i`; dividing by
C * n shows the two are the same for C = 1 / (lambda * n). So one lambda is a
different C for the held-out fit and the refit (n differs); both are
reported.

This module (and the tools) are the only ones that import scikit-learn.
"""

import time
from typing import Dict, Optional, Sequence

import numpy as np
from sklearn import linear_model
from sklearn import model_selection
import threadpoolctl

# Appendix B.8: 45 logarithmically spaced values between 1e-6 and 1e5.
PAPER_STRENGTHS = tuple(float(value) for value in np.logspace(-6, 5, 45))
TOP_1 = "top_1"
TOP_5 = "top_5"


def strength_to_c(strength: float, num_examples: int) -> float:
  """scikit-learn's C for l2 strength `strength` on `num_examples`."""
  return 1.0 / (strength * num_examples)


def _labeled(features, labels):
  features = np.asarray(features, np.float64).reshape(len(labels), -1)
  labels = np.asarray(labels)
  keep = labels >= 0
  return features[keep], labels[keep]


def fit_logistic_regression(features, labels, *, strength, max_iter=1000):
  """One L-BFGS multinomial logistic-regression fit.

  Args:
    features: (n, d) features.
    labels: (n,) class ids.
    strength: l2 strength lambda on the mean loss (see the module doc).
    max_iter: L-BFGS iterations at most.

  Returns:
    The fitted `sklearn.linear_model.LogisticRegression`.
  """
  model = linear_model.LogisticRegression(
      C=strength_to_c(strength, len(labels)), l1_ratio=0.0, solver="lbfgs",
      max_iter=max_iter)
  return model.fit(features, labels)


def top_k_accuracy(model, features, labels) -> Dict[str, float]:
  """Top-1 and top-5 accuracy; tied scores rank the lower class first."""
  scores = model.decision_function(features)
  if scores.ndim == 1:  # two classes: one score for classes_[1]
    scores = np.stack([-scores, scores], axis=1)
  ranked = model.classes_[np.argsort(-scores, axis=1, kind="stable")]
  labels = np.asarray(labels)[:, None]
  return {TOP_1: float(np.mean(ranked[:, 0] == labels[:, 0])),
          TOP_5: float(np.mean((ranked[:, :5] == labels).any(axis=1)))}


def run_probe(train_features, train_labels, test_features, test_labels, *,
              strengths: Sequence[float] = PAPER_STRENGTHS,
              holdout_fraction: float = 0.2, seed: int = 0,
              max_iter: int = 1000, warm_start: bool = True,
              log=None) -> Dict:
  """Chooses the strength on held-out train data, refits, scores the test.

  Unlabeled examples (negative ids) are left out. The held-out part is a
  class-stratified `holdout_fraction` of the train split
  (`sklearn.model_selection.train_test_split`, `random_state=seed`). Ties in
  held-out accuracy go to the larger strength (the simpler model).

  Args:
    train_features, train_labels: the train split's features and ids.
    test_features, test_labels: the test split's.
    strengths: the grid of l2 strengths lambda.
    holdout_fraction: share of the train split held out for the choice.
    seed: seed of the held-out split.
    max_iter: L-BFGS iterations per fit.
    warm_start: start each held-out fit from the previous strength's
      solution (same optimum, fewer iterations).
    log: function taking one line, or None.

  Returns:
    A JSON-ready dict: top_1, top_5 (test), strength, C (of the refit),
    holdout C, holdout accuracies per strength, sizes and seconds.

  Raises:
    ValueError: too few labeled examples or classes, or a bad argument.
  """
  if not 0 < holdout_fraction < 1:
    raise ValueError("`holdout_fraction` must be in (0, 1). Received: "
                     f"holdout_fraction={holdout_fraction}")
  if not strengths or min(strengths) <= 0:
    raise ValueError("`strengths` must be positive numbers. Received: "
                     f"strengths={list(strengths)}")
  # One BLAS thread: these products are small, and OpenBLAS' spinning
  # threads beside TensorFlow's on a busy CPU made each fit minutes long
  # (measured on a shared 2-core machine).
  with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
    return _run_probe(train_features, train_labels, test_features,
                      test_labels, strengths=strengths,
                      holdout_fraction=holdout_fraction, seed=seed,
                      max_iter=max_iter, warm_start=warm_start, log=log)


def _run_probe(train_features, train_labels, test_features, test_labels, *,
               strengths, holdout_fraction, seed, max_iter, warm_start, log):
  start = time.time()
  train_x, train_y = _labeled(train_features, train_labels)
  test_x, test_y = _labeled(test_features, test_labels)
  if len(np.unique(train_y)) < 2 or not len(test_y):
    raise ValueError("The linear probe needs labeled train examples of at "
                     "least 2 classes and labeled test examples. Received: "
                     f"{len(train_y)} train examples of "
                     f"{len(np.unique(train_y))} classes, {len(test_y)} "
                     "test examples.")
  fit_x, held_x, fit_y, held_y = model_selection.train_test_split(
      train_x, train_y, test_size=holdout_fraction, random_state=seed,
      stratify=train_y)
  held_out = []
  # From the strongest penalty to the weakest, each fit starting from the
  # previous solution: the optimum is unique (strictly convex), so this
  # changes only how fast L-BFGS gets there (many times faster at the weak
  # end, where a cold start needs hundreds of iterations).
  model = linear_model.LogisticRegression(
      l1_ratio=0.0, solver="lbfgs", max_iter=max_iter,
      warm_start=warm_start)
  for strength in sorted(strengths, reverse=True):
    model.set_params(C=strength_to_c(strength, len(fit_y)))
    model.fit(fit_x, fit_y)
    accuracy = top_k_accuracy(model, held_x, held_y)[TOP_1]
    held_out.append((strength, accuracy))
    if log:
      log(f"probe: strength {strength:.3g} (C "
          f"{strength_to_c(strength, len(fit_y)):.3g}): held-out top-1 "
          f"{100 * accuracy:.2f}%")
  best_strength, best_accuracy = max(held_out, key=lambda item: item[1])
  model = fit_logistic_regression(train_x, train_y, strength=best_strength,
                                  max_iter=max_iter)
  result = top_k_accuracy(model, test_x, test_y)
  result.update(
      strength=best_strength, C=strength_to_c(best_strength, len(train_y)),
      holdout_C=strength_to_c(best_strength, len(fit_y)),
      holdout_top_1=best_accuracy,
      holdout_top_1_by_strength={f"{s:.6g}": a for s, a in held_out},
      num_train=int(len(train_y)), num_holdout=int(len(held_y)),
      num_test=int(len(test_y)), feature_dim=int(train_x.shape[1]),
      grid_size=len(held_out), seconds=time.time() - start)
  return result


def format_result(name: str, result: Dict, width: Optional[int] = 14) -> str:
  """One line: name, test top-1 / top-5, chosen strength and C."""
  return (f"{name:<{width}} top-1 {100 * result[TOP_1]:6.2f}%  top-5 "
          f"{100 * result[TOP_5]:6.2f}%  (l2 strength {result['strength']:.3g},"
          f" C {result['C']:.3g}, {result['feature_dim']} features)")
