"""Our BatchNormalization against a numpy reference, in every mode.

Modes: the fused kernel or the statistics path, synchronised or not, on one
replica or the 2-replica strategy, training and inference, rank 2 (heads)
and rank 4 (the encoder). The reference is the textbook definition in
float64: biased batch variance, y = gamma (x - mean) / sqrt(var + eps) +
beta, and moving = decay * moving + (1 - decay) * batch statistic.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.training import precision
from simclr_tf.models import batch_norm
from simclr_tf.models import layers as layers_lib

EPSILON = 1e-5
DECAY = 0.9
CHANNELS = 3


def _data(rank, rows=8, seed=0):
  rng = np.random.default_rng(seed)
  shape = (rows, CHANNELS) if rank == 2 else (rows, 3, 2, CHANNELS)
  # A large mean and spread, different per channel: a variance computed
  # carelessly (or with Bessel's correction) shows.
  return (rng.normal(size=shape) * [3.0, 0.5, 8.0]
          + [2.0, -40.0, 5.0]).astype("float32")


def _reference(x, gamma, beta, mean=None, variance=None):
  x = x.astype(np.float64)
  axes = tuple(range(x.ndim - 1))
  if mean is None:
    mean, variance = x.mean(axes), x.var(axes)
  y = gamma * (x - mean) / np.sqrt(variance + EPSILON) + beta
  return y, mean, variance


def _layer(fused, synchronized, rank):
  layer = batch_norm.BatchNormalization(
      fused=fused, synchronized=synchronized, momentum=DECAY,
      epsilon=EPSILON)
  layer.build((None,) * (rank - 1) + (CHANNELS,))
  # Moving statistics and affine parameters away from their initial values,
  # so that each one enters the checks.
  layer.gamma.assign([1.5, -0.5, 2.0])
  layer.beta.assign([0.25, 1.0, -3.0])
  layer.moving_mean.assign([1.0, -2.0, 3.0])
  layer.moving_variance.assign([2.0, 0.5, 4.0])
  return layer


GAMMA = np.array([1.5, -0.5, 2.0])
BETA = np.array([0.25, 1.0, -3.0])
MOVING_MEAN = np.array([1.0, -2.0, 3.0])
MOVING_VARIANCE = np.array([2.0, 0.5, 4.0])


def _expected_path(fused, synchronized, replicas, training):
  if fused and (not training or not synchronized or replicas == 1):
    return batch_norm.FUSED
  return batch_norm.SYNCHRONIZED_FUSED if fused else batch_norm.UNFUSED


@pytest.mark.parametrize("rank", [2, 4])
@pytest.mark.parametrize("synchronized", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_one_replica_training_matches_numpy(fused, synchronized, rank):
  x = _data(rank)
  layer = _layer(fused, synchronized, rank)
  y = tf.function(lambda v: layer(v, training=True))(x)
  assert layer.kernel_path(rank, True, 1) == _expected_path(
      fused, synchronized, 1, True)
  expected, mean, variance = _reference(x, GAMMA, BETA)
  np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(layer.moving_mean.numpy(),
                             DECAY * MOVING_MEAN + (1 - DECAY) * mean,
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(layer.moving_variance.numpy(),
                             DECAY * MOVING_VARIANCE + (1 - DECAY) * variance,
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rank", [2, 4])
@pytest.mark.parametrize("fused", [True, False])
def test_inference_uses_the_moving_statistics_and_leaves_them(fused, rank):
  x = _data(rank)
  layer = _layer(fused, True, rank)
  y = layer(x, training=False)
  assert layer.kernel_path(rank, False, 1) == _expected_path(
      fused, True, 1, False)
  expected, _, _ = _reference(x, GAMMA, BETA, MOVING_MEAN, MOVING_VARIANCE)
  np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(layer.moving_mean.numpy(), MOVING_MEAN)
  np.testing.assert_allclose(layer.moving_variance.numpy(), MOVING_VARIANCE)


def test_a_frozen_layer_normalises_with_the_moving_statistics():
  x = _data(4)
  layer = _layer(True, False, 4)
  layer.trainable = False
  y = layer(x, training=True)
  expected, _, _ = _reference(x, GAMMA, BETA, MOVING_MEAN, MOVING_VARIANCE)
  np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(layer.moving_mean.numpy(), MOVING_MEAN)


@pytest.mark.parametrize("fused", [True, False])
def test_training_gradients_match_the_analytic_ones(fused):
  # d/dx of sum(w * y) for y = BN(x): the textbook backward pass through
  # the batch statistics.
  x = _data(4)
  weights = np.random.default_rng(1).normal(size=x.shape).astype("float32")
  layer = _layer(fused, False, 4)
  inputs = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(inputs)
    loss = tf.reduce_sum(layer(inputs, training=True) * weights)
  dx, dgamma, dbeta = tape.gradient(loss, [inputs, layer.gamma, layer.beta])
  x64, w = x.astype(np.float64), weights.astype(np.float64)
  axes = (0, 1, 2)
  mean, variance = x64.mean(axes), x64.var(axes)
  x_hat = (x64 - mean) / np.sqrt(variance + EPSILON)
  dy = w * GAMMA
  expected_dx = (dy - dy.mean(axes) - x_hat * (dy * x_hat).mean(axes)) / (
      np.sqrt(variance + EPSILON))
  np.testing.assert_allclose(dx.numpy(), expected_dx, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dgamma.numpy(), (w * x_hat).sum(axes),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dbeta.numpy(), w.sum(axes), rtol=1e-5,
                             atol=1e-5)


def _run_on_two_replicas(strategy, layer_fn, x, training):
  with strategy.scope():
    layer = layer_fn()

  @tf.function
  def step(inputs):
    return layer(inputs, training=training)

  dataset = strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors(x))
  outputs = strategy.run(step, args=(next(iter(dataset)),))
  halves = [o.numpy() for o in strategy.experimental_local_results(outputs)]
  return layer, halves


@pytest.fixture(params=["gathered", "two_all_reduces"])
def statistics_exchange(request, monkeypatch):
  """Both ways of combining the replicas' statistics, on 2 replicas."""
  if request.param == "two_all_reduces":
    monkeypatch.setattr(batch_norm, "GATHER_MAX_REPLICAS", 1)
  return request.param


