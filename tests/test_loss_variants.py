"""The paper's Table 2 loss variants against per-anchor numpy references.

`losses.pretraining_loss` with loss_type nt_logistic and margin_triplet, with
and without semi-hard negative mining, on 1 replica and on 2 (two logical
CPU devices under MirroredStrategy, from conftest), plus the settings' checks
and a short `fit` of the model with margin_triplet.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf import losses
from simclr_tf import optimizers
from simclr_tf.models import simclr

from command_line import config_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = [("nt_logistic", False), ("nt_logistic", True),
            ("margin_triplet", False), ("margin_triplet", True)]


def _log_sigmoid(x):
  return -np.log1p(np.exp(-x)) if x >= 0 else x - np.log1p(np.exp(x))


def numpy_variant(hidden, loss_type, temperature, semihard, margin,
                  hidden_norm=True):
  """Table 2 (arXiv:2002.05709) anchor by anchor, in float64 loops.

  For anchor i of the 2N views, the positive is the other view of its image
  and the negatives are the 2N - 2 remaining views. Each (anchor, negative)
  triplet's loss is the negated Table 2 "negative loss"; an anchor's loss is
  the mean over the negatives it uses. Semi-hard (section 5.1): negatives
  less similar than the positive and, for the margin loss, inside the
  margin; if none, the single least similar negative.

  Returns:
    (per-anchor losses (2N,), number of anchors that used the fallback,
    the smallest distance of any similarity from a mining boundary).
  """
  z = np.asarray(hidden, np.float64)
  if hidden_norm:
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
  two_n = z.shape[0]
  n = two_n // 2
  per_anchor = np.zeros(two_n)
  fallbacks = 0
  closest_to_boundary = np.inf
  for i in range(two_n):
    positive = (i + n) % two_n
    s_pos = float(z[i] @ z[positive])
    negatives = [k for k in range(two_n) if k not in (i, positive)]
    chosen = []
    for k in negatives:
      s_neg = float(z[i] @ z[k])
      closest_to_boundary = min(closest_to_boundary, abs(s_neg - s_pos))
      if loss_type == "nt_logistic":
        inside = s_neg < s_pos
      else:
        closest_to_boundary = min(closest_to_boundary,
                                  abs(s_neg - (s_pos - margin)))
        inside = s_pos - margin < s_neg < s_pos
      if inside or not semihard:
        chosen.append(k)
    if not chosen:
      fallbacks += 1
      chosen = [min(negatives, key=lambda k: float(z[i] @ z[k]))]
    terms = []
    for k in chosen:
      s_neg = float(z[i] @ z[k])
      if loss_type == "nt_logistic":
        terms.append(-(_log_sigmoid(s_pos / temperature) +
                       _log_sigmoid(-s_neg / temperature)))
      else:
        terms.append(max(s_neg - s_pos + margin, 0.0))
    per_anchor[i] = sum(terms) / len(terms)
  return per_anchor, fallbacks, closest_to_boundary


def _embeddings(seed, n=8, dim=5):
  """Random views; image 0's second view opposes its first, so that anchor
  has every negative closer than its positive (the mining fallback)."""
  rng = np.random.default_rng(seed)
  view1 = rng.normal(size=(n, dim))
  view2 = view1 + rng.normal(scale=0.8, size=(n, dim))
  view2[0] = -view1[0]
  return np.concatenate([view1, view2]).astype(np.float32)


def _check_reference_is_well_posed(hidden, loss_type, temperature,
                                   semihard, margin):
  per_anchor, fallbacks, gap = numpy_variant(hidden, loss_type, temperature,
                                             semihard, margin)
  # float32 and float64 must agree on which negatives are mined.
  assert gap > 1e-4, gap
  if semihard:
    assert 1 <= fallbacks < len(per_anchor), fallbacks
  return per_anchor


@pytest.mark.parametrize("loss_type, semihard", VARIANTS)
@pytest.mark.parametrize("temperature, margin", [(0.2, 0.4), (1.0, 0.8)])
def test_one_replica_matches_numpy(loss_type, semihard, temperature, margin):
  hidden = _embeddings(seed=int(temperature * 10) + semihard)
  per_anchor = _check_reference_is_well_posed(hidden, loss_type,
                                              temperature, semihard, margin)
  loss, logits_ab, labels = losses.pretraining_loss(
      tf.constant(hidden), loss_type=loss_type, temperature=temperature,
      hidden_norm=True, semihard_negatives=semihard, margin=margin)
  n = len(hidden) // 2
  # The same scale as NT-Xent's: per image, both directions summed, then
  # averaged over images.
  np.testing.assert_allclose(float(loss),
                             np.mean(per_anchor[:n] + per_anchor[n:]),
                             rtol=1e-5, atol=1e-7)
  # The metrics' inputs are NT-Xent's: view-1 x view-2 similarities / tau.
  z = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
  np.testing.assert_allclose(logits_ab, z[:n] @ z[n:].T / temperature,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.argmax(labels, 1), np.arange(n))
  assert labels.shape == (n, 2 * n)


def test_mining_changes_the_loss_and_unnormalised_rows_work():
  hidden = _embeddings(seed=11) * 0.4
  values = {}
  for loss_type, semihard in VARIANTS:
    per_anchor, _, gap = numpy_variant(hidden, loss_type, 0.5, semihard, 0.4,
                                       hidden_norm=False)
    assert gap > 1e-4
    loss, _, _ = losses.pretraining_loss(
        tf.constant(hidden), loss_type=loss_type, temperature=0.5,
        hidden_norm=False, semihard_negatives=semihard, margin=0.4)
    np.testing.assert_allclose(float(loss), 2 * per_anchor.mean(), rtol=1e-5)
    values[loss_type, semihard] = float(loss)
  assert values["nt_logistic", True] != values["nt_logistic", False]
  assert values["margin_triplet", True] != values["margin_triplet", False]


@pytest.mark.parametrize("loss_type, semihard", VARIANTS)
def test_gradient_matches_numerical_gradient_of_numpy(loss_type, semihard):
  hidden = _embeddings(seed=5, n=4, dim=3).astype(np.float64)
  temperature, margin = 0.5, 0.8
  x = tf.Variable(hidden.astype(np.float32))
  with tf.GradientTape() as tape:
    loss, _, _ = losses.pretraining_loss(
        x, loss_type=loss_type, temperature=temperature,
        semihard_negatives=semihard, margin=margin)
  gradient = tape.gradient(loss, x).numpy()

  def reference(h):
    per_anchor, _, gap = numpy_variant(h, loss_type, temperature, semihard,
                                       margin)
    assert gap > 1e-3  # no mining or hinge boundary inside the step
    return 2 * per_anchor.mean()

  numerical = np.zeros_like(hidden)
  eps = 1e-5
  for index in np.ndindex(*hidden.shape):
    plus, minus = hidden.copy(), hidden.copy()
    plus[index] += eps
    minus[index] -= eps
    numerical[index] = (reference(plus) - reference(minus)) / (2 * eps)
  assert np.abs(numerical).max() > 1e-2  # the loss really depends on x
  np.testing.assert_allclose(gradient, numerical, rtol=2e-3, atol=2e-5)


def test_two_replicas_see_global_negatives(two_replica_strategy):
  """Each replica's loss is numpy's over its own anchors with negatives
  from the whole global batch; gradients equal one replica's. Every variant
  runs in one replica function, so one trace covers them all."""
  temperature, margin = 0.2, 0.4
  hidden = _embeddings(seed=3)
  global_n = len(hidden) // 2
  half = global_n // 2
  references = [_check_reference_is_well_posed(hidden, loss_type,
                                               temperature, semihard, margin)
                for loss_type, semihard in VARIANTS]
  rng = np.random.default_rng(0)
  # A random rotation keeps similarities (and so the references) as they
  # are while giving the gradient something to flow into.
  rotation = np.linalg.qr(rng.normal(size=(5, 5)))[0].astype(np.float32)
  view1, view2 = hidden[:global_n], hidden[global_n:]

  def variant_losses(projections):
    return [losses.pretraining_loss(
        projections, loss_type=loss_type, temperature=temperature,
        semihard_negatives=semihard, margin=margin)
            for loss_type, semihard in VARIANTS]

  w = tf.Variable(rotation)
  one_replica = []
  for index in range(len(VARIANTS)):
    with tf.GradientTape() as tape:
      loss, _, _ = variant_losses(tf.constant(hidden) @ w)[index]
    one_replica.append((float(loss), tape.gradient(loss, w).numpy()))

  with two_replica_strategy.scope():
    w_mirrored = tf.Variable(rotation)

  def replica_fn():
    ctx = tf.distribute.get_replica_context()
    start = ctx.replica_id_in_sync_group * half
    rows = tf.range(start, start + half)
    local = tf.concat([tf.gather(view1, rows), tf.gather(view2, rows)], 0)
    with tf.GradientTape(persistent=True) as tape:
      results = variant_losses(local @ w_mirrored)
      scaled = [loss / ctx.num_replicas_in_sync for loss, _, _ in results]
    out = []
    for (loss, logits_ab, labels), scaled_loss in zip(results, scaled):
      grad = tape.gradient(scaled_loss, w_mirrored)
      out.append((loss, logits_ab, labels,
                  ctx.all_reduce(tf.distribute.ReduceOp.SUM, grad)))
    return out

  results = two_replica_strategy.run(tf.function(replica_fn))
  for variant, per_anchor, (loss_1, grad_1), result in zip(
      VARIANTS, references, one_replica, results):
    local = [two_replica_strategy.experimental_local_results(r)
             for r in result]
    for rid in range(2):
      images = np.arange(rid * half, (rid + 1) * half)
      expected = np.mean(per_anchor[images] + per_anchor[images + global_n])
      np.testing.assert_allclose(float(local[0][rid]), expected, rtol=1e-5,
                                 atol=1e-7, err_msg=str(variant))
      assert local[1][rid].shape == (half, global_n)
      np.testing.assert_array_equal(np.argmax(local[2][rid], 1), images)
      np.testing.assert_allclose(local[3][rid].numpy(), grad_1, rtol=1e-4,
                                 atol=1e-6, err_msg=str(variant))
    np.testing.assert_allclose(np.mean([float(x) for x in local[0]]),
                               loss_1, rtol=1e-5)
    np.testing.assert_allclose(loss_1, 2 * per_anchor.mean(), rtol=1e-5)
    assert np.abs(grad_1).max() > 1e-4, variant


def test_nt_xent_is_contrastive_loss_bit_for_bit():
  hidden = tf.constant(_embeddings(seed=2))
  got = losses.pretraining_loss(hidden, temperature=0.3)
  want = losses.contrastive_loss(hidden, temperature=0.3)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss_type="nt_xnet"), "Received: loss_type='nt_xnet'"),
    (dict(loss_type="nt_xent", semihard_negatives=True),
     "loss_type=nt_xent, semihard_negatives=True"),
    (dict(loss_type="margin_triplet", margin=-0.1), "margin=-0.1"),
])
def test_pretraining_loss_refuses_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    losses.pretraining_loss(tf.zeros((4, 3)), temperature=0.1, **kwargs)


def test_settings_defaults_and_checks():
  default = config_lib.LossConfig()
  assert (default.loss_type, default.semihard_negatives,
          default.margin) == ("nt_xent", False, 0.4)
  assert config_lib.LOSS_TYPES == losses.LOSS_TYPES
  config_lib.LossConfig(loss_type="margin_triplet",
                        semihard_negatives=True).validate()
  with pytest.raises(config_lib.ConfigError) as refused:
    config_lib.LossConfig(semihard_negatives=True).validate()
  message = str(refused.value)
  assert "semihard_negatives" in message and "loss_type" in message
  assert "\n" not in message
  with pytest.raises(config_lib.ConfigError,
                     match="`loss_type` must be one of nt_xent, nt_logistic, "
                     "margin_triplet. Received: loss_type='triplet'"):
    config_lib.LossConfig(loss_type="triplet").validate()
  with pytest.raises(config_lib.ConfigError, match="margin=-1.0"):
    config_lib.LossConfig(margin=-1.0).validate()


def test_flags_reach_the_config():
  config = config_of(["--loss_type=nt_logistic", "--semihard_negatives",
                      "--margin=0.8", "--dataset=cifar10"])
  assert (config.loss.loss_type, config.loss.semihard_negatives,
          config.loss.margin) == ("nt_logistic", True, 0.8)
  with pytest.raises(config_lib.ConfigError, match="semihard_negatives"):
    config_of(["--semihard_negatives", "--dataset=cifar10"])
  # Both trainers build their model from the config this way.
  config = config.replace(
      data=config_lib.DataConfig(image_size=16),
      model=config_lib.ModelConfig(resnet_depth=18, width_multiplier=0.125,
                                   proj_out_dim=8))
  model = simclr.build_from_experiment(config, num_classes=2,
                                       with_supervised_head=False)
  assert (model.loss_type, model.semihard_negatives,
          model.margin) == ("nt_logistic", True, 0.8)


def _margin_triplet_model(semihard):
  """A SimCLRModel with a one-convolution encoder: the train step, loss
  wiring and replica handling are the model's, at a fraction of a ResNet's
  compile time."""
  import keras
  from simclr_tf.models import heads
  encoder = keras.Sequential([
      keras.Input((8, 8, 3)), keras.layers.Conv2D(8, 3),
      keras.layers.GlobalAveragePooling2D()], name="encoder")
  model = simclr.SimCLRModel(
      encoder, heads.ProjectionHead("nonlinear", 8, 2, synchronized=True),
      train_mode="pretrain", temperature=0.5, loss_type="margin_triplet",
      semihard_negatives=semihard, margin=0.3)
  model(np.zeros((1, 8, 8, 6), "float32"))
  model.compile(optimizer=optimizers.LARS(0.5))
  return model


def test_margin_triplet_fit_step_on_one_and_two_replicas(two_replica_strategy):
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(8, 8, 8, 6)).astype("float32")
  labels = np.zeros((8, 4), "float32")
  dataset = tf.data.Dataset.from_tensors((images, labels))
  single = _margin_triplet_model(semihard=True)
  clone = simclr.SimCLRModel.from_config(single.get_config())
  assert (clone.loss_type, clone.semihard_negatives,
          clone.margin) == ("margin_triplet", True, 0.3)
  initial = [v.numpy() for v in single.weights]
  logs_1 = single.fit(dataset, verbose=0).history
  with two_replica_strategy.scope():
    mirrored = _margin_triplet_model(semihard=True)
    for variable, value in zip(mirrored.weights, initial):
      variable.assign(value)
    logs_2 = mirrored.fit(dataset, verbose=0).history
  for logs in (logs_1, logs_2):
    assert np.isfinite(logs["contrast_loss"][0])
    assert logs["contrast_loss"][0] > 0
    assert 0.0 <= logs["contrast_acc"][0] <= 1.0
  # Global negatives: 2 replicas see the same loss as 1 on the same batch.
  np.testing.assert_allclose(logs_2["contrast_loss"], logs_1["contrast_loss"],
                             rtol=1e-4)
  moved = [not np.allclose(before, v.numpy())
           for before, v in zip(initial, single.weights)]
  assert sum(moved) > len(moved) // 2  # the step trained the model


_JAX_SCRIPT = """
import json, sys
import numpy as np
from simclr_tf import losses
hidden = np.array(json.loads(sys.argv[1]), np.float32)
out = {}
for loss_type in ("nt_logistic", "margin_triplet"):
  for semihard in (False, True):
    loss, _, _ = losses.pretraining_loss(
        hidden, loss_type=loss_type, temperature=0.2,
        semihard_negatives=semihard, margin=0.4)
    out[f"{loss_type}/{semihard}"] = float(loss)
print(json.dumps(out))
"""


def test_variants_on_jax_match_numpy():
  pytest.importorskip("jax")
  hidden = _embeddings(seed=3)
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run(
      [sys.executable, "-c", _JAX_SCRIPT, json.dumps(hidden.tolist())],
      env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  got = json.loads(result.stdout.strip().splitlines()[-1])
  for loss_type, semihard in VARIANTS:
    per_anchor, _, _ = numpy_variant(hidden, loss_type, 0.2, semihard, 0.4)
    np.testing.assert_allclose(got[f"{loss_type}/{semihard}"],
                               2 * per_anchor.mean(), rtol=1e-5)
