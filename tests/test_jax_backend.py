"""The core on Keras' JAX backend, against TensorFlow and numpy.

Keras fixes its backend per process, so each check runs tests/jax_checks.py
under KERAS_BACKEND=jax and compares what it wrote with:

- numpy references (NT-Xent, LARS, the schedule) from the TF tests;
- the same model, weights and batch on TensorFlow: loss, gradients, one
  LARS train step and the BatchNorm moving statistics;
- the same step on 1 and on 2 JAX devices (`DataParallel`);
- `tf.image.sample_distorted_bounding_box` with the authors' arguments and
  the TensorFlow batched augmentation, in distribution.

Tolerances: float32 has a unit roundoff of 6e-8. A ResNet forward and
backward pass sums thousands of products per output in an order each
backend chooses (oneDNN on TensorFlow, XLA on JAX), so results agree to a
few thousand ulps, not bit for bit: 2e-4 relative in norm per tensor.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from simclr_tf.augment import host as augment
from simclr_tf import config as config_lib
from simclr_tf.models import build_simclr_model
from test_losses import numpy_nt_xent
from test_optimizers import numpy_lars_step
from test_optimizers import numpy_schedule

jax = pytest.importorskip("jax", reason="the JAX backend needs `pip install "
                          "jax` (in the test extras)")

CHECKS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "jax_checks.py")
REPO = os.path.dirname(os.path.dirname(CHECKS))
RELATIVE_TOLERANCE = 2e-4
MODEL = dict(resnet_depth=18, width_multiplier=0.125, proj_out_dim=16)
IMAGE_SIZE = 16
NUM_CLASSES = 5


def _run_jax(check, workdir, devices=1):
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  result = subprocess.run([sys.executable, CHECKS, check, str(workdir)],
                          env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  out = dict(np.load(os.path.join(workdir, f"{check}.npz")))
  assert str(out["backend"]) == "jax"
  assert not bool(out["tensorflow_imported"]), "the JAX core imported TF"
  return out


def _relative(actual, expected):
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  return np.linalg.norm(actual - expected) / max(np.linalg.norm(expected),
                                                 1e-12)


def test_loss_lars_and_schedule_on_jax_match_numpy(tmp_path):
  rng = np.random.default_rng(0)
  hidden = rng.normal(size=(12, 8)).astype(np.float32)
  weight = rng.normal(size=(6, 4)).astype(np.float32)
  gradients = rng.normal(size=(3, 6, 4)).astype(np.float32)
  steps = np.array([0, 10, 39, 40, 41, 120, 199, 200, 250])
  np.savez(tmp_path / "inputs.npz", hidden=hidden, weight=weight,
           gradients=gradients, steps=steps)
  out = _run_jax("core", tmp_path)

  per_anchor, _ = numpy_nt_xent(hidden, 0.5)
  # The authors' scale: the sum of both directions, averaged over images.
  expected_loss = 2.0 * per_anchor.mean()
  np.testing.assert_allclose(out["loss"], expected_loss, rtol=1e-5)
  w, v = weight.astype(np.float64), np.zeros_like(weight, np.float64)
  for gradient in gradients:
    w, v = numpy_lars_step(w, v, gradient, 0.3, momentum=0.9, nesterov=False,
                           weight_decay=1e-3, decay=True, adapt=True,
                           classic=True, eeta=0.001)
  assert _relative(out["lars_weight"], w) < 1e-6
  expected_schedule = [numpy_schedule(
      int(step), base_lr=0.3, batch_size=512, num_examples=10_000,
      warmup_epochs=2, total_steps=200) for step in steps]
  np.testing.assert_allclose(out["schedule"], expected_schedule, rtol=1e-5,
                             atol=1e-7)


def _model_spec(tmp_path, batch=8, weight_decay=1e-4):
  """A tiny model's weights and a batch, written for both backends."""
  keras.utils.set_random_seed(3)
  model = build_simclr_model(
      config_lib.ModelConfig(**MODEL), image_size=IMAGE_SIZE,
      num_classes=NUM_CLASSES, train_mode="pretrain",
      with_supervised_head=True, temperature=0.5)
  # Non-trivial BatchNorm parameters, so a wrong statistic shows.
  for variable in model.variables:
    if variable.path.endswith(("gamma", "beta")):
      variable.assign(np.random.default_rng(len(variable.path)).uniform(
          0.5, 1.5, variable.shape).astype(np.float32) - (
              1.0 if variable.path.endswith("beta") else 0.0))
  weights = str(tmp_path / "model.weights.h5")
  model.save_weights(weights)
  spec = dict(model=MODEL, image_size=IMAGE_SIZE, num_classes=NUM_CLASSES,
              temperature=0.5, weights=weights, learning_rate=0.5,
              weight_decay=weight_decay)
  (tmp_path / "spec.json").write_text(json.dumps(spec))
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(batch, IMAGE_SIZE, IMAGE_SIZE, 6)).astype(np.float32)
  y = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES,
                                                         batch)]
  np.savez(tmp_path / "inputs.npz", x=x, y=y)
  return spec, x, y


def _tf_model(spec):
  from simclr_tf import optimizers
  model = build_simclr_model(
      config_lib.ModelConfig(**spec["model"]), image_size=spec["image_size"],
      num_classes=spec["num_classes"], train_mode="pretrain",
      with_supervised_head=True, temperature=spec["temperature"])
  model.load_weights(spec["weights"])
  model.compile(optimizers.LARS(
      spec["learning_rate"], momentum=0.9, weight_decay=spec["weight_decay"],
      exclude_from_weight_decay=list(
          optimizers.LARS_EXCLUDE_FROM_WEIGHT_DECAY)))
  return model


