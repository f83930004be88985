"""The paper's linear probe, its baselines and tools/linear_probe.py."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from sklearn import linear_model
from sklearn import model_selection

from simclr_tf.data import shapes_render
from simclr_tf.evaluation import baselines
from simclr_tf.evaluation import linear_probe

import command_line

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blobs(seed, n, num_classes=3, dim=6, spread=2.5):
  rng = np.random.default_rng(seed)
  means = np.random.default_rng(99).normal(size=(num_classes, dim))
  labels = rng.integers(0, num_classes, n)
  return means[labels] + spread * rng.normal(size=(n, dim)), labels


def test_the_grid_is_the_papers():
  grid = np.array(linear_probe.PAPER_STRENGTHS)
  assert len(grid) == 45
  np.testing.assert_allclose(grid[[0, -1]], [1e-6, 1e5])
  np.testing.assert_allclose(np.diff(np.log10(grid)), 11 / 44)


def test_c_makes_sklearn_minimise_mean_loss_plus_half_strength_norm():
  # At the optimum of mean CE + (strength / 2) ||W||^2 (bias unpenalised)
  # the gradient is zero: X^T (P - Y) / n + strength * W = 0.
  features, labels = _blobs(0, 200)
  strength = 0.05
  model = linear_model.LogisticRegression(
      C=linear_probe.strength_to_c(strength, 200), tol=1e-10,
      max_iter=10000).fit(features, labels)
  logits = features @ model.coef_.T + model.intercept_
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  one_hot = np.eye(3)[labels]
  gradient = features.T @ (probs - one_hot) / 200 + strength * model.coef_.T
  np.testing.assert_allclose(gradient, 0, atol=1e-6)
  assert np.abs(model.coef_).max() > 1e-2  # not a trivial solution


def test_probe_equals_a_direct_sklearn_grid_search():
  # 8 classes, so that top-5 is not all classes (with 3 it is 1 always).
  train_x, train_y = _blobs(1, 150, num_classes=8, spread=1.0)
  test_x, test_y = _blobs(2, 80, num_classes=8, spread=1.0)
  strengths = [1e-4, 1e-2, 1e-1, 1.0, 10.0]
  result = linear_probe.run_probe(train_x, train_y, test_x, test_y,
                                  strengths=strengths, seed=3)
  # The same protocol written out with scikit-learn directly.
  fit_x, held_x, fit_y, held_y = model_selection.train_test_split(
      train_x, train_y, test_size=0.2, random_state=3, stratify=train_y)
  held = {}
  for strength in strengths:
    model = linear_model.LogisticRegression(
        C=1 / (strength * len(fit_y)), max_iter=1000).fit(fit_x, fit_y)
    held[strength] = model.score(held_x, held_y)
  best = max(held.values())
  chosen = max(s for s in strengths if held[s] == best)  # ties: stronger
  final = linear_model.LogisticRegression(
      C=1 / (chosen * 150), max_iter=1000).fit(train_x, train_y)
  assert result["strength"] == chosen
  assert result["C"] == pytest.approx(1 / (chosen * 150))
  assert result["top_1"] == final.score(test_x, test_y)
  top_5 = np.argsort(-final.predict_proba(test_x), axis=1)[:, :5]
  assert result["top_5"] == np.mean((top_5 == test_y[:, None]).any(axis=1))
  assert result["top_1"] < result["top_5"] < 1.0  # both informative
  assert result["holdout_top_1"] == best
  assert 0.4 < result["top_1"] < 1.0  # learnable, not trivial
  assert (result["num_train"], result["num_holdout"],
          result["num_test"]) == (150, 30, 80)


def test_probe_leaves_out_unlabeled_and_refuses_one_class():
  train_x, train_y = _blobs(1, 60)
  test_x, test_y = _blobs(2, 20)
  train_y = train_y.copy()
  train_y[:10] = -1
  result = linear_probe.run_probe(train_x, train_y, test_x, test_y,
                                  strengths=[1.0])
  assert result["num_train"] == 50
  with pytest.raises(ValueError, match="at least 2 classes"):
    linear_probe.run_probe(train_x, np.zeros(60, int), test_x, test_y,
                           strengths=[1.0])


def test_batch_norm_statistics_are_the_average_over_training_batches():
  conv = keras.layers.Conv2D(4, 3, use_bias=False)
  norm = keras.layers.BatchNormalization(momentum=0.9)
  model = keras.Sequential([keras.Input((8, 8, 3)), conv, norm])
  rng = np.random.default_rng(0)
  batches = [rng.uniform(size=(5, 8, 8, 3)).astype("float32")
             for _ in range(3)]
  seen = baselines.set_batch_norm_statistics(model, batches)
  assert seen == 15
  activations = [np.asarray(conv(batch)) for batch in batches]
  np.testing.assert_allclose(
      norm.moving_mean.numpy(),
      np.mean([a.mean(axis=(0, 1, 2)) for a in activations], axis=0),
      rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
      norm.moving_variance.numpy(),
      np.mean([a.var(axis=(0, 1, 2)) for a in activations], axis=0),
      rtol=1e-3)
  assert norm.momentum == 0.9  # restored


def _tool(args):
  return subprocess.run(
      [sys.executable, "-m", "tools.linear_probe"] + args,
      capture_output=True, text=True, cwd=REPO, timeout=300,
      env=dict(os.environ, PYTHONPATH=REPO))


def test_tool_probes_raw_pixels_and_writes_json(tmp_path):
  output = tmp_path / "probe.json"
  result = _tool([
      "--baseline=raw_pixels", "--image_size=8", "--dataset=synthetic_shapes",
      f"--data_dir={tmp_path}",
      "--synthetic_train_examples=80", "--synthetic_test_examples=40",
      "--num_strengths=3", "--min_strength=1e-3", "--max_strength=1",
      f"--output={output}"])
  assert result.returncode == 0, result.stderr[-2000:]
  saved = json.loads(output.read_text())
  assert saved["feature_dim"] == 8 * 8 * 3
  assert saved["grid_size"] == 3 and saved["num_test"] == 40
  # The strength is one of the grid's 3: 1e-3, 10^-1.5 and 1.
  grid = [float(v) for v in np.logspace(-3, 0, 3)]
  assert any(saved["strength"] == pytest.approx(v, rel=1e-12) for v in grid)
  assert len(saved["holdout_top_1_by_strength"]) == 3
  assert 0 <= saved["top_1"] <= saved["top_5"] <= 1
  # Its test top-1 is that of an independent scikit-learn fit with that
  # strength on the dataset's own pixels (8 px at 8 px: the evaluation
  # transform leaves them as they are).
  def pixels(images):
    # uint8 to [0, 1] as tf.image.convert_image_dtype does it: times
    # 1/255 in float32 (dividing by 255 differs in the last bit).
    return (images.astype(np.float32) * np.float32(1 / 255)).reshape(
        len(images), -1).astype(np.float64)
  train_images, train_labels = shapes_render.render_shapes(80, 8, 0,
                                                           stream=0)
  test_images, test_labels = shapes_render.render_shapes(40, 8, 0, stream=1)
  reference = linear_model.LogisticRegression(
      C=1.0 / (saved["strength"] * 80), solver="lbfgs", max_iter=1000).fit(
          pixels(train_images), train_labels)
  assert saved["top_1"] == np.mean(
      reference.predict(pixels(test_images)) == test_labels)
  assert "raw pixels: test top-1" in result.stdout


def test_tool_needs_a_checkpoint_for_random_init(tmp_path):
  result = _tool(["--baseline=random_init",
                  f"--output={tmp_path / 'x.json'}"])
  assert command_line.one_error_line(result, "linear_probe") == (
      "linear_probe: error: --checkpoint is required (the model, or for "
      "--baseline=random_init its architecture).")