@pytest.mark.parametrize("rank", [2, 4])
@pytest.mark.parametrize("fused", [True, False])
def test_synchronized_on_two_replicas_uses_global_statistics(
    two_replica_strategy, statistics_exchange, fused, rank):
  x = _data(rank)
  layer, halves = _run_on_two_replicas(
      two_replica_strategy, lambda: _layer(fused, True, rank), x, True)
  assert layer.kernel_path(rank, True, 2) == _expected_path(
      fused, True, 2, True)
  # Each replica held 4 rows but normalised with the statistics of all 8.
  expected, mean, variance = _reference(x, GAMMA, BETA)
  np.testing.assert_allclose(np.concatenate(halves), expected, rtol=1e-5,
                             atol=5e-5)
  np.testing.assert_allclose(layer.moving_mean.numpy(),
                             DECAY * MOVING_MEAN + (1 - DECAY) * mean,
                             rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(layer.moving_variance.numpy(),
                             DECAY * MOVING_VARIANCE + (1 - DECAY) * variance,
                             rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_unsynchronized_on_two_replicas_uses_each_replicas_statistics(
    two_replica_strategy, fused):
  x = _data(4)
  layer, halves = _run_on_two_replicas(
      two_replica_strategy, lambda: _layer(fused, False, 4), x, True)
  assert layer.kernel_path(4, True, 2) == _expected_path(
      fused, False, 2, True)
  for half, rows in zip(halves, (x[:4], x[4:])):
    expected, _, _ = _reference(rows, GAMMA, BETA)
    np.testing.assert_allclose(half, expected, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_inference_on_two_replicas(two_replica_strategy, fused):
  x = _data(4)
  layer, halves = _run_on_two_replicas(
      two_replica_strategy, lambda: _layer(fused, True, 4), x, False)
  assert layer.kernel_path(4, False, 2) == _expected_path(
      fused, True, 2, False)
  expected, _, _ = _reference(x, GAMMA, BETA, MOVING_MEAN, MOVING_VARIANCE)
  np.testing.assert_allclose(np.concatenate(halves), expected, rtol=1e-5,
                             atol=2e-5)
  np.testing.assert_allclose(layer.moving_mean.numpy(), MOVING_MEAN)


@pytest.mark.parametrize("fused", [True, False])
def test_bfloat16_keeps_float32_statistics(fused):
  x = _data(4)
  with precision.policy_scope("mixed_bfloat16"):
    layer = _layer(fused, True, 4)
  inputs = tf.cast(x, tf.bfloat16)
  y = layer(inputs, training=True)
  assert y.dtype == tf.bfloat16
  # The statistics of the bfloat16 inputs, accumulated in float32 (or
  # better): bfloat16 sums would be off by far more than this tolerance.
  rounded = tf.cast(inputs, tf.float32).numpy()
  expected, mean, variance = _reference(rounded, GAMMA, BETA)
  np.testing.assert_allclose(layer.moving_mean.numpy(),
                             DECAY * MOVING_MEAN + (1 - DECAY) * mean,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layer.moving_variance.numpy(),
                             DECAY * MOVING_VARIANCE + (1 - DECAY) * variance,
                             rtol=1e-5, atol=1e-5)
  # The output is rounded to bfloat16 (8 bits of mantissa) once.
  np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), expected,
                             rtol=1e-2, atol=2e-2)


def test_batch_norm_relu_round_trips_fused_and_keeps_variable_names():
  layer = layers_lib.BatchNormRelu(fused=False, name="bn")
  layer.build((None, 4, 4, CHANNELS))
  restored = layers_lib.BatchNormRelu.from_config(layer.get_config())
  assert restored.fused is False
  assert restored.batch_norm.fused is False
  # The optimizer excludes BatchNorm from weight decay by this path.
  assert sorted(v.path for v in layer.weights) == [
      "bn/batch_normalization/beta", "bn/batch_normalization/gamma",
      "bn/batch_normalization/moving_mean",
      "bn/batch_normalization/moving_variance"]


def test_fused_must_be_a_bool():
  with pytest.raises(ValueError, match="Received: fused='yes'"):
    batch_norm.BatchNormalization(fused="yes")


@pytest.mark.parametrize("rank", [2, 4])
@pytest.mark.parametrize("fused", [True, False])
def test_synchronized_gradients_on_two_replicas_match_the_global_ones(
    two_replica_strategy, statistics_exchange, fused, rank):
  # The loss is sum(w * y) over the global batch; each replica holds half
  # of it. d/dx goes through the global statistics, so a replica's rows
  # depend on the other replica's: the float64 reference differentiates
  # the whole batch at once.
  x = _data(rank)
  weights = np.random.default_rng(2).normal(size=x.shape).astype("float32")
  with two_replica_strategy.scope():
    layer = _layer(fused, True, rank)

  @tf.function
  def step(inputs, w):
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      loss = tf.reduce_sum(layer(inputs, training=True) * w)
    return tape.gradient(loss, [inputs, layer.gamma, layer.beta])

  dataset = two_replica_strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors((x, weights)))
  inputs, w = next(iter(dataset))
  dx, dgamma, dbeta = two_replica_strategy.run(step, args=(inputs, w))
  assert layer.kernel_path(rank, True, 2) == _expected_path(
      fused, True, 2, True)
  local = two_replica_strategy.experimental_local_results
  dx = np.concatenate([part.numpy() for part in local(dx)])
  # Each replica's gamma and beta gradients are its own rows' sums.
  dgamma = sum(part.numpy() for part in local(dgamma))
  dbeta = sum(part.numpy() for part in local(dbeta))

  x64, w64 = x.astype(np.float64), weights.astype(np.float64)
  axes = tuple(range(x.ndim - 1))
  mean, variance = x64.mean(axes), x64.var(axes)
  x_hat = (x64 - mean) / np.sqrt(variance + EPSILON)
  dy = w64 * GAMMA
  expected_dx = (dy - dy.mean(axes) - x_hat * (dy * x_hat).mean(axes)) / (
      np.sqrt(variance + EPSILON))
  np.testing.assert_allclose(dx, expected_dx, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dgamma, (w64 * x_hat).sum(axes), rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(dbeta, w64.sum(axes), rtol=1e-5, atol=1e-5)


def test_bfloat16_synchronized_on_two_replicas(two_replica_strategy):
  # The fused kernels both ways in bfloat16, statistics and the gradient's
  # sums in float32, against float64 on the bfloat16-rounded inputs.
  x = _data(4)
  rounded = tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy()
  weights = np.random.default_rng(3).normal(size=x.shape).astype("float32")
  with precision.policy_scope("mixed_bfloat16"):
    with two_replica_strategy.scope():
      layer = _layer(True, True, 4)

  @tf.function
  def step(inputs, w):
    inputs = tf.cast(inputs, tf.bfloat16)
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      y = layer(inputs, training=True)
      loss = tf.reduce_sum(tf.cast(y, tf.float32) * w)
    return y, tape.gradient(loss, inputs)

  dataset = two_replica_strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors((x, weights)))
  y, dx = two_replica_strategy.run(step, args=next(iter(dataset)))
  assert layer.kernel_path(4, True, 2) == batch_norm.SYNCHRONIZED_FUSED
  local = two_replica_strategy.experimental_local_results
  y = np.concatenate([tf.cast(p, tf.float32).numpy() for p in local(y)])
  dx = np.concatenate([tf.cast(p, tf.float32).numpy() for p in local(dx)])
  expected, mean, variance = _reference(rounded, GAMMA, BETA)
  np.testing.assert_allclose(layer.moving_variance.numpy(),
                             DECAY * MOVING_VARIANCE + (1 - DECAY) * variance,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(y, expected, rtol=1e-2, atol=2e-2)
  x_hat = (rounded - mean) / np.sqrt(variance + EPSILON)
  dy = weights.astype(np.float64) * GAMMA
  expected_dx = (dy - dy.mean((0, 1, 2)) - x_hat * (dy * x_hat).mean(
      (0, 1, 2))) / np.sqrt(variance + EPSILON)
  # dx is rounded to bfloat16 once: 8 bits of mantissa.
  np.testing.assert_allclose(dx, expected_dx, rtol=2e-2,
                             atol=2e-2 * np.abs(expected_dx).max())


def test_what_the_fused_kernel_cannot_do_falls_back_to_keras():
  layer = batch_norm.BatchNormalization(synchronized=True)
  assert layer.kernel_path(3, True, 1) == batch_norm.KERAS  # rank 3
  assert layer.kernel_path(4, True, 1, masked=True) == batch_norm.KERAS
  channels_first = batch_norm.BatchNormalization(axis=1)
  assert channels_first.kernel_path(4, True, 1) == batch_norm.KERAS
  assert channels_first.kernel_path(2, False, 1) == batch_norm.FUSED
  frozen = batch_norm.BatchNormalization(synchronized=True)
  frozen.trainable = False  # a frozen layer normalises with its averages
  assert frozen.kernel_path(4, True, 2) == batch_norm.FUSED
  # Keras' own call on rank 3: the same numbers as Keras' layer.
  x = np.random.default_rng(1).normal(2.0, 3.0, (8, 5, CHANNELS)).astype(
      "float32")
  keras_layer = keras.layers.BatchNormalization()
  np.testing.assert_allclose(layer(x, training=True).numpy(),
                             keras_layer(x, training=True).numpy(),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_training_statistics_stay_exact_where_the_authors_layer_cancels(fused):
  """Where the mean is large against the spread, E[x^2] - E[x]^2 in float32
  (tf-keras' SyncBatchNormalization, which the authors' code uses with
  global_bn) loses the variance; our two-pass statistics do not. float64 is
  the reference."""
  tf_keras = pytest.importorskip("tf_keras")
  rng = np.random.default_rng(4)
  x = (1000.0 + rng.standard_normal((64, 4, 4, CHANNELS))).astype("float32")
  x64 = x.astype(np.float64)
  expected = (x64 - x64.mean((0, 1, 2))) / np.sqrt(x64.var((0, 1, 2)) +
                                                  EPSILON)
  ours = batch_norm.BatchNormalization(fused=fused, synchronized=True,
                                       epsilon=EPSILON)
  theirs = tf_keras.layers.experimental.SyncBatchNormalization(
      epsilon=EPSILON)
  ours_error = np.abs(ours(x, training=True).numpy() - expected).max()
  theirs_error = np.abs(theirs(tf.constant(x), training=True).numpy() -
                        expected).max()
  scale = np.abs(expected).max()
  # float32 holds x - mean to about 1000 * 6e-8: 1e-4 of the output's scale.
  assert ours_error < 1e-3 * scale
  assert theirs_error > 0.05 * scale  # measured 0.5 here


@pytest.mark.parametrize("fused", [True, False])
def test_two_replicas_statistics_stay_exact_where_the_means_are_large(
    two_replica_strategy, statistics_exchange, fused):
  """A mean of 1000 against a spread of 1, and replicas whose means differ
  by 3 spreads: neither the replicas' own moments nor their combination
  may cancel. float64 is the reference."""
  rng = np.random.default_rng(5)
  x = (1000.0 + rng.standard_normal((16, 4, 4, CHANNELS))).astype("float32")
  x[8:] += 3.0
  x64 = x.astype(np.float64)
  mean, variance = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
  expected = (x64 - mean) / np.sqrt(variance + EPSILON)
  def unit_layer():
    layer = batch_norm.BatchNormalization(
        fused=fused, synchronized=True, momentum=0.0, epsilon=EPSILON)
    layer.build(x.shape)
    return layer

  layer, halves = _run_on_two_replicas(two_replica_strategy, unit_layer, x,
                                       True)
  scale = np.abs(expected).max()
  # float32 holds x - mean to about 1000 * 6e-8 of a spread near 1.7.
  np.testing.assert_allclose(np.concatenate(halves), expected,
                             atol=1e-3 * scale)
  np.testing.assert_allclose(layer.moving_variance.numpy(), variance,
                             rtol=1e-4)
  np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-6)


@pytest.mark.parametrize("rank", [2, 4])
@pytest.mark.parametrize("fused", [True, False])
def test_deferred_updates_record_statistics_and_leave_the_averages(fused,
                                                                   rank):
  layer = _layer(fused, False, rank)
  first, second = _data(rank, seed=1), _data(rank, seed=2)
  with batch_norm.deferred_moving_updates([layer]) as held:
    y = layer(first, training=True)
    layer(second, training=True)
    layer(first, training=False)  # inference records nothing
    with pytest.raises(ValueError, match="already deferred"):
      with batch_norm.deferred_moving_updates([layer]):
        pass
  # Normalised with the batch's statistics, as without deferral.
  np.testing.assert_allclose(y.numpy(), _reference(first, GAMMA, BETA)[0],
                             rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(layer.moving_mean.numpy(), MOVING_MEAN)
  np.testing.assert_allclose(layer.moving_variance.numpy(), MOVING_VARIANCE)
  [(held_layer, statistics)] = held
  assert held_layer is layer and len(statistics) == 2
  for (mean, variance), x in zip(statistics, (first, second)):
    _, expected_mean, expected_variance = _reference(x, GAMMA, BETA)
    np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(variance.numpy(), expected_variance,
                               rtol=1e-5, atol=1e-5)
  # Outside, training updates the averages again.
  layer(first, training=True)
  _, mean, _ = _reference(first, GAMMA, BETA)
  np.testing.assert_allclose(layer.moving_mean.numpy(),
                             DECAY * MOVING_MEAN + (1 - DECAY) * mean,
                             rtol=1e-6, atol=1e-6)


def test_deferred_updates_refuse_keras_paths_and_keras_layers():
  layer = batch_norm.BatchNormalization()
  x = np.ones((4, 5, CHANNELS), "float32")  # rank 3: Keras' own call
  with batch_norm.deferred_moving_updates([layer]):
    with pytest.raises(ValueError, match="only on this layer's own"):
      layer(x, training=True)
  model = keras.Sequential([keras.Input((CHANNELS,)),
                            keras.layers.BatchNormalization()])
  with pytest.raises(ValueError, match="Keras' own BatchNormalization"):
    batch_norm.batch_norm_layers(model)
  ours = keras.Sequential([keras.Input((CHANNELS,)),
                           batch_norm.BatchNormalization(),
                           batch_norm.BatchNormalization()])
  assert len(batch_norm.batch_norm_layers(ours)) == 2