def test_jax_and_tensorflow_agree_on_loss_gradients_and_one_step(tmp_path):
  spec, x, y = _model_spec(tmp_path)
  out = _run_jax("step", tmp_path)

  model = _tf_model(spec)
  with tf.GradientTape() as tape:
    outputs = model(x, training=True)
    terms = model.compute_losses(x, y, outputs)
  gradients = tape.gradient(terms["total_loss"], model.trainable_variables)
  np.testing.assert_allclose(out["loss"], terms["total_loss"].numpy(),
                             rtol=RELATIVE_TOLERANCE)
  for variable, gradient in zip(model.trainable_variables, gradients):
    error = _relative(out["grad/" + variable.path], gradient)
    assert error < RELATIVE_TOLERANCE, (variable.path, error)

  model = _tf_model(spec)
  history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False,
                      verbose=0).history
  logs = {name: values[-1] for name, values in history.items()}
  np.testing.assert_allclose(out["contrast_loss"], logs["contrast_loss"],
                             rtol=RELATIVE_TOLERANCE)
  np.testing.assert_allclose(out["supervised_loss"], logs["supervised_loss"],
                             rtol=RELATIVE_TOLERANCE)
  moved = 0
  for variable in model.variables:
    key = "after/" + variable.path
    if key not in out:
      continue
    error = _relative(out[key], variable.numpy())
    assert error < RELATIVE_TOLERANCE, (variable.path, error)
    moved += "moving_" in variable.path
  assert moved > 10, "the BatchNorm moving statistics were not compared"


def test_data_parallel_on_two_devices_equals_one_device(tmp_path):
  _model_spec(tmp_path, batch=8)
  out = _run_jax("data_parallel", tmp_path, devices=2)
  assert int(out["two_devices/variable_devices"]) == 2
  for name in ("contrast_loss", "supervised_loss", "contrast_acc"):
    np.testing.assert_allclose(out["two_devices/" + name],
                               out["one_device/" + name],
                               rtol=RELATIVE_TOLERANCE)
  compared = [key for key in out if key.startswith("one_device/after/")]
  assert any("moving_variance" in key for key in compared)
  for key in compared:
    other = key.replace("one_device/", "two_devices/")
    error = _relative(out[other], out[key])
    assert error < RELATIVE_TOLERANCE, (key, error)


def _authors_boxes(height, width, num, seed):
  """Boxes from the TF op the authors call, with their arguments."""
  image_shape = tf.constant([height, width, 3])
  whole = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])
  boxes = []
  for i in range(num):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape, whole, seed=[seed, i], min_object_covered=0.1,
        aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0), area_range=(0.08, 1.0),
        max_attempts=100, use_image_if_no_bounding_boxes=True)
    boxes.append([begin[0], begin[1], size[0], size[1]])
  return np.array(boxes, np.float64)


def test_batched_augmentation_on_jax_matches_tensorflow_in_distribution(
    tmp_path):
  shapes = [(375, 500), (480, 320)]
  num_boxes = 1500
  size = 24
  augment_config = dict(blur_kernel_fraction=0.2)
  rng = np.random.default_rng(5)
  images = rng.integers(0, 256, (32, 40, 56, 3), dtype=np.uint8)
  (tmp_path / "spec.json").write_text(json.dumps(dict(
      shapes=shapes, num_boxes=num_boxes, size=size, steps=8,
      augment=augment_config)))
  np.savez(tmp_path / "inputs.npz", images=images)
  out = _run_jax("augment", tmp_path)

  # Crop boxes: area and aspect ratio against the authors' op, two-sample
  # Kolmogorov-Smirnov. Under the same distribution p < 1e-3 happens once
  # in a thousand runs; a sampler off by a few percent fails it.
  for height, width in shapes:
    ours = out[f"boxes/{height}x{width}"].astype(np.float64)
    theirs = _authors_boxes(height, width, num_boxes, seed=11)
    assert (ours[:, 0] + ours[:, 2] <= height).all()
    assert (ours[:, 1] + ours[:, 3] <= width).all()
    for name, column in (("area", lambda b: b[:, 2] * b[:, 3]),
                         ("aspect", lambda b: b[:, 3] / b[:, 2]),
                         ("offset_y", lambda b: b[:, 0] / height)):
      result = stats.ks_2samp(column(ours), column(theirs))
      assert result.pvalue > 1e-3, (height, width, name, result)

  # Whole views: per-view statistics against the TF batched transform.
  cfg = config_lib.AugmentConfig(**augment_config)
  tf_views = np.concatenate([augment.augment_batch_views(
      images, size, cfg, num_views=2, seed=step).numpy() for step in range(8)])
  jax_views = out["views"]
  assert jax_views.shape == tf_views.shape
  for name, statistic in (
      ("mean", lambda v: v.mean(axis=(1, 2, 3))),
      ("contrast", lambda v: v.std(axis=(1, 2, 3))),
      ("colourfulness", lambda v: v.std(axis=3).mean(axis=(1, 2))),
      ("sharpness", lambda v: np.abs(np.diff(v, axis=2)).mean(
          axis=(1, 2, 3)))):
    ours = np.concatenate([statistic(jax_views[..., :3]),
                           statistic(jax_views[..., 3:])])
    theirs = np.concatenate([statistic(tf_views[..., :3]),
                             statistic(tf_views[..., 3:])])
    result = stats.ks_2samp(ours, theirs)
    assert result.pvalue > 1e-3, (name, result)
  # Stateless: the same seed and step repeat; another pipeline differs.
  np.testing.assert_array_equal(out["views_again"], jax_views[:32])
  assert np.abs(out["views_pipeline_1"] - jax_views[:32]).mean() > 0.01
  assert np.abs(jax_views[..., :3] - jax_views[..., 3:]).mean() > 0.01
