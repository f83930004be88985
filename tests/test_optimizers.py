"""Tests for simclr_tf.optimizers.

LARS is checked against a numpy LARS written here from the update formulas
(in float64), the schedule against numbers worked out by hand, and the
distributed update against the single-device one.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf import optimizers

# The authors' LARS exclusions, written out rather than imported so that a
# change to the library constant is caught.
AUTHORS_EXCLUSIONS = ["batch_normalization", "bias", "head_supervised"]

# Paths of the test model's trainable variables, in order. Asserted, because
# the exclusions silently stop working if Keras changes how paths look.
MODEL_PATHS = [
    "dense/kernel",
    "dense/bias",
    "batch_normalization/gamma",
    "batch_normalization/beta",
    "dense_1/kernel",
    "dense_1/bias",
    "head_supervised/kernel",
    "head_supervised/bias",
]

# For each exclusion setting: path -> (weight decay applies, layer adaptation
# applies), worked out by hand from the regexes.
EXCLUSION_CASES = {
    # The authors' setting: adaptation follows the weight-decay exclusions.
    "authors": (
        dict(exclude_from_weight_decay=AUTHORS_EXCLUSIONS),
        {
            "dense/kernel": (True, True),
            "dense/bias": (False, False),
            "batch_normalization/gamma": (False, False),
            "batch_normalization/beta": (False, False),
            "dense_1/kernel": (True, True),
            "dense_1/bias": (False, False),
            "head_supervised/kernel": (False, False),
            "head_supervised/bias": (False, False),
        }),
    # Separate lists, so decay and adaptation differ per variable.
    "separate": (
        dict(exclude_from_weight_decay=["batch_normalization"],
             exclude_from_layer_adaptation=["bias", r"^head_"]),
        {
            "dense/kernel": (True, True),
            "dense/bias": (True, False),
            "batch_normalization/gamma": (False, True),
            "batch_normalization/beta": (False, True),
            "dense_1/kernel": (True, True),
            "dense_1/bias": (True, False),
            "head_supervised/kernel": (True, False),
            "head_supervised/bias": (True, False),
        }),
}


def _tiny_model():
  """Dense, BatchNorm, a zero-initialised Dense and a supervised head."""
  inputs = keras.Input((3,))
  x = keras.layers.Dense(4)(inputs)
  x = keras.layers.BatchNormalization()(x)
  # A zero kernel: its first step exercises the |w| = 0 branch.
  x = keras.layers.Dense(4, kernel_initializer="zeros")(x)
  x = keras.layers.Dense(2, name="head_supervised",
                         bias_initializer="ones")(x)
  model = keras.Model(inputs, x)
  assert [v.path for v in model.trainable_variables] == MODEL_PATHS
  return model


def _np_norm(x):
  return float(np.sqrt(np.sum(np.square(x, dtype=np.float64))))


def numpy_lars_step(w, v, g, lr, *, momentum, nesterov, weight_decay, decay,
                    adapt, classic, eeta):
  """One LARS step in float64, straight from the formulas."""
  w = np.asarray(w, np.float64)
  v = np.asarray(v, np.float64)
  g = np.asarray(g, np.float64)
  if decay and weight_decay > 0:
    g = g + weight_decay * w
  if classic:
    trust = 1.0
    if adapt and _np_norm(w) > 0 and _np_norm(g) > 0:
      trust = eeta * _np_norm(w) / _np_norm(g)
    v_new = momentum * v + lr * trust * g
    update = momentum * v_new + lr * trust * g if nesterov else v_new
    return w - update, v_new
  v_new = momentum * v + g
  update = momentum * v_new + g if nesterov else v_new
  trust = 1.0
  if adapt and _np_norm(w) > 0 and _np_norm(update) > 0:
    trust = eeta * _np_norm(w) / _np_norm(update)
  return w - lr * trust * update, v_new


def numpy_schedule(step, *, base_lr, batch_size, num_examples, warmup_epochs,
                   total_steps, scaling="linear"):
  """The warm-up and cosine schedule from its formula, in float64."""
  peak = (base_lr * batch_size / 256 if scaling == "linear"
          else base_lr * math.sqrt(batch_size))
  warmup = int(round(warmup_epochs * num_examples // batch_size))
  if step < warmup:
    return step / warmup * peak
  decay = total_steps - warmup
  progress = min(step - warmup, decay) / decay
  return peak * 0.5 * (1 + math.cos(math.pi * progress))


def _random_gradients(rng, variables, num_steps):
  steps = []
  for step in range(num_steps):
    grads = [rng.normal(0.0, 0.3, v.shape).astype(np.float32)
             for v in variables]
    if step == 2:
      # A zero gradient on an undecayed variable: the |g| = 0 branch.
      grads[MODEL_PATHS.index("batch_normalization/gamma")][:] = 0.0
    steps.append(grads)
  return steps


def _relative_error(actual, expected):
  return _np_norm(np.asarray(actual, np.float64) - expected) / max(
      _np_norm(expected), 1e-30)


def _check_against_numpy(model, optimizer, grad_steps, lrs, flags, hyper,
                         apply_fn):
  """Runs the optimizer and the numpy reference side by side."""
  variables = model.trainable_variables
  ref_w = [v.numpy().astype(np.float64) for v in variables]
  ref_v = [np.zeros_like(w) for w in ref_w]
  for step, grads in enumerate(grad_steps):
    apply_fn(grads)
    for i, path in enumerate(MODEL_PATHS):
      decay, adapt = flags[path]
      ref_w[i], ref_v[i] = numpy_lars_step(
          ref_w[i], ref_v[i], grads[i], lrs[step], decay=decay, adapt=adapt,
          **hyper)
    for i, (variable, path) in enumerate(zip(variables, MODEL_PATHS)):
      error = _relative_error(variable.numpy(), ref_w[i])
      assert error < 1e-6, (step, path, error)
      slot = optimizer.momentums[i].numpy()
      error = _relative_error(slot, ref_v[i]) if _np_norm(ref_v[i]) else (
          _np_norm(slot))
      assert error < 1e-6, (step, path, "momentum", error)
  assert int(optimizer.iterations.numpy()) == len(grad_steps)


@pytest.mark.parametrize("case", sorted(EXCLUSION_CASES))
@pytest.mark.parametrize("classic", [True, False], ids=["classic", "popular"])
@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
def test_lars_matches_numpy_with_constant_lr(case, classic, nesterov):
  kwargs, flags = EXCLUSION_CASES[case]
  # Large eeta, lr and weight decay so that each step changes the weights by
  # several percent and decay is a sizeable part of the gradient: errors in
  # the trust ratio or the decay cannot hide below float32 rounding.
  hyper = dict(momentum=0.9, nesterov=nesterov, weight_decay=0.1,
               classic=classic, eeta=0.1)
  model = _tiny_model()
  optimizer = optimizers.LARS(
      0.5, momentum=0.9, nesterov=nesterov, weight_decay=0.1,
      classic_momentum=classic, eeta=0.1, **kwargs)
  grad_steps = _random_gradients(np.random.default_rng(0),
                                 model.trainable_variables, 5)

  def apply(grads):
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

  _check_against_numpy(model, optimizer, grad_steps, [0.5] * 5, flags, hyper,
                       apply)
  for variable, path in zip(model.trainable_variables, MODEL_PATHS):
    assert (optimizer.applies_weight_decay(variable),
            optimizer.applies_layer_adaptation(variable)) == flags[path]


@pytest.mark.parametrize("classic", [True, False], ids=["classic", "popular"])
def test_lars_matches_numpy_with_schedule_in_tf_function(classic):
  # 1 warm-up epoch of 1024 examples at batch 256: warm-up steps 0..3 get
  # lr 0, 0.25, 0.5, 0.75 (peak 1.0 * 256 / 256); step 4 starts the cosine.
  schedule_args = dict(batch_size=256, num_examples=1024, warmup_epochs=1,
                       total_steps=8)
  schedule = optimizers.WarmUpAndCosineDecay(1.0, **schedule_args)
  lrs = [numpy_schedule(s, base_lr=1.0, **schedule_args) for s in range(5)]
  assert lrs[:4] == [0.0, 0.25, 0.5, 0.75] and lrs[4] == 1.0
  _, flags = EXCLUSION_CASES["authors"]
  hyper = dict(momentum=0.9, nesterov=False, weight_decay=1e-2,
               classic=classic, eeta=0.001)
  model = _tiny_model()
  # The authors' construction, default eeta.
  optimizer = optimizers.LARS(schedule, weight_decay=1e-2,
                              classic_momentum=classic,
                              exclude_from_weight_decay=AUTHORS_EXCLUSIONS)
  grad_steps = _random_gradients(np.random.default_rng(1),
                                 model.trainable_variables, 5)

  @tf.function
  def apply_in_graph(grads):
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

  def apply(grads):
    step = int(optimizer.iterations.numpy())
    np.testing.assert_allclose(float(optimizer.learning_rate), lrs[step],
                               rtol=1e-6)
    apply_in_graph([tf.constant(g) for g in grads])

  _check_against_numpy(model, optimizer, grad_steps, lrs, flags, hyper, apply)


def test_batch_norm_gamma_gets_no_decay_and_trust_one():
  with keras.name_scope("block"):
    with keras.name_scope("batch_normalization_3"):
      gamma = keras.Variable(np.ones(4, np.float32), name="gamma")
    with keras.name_scope("conv2d"):
      kernel = keras.Variable(np.ones(4, np.float32), name="kernel")
  assert gamma.path == "block/batch_normalization_3/gamma"
  optimizer = optimizers.LARS(1.0, momentum=0.0, weight_decay=0.5,
                              exclude_from_weight_decay=AUTHORS_EXCLUSIONS)
  grad = np.full(4, 0.5, np.float32)
  optimizer.apply_gradients([(grad, gamma), (grad, kernel)])
  # gamma: no decay, trust 1: 1 - 1.0 * 0.5 = 0.5.
  np.testing.assert_allclose(gamma.numpy(), np.full(4, 0.5), rtol=1e-7)
  # kernel: g = 0.5 + 0.5 * 1 = 1 per element, |g| = 2, |w| = 2,
  # trust = 0.001 * 2 / 2 = 0.001, so w = 1 - 1.0 * 0.001 * 1 = 0.999.
  np.testing.assert_allclose(kernel.numpy(), np.full(4, 0.999), rtol=1e-7)


def test_layer_adaptation_exclusions_default_to_weight_decay_ones():
  with keras.name_scope("batch_normalization"):
    gamma_default = keras.Variable(np.ones(4, np.float32), name="gamma")
  with keras.name_scope("batch_normalization_1"):
    gamma_adapted = keras.Variable(np.ones(4, np.float32), name="gamma")
  grad = np.full(4, 0.5, np.float32)  # |g| = 1, |w| = 2.
  # weight_decay 0: the decay exclusions still decide adaptation.
  default = optimizers.LARS(1.0, momentum=0.0,
                            exclude_from_weight_decay=["batch_normalization"])
  default.apply_gradients([(grad, gamma_default)])
  assert not default.applies_layer_adaptation(gamma_default)
  assert default.get_config()["exclude_from_layer_adaptation"] is None
  np.testing.assert_allclose(gamma_default.numpy(), np.full(4, 0.5),
                             rtol=1e-7)  # 1 - 0.5: trust 1.
  # An explicit empty list adapts everything: trust = 0.001 * 2 / 1.
  adapted = optimizers.LARS(1.0, momentum=0.0,
                            exclude_from_weight_decay=["batch_normalization"],
                            exclude_from_layer_adaptation=[])
  adapted.apply_gradients([(grad, gamma_adapted)])
  assert adapted.applies_layer_adaptation(gamma_adapted)
  np.testing.assert_allclose(gamma_adapted.numpy(), np.full(4, 0.999),
                             rtol=1e-7)  # 1 - 0.002 * 0.5.


def test_lars_leaves_keras_decoupled_weight_decay_off():
  optimizer = optimizers.LARS(0.1, weight_decay=1e-4)
  assert optimizer.weight_decay is None
  assert optimizer.coupled_weight_decay == 1e-4
  with pytest.raises(NotImplementedError, match="exclude_from_weight_decay"):
    optimizer.exclude_from_weight_decay(var_names=["bias"])


def test_lars_zero_weight_and_gradient_stay_finite():
  with keras.name_scope("dense"):
    variable = keras.Variable(np.zeros(3, np.float32), name="kernel")
  for classic in (True, False):
    optimizer = optimizers.LARS(1.0, classic_momentum=classic)
    optimizer.apply_gradients([(np.zeros(3, np.float32), variable)])
    assert np.all(variable.numpy() == 0.0)
    assert np.all(np.isfinite(optimizer.momentums[0].numpy()))


def test_lars_float16_variable_computes_in_float32():
  variable = keras.Variable(np.ones(64, np.float16), dtype="float16",
                            name="w16")
  optimizer = optimizers.LARS(1.0, momentum=0.9)
  # |g|^2 = 64 * 100^2 = 640000 overflows float16 (max 65504); in float32
  # trust = 0.001 * 8 / 800 = 1e-5 and the step is 1e-5 * 100 = 0.001.
  grad = tf.constant(np.full(64, 100.0, np.float16))
  optimizer.apply_gradients([(grad, variable)])
  assert variable.dtype == "float16"
  assert optimizer.momentums[0].dtype == "float16"
  # 0.999 rounds to 0.99902 in float16 (spacing 2**-11 below 1).
  np.testing.assert_allclose(variable.numpy().astype(np.float32),
                             np.full(64, 0.999), atol=5e-4)
  assert np.all(variable.numpy() < 1.0)


def test_lars_two_replicas_match_one_device(two_replica_strategy):
  strategy = two_replica_strategy
  rng = np.random.default_rng(3)
  kernel0 = rng.normal(size=(3, 2)).astype(np.float32)
  bias0 = rng.normal(size=(2,)).astype(np.float32)
  # Per-replica gradients; the reference applies their float32 sum, which is
  # what the all-reduce computes.
  steps = []
  for _ in range(3):
    replica = [[rng.normal(size=(3, 2)).astype(np.float32),
                rng.normal(size=(2,)).astype(np.float32)] for _ in range(2)]
    steps.append(replica)

  def make(scope_strategy):
    with scope_strategy.scope():
      layer = keras.layers.Dense(2, name="dense")
      layer.build((None, 3))
      layer.kernel.assign(kernel0)
      layer.bias.assign(bias0)
      optimizer = optimizers.LARS(
          0.5, nesterov=True, weight_decay=0.1, eeta=0.1,
          exclude_from_weight_decay=AUTHORS_EXCLUSIONS)
      optimizer.build(layer.trainable_variables)
    return layer, optimizer

  layer, optimizer = make(strategy)
  assert optimizer.iterations.value.__class__.__name__ == "MirroredVariable"

  @tf.function
  def distributed_step(per_replica_grads):
    def replica_fn(grads):
      optimizer.apply_gradients(zip(grads, layer.trainable_variables))
    strategy.run(replica_fn, args=(per_replica_grads,))

  for replica in steps:
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda context, r=replica: [
            tf.constant(g) for g in r[context.replica_id_in_sync_group]])
    distributed_step(per_replica)

  ref_layer, ref_optimizer = make(tf.distribute.get_strategy())
  for replica in steps:
    summed = [replica[0][i] + replica[1][i] for i in range(2)]
    ref_optimizer.apply_gradients(zip(summed, ref_layer.trainable_variables))

  assert int(optimizer.iterations.numpy()) == 3
  for variable, ref in zip(layer.trainable_variables,
                           ref_layer.trainable_variables):
    copies = strategy.experimental_local_results(variable.value)
    assert len(copies) == 2
    for copy in copies:
      np.testing.assert_allclose(copy.numpy(), ref.numpy(), rtol=1e-6,
                                 atol=1e-7)
    # The weights really moved (so the comparison means something).
    assert not np.allclose(ref.numpy(), kernel0 if ref.path.endswith(
        "kernel") else bias0)
  for slot, ref_slot in zip(optimizer.momentums, ref_optimizer.momentums):
    for copy in strategy.experimental_local_results(slot.value):
      np.testing.assert_allclose(copy.numpy(), ref_slot.numpy(), rtol=1e-6,
                                 atol=1e-7)


def test_lars_config_round_trip():
  schedule = optimizers.WarmUpAndCosineDecay(
      0.3, batch_size=4096, num_examples=1281167, warmup_epochs=10,
      total_steps=31279, scaling="sqrt")
  optimizer = optimizers.LARS(
      schedule, momentum=0.8, nesterov=True, weight_decay=1e-6,
      exclude_from_weight_decay=AUTHORS_EXCLUSIONS,
      exclude_from_layer_adaptation=["bias"], classic_momentum=False,
      eeta=0.002, name="my_lars", clipnorm=1.0)
  config = optimizer.get_config()
  assert {k: config[k] for k in (
      "momentum", "nesterov", "weight_decay", "exclude_from_weight_decay",
      "exclude_from_layer_adaptation", "classic_momentum", "eeta", "name",
      "clipnorm")} == {
          "momentum": 0.8, "nesterov": True, "weight_decay": 1e-6,
          "exclude_from_weight_decay": AUTHORS_EXCLUSIONS,
          "exclude_from_layer_adaptation": ["bias"],
          "classic_momentum": False, "eeta": 0.002, "name": "my_lars",
          "clipnorm": 1.0}
  restored = optimizers.LARS.from_config(optimizer.get_config())
  assert restored.get_config() == config
  assert isinstance(restored.learning_rate, tf.Tensor)
  assert restored._learning_rate.get_config() == schedule.get_config()
  assert restored.weight_decay is None  # Still no decoupled decay.
  # Through Keras' generic (de)serialisation too, as model saving does.
  again = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
  assert isinstance(again, optimizers.LARS)
  assert again.get_config() == config
  # A float learning rate round-trips as well.
  plain = optimizers.LARS(0.1)
  assert optimizers.LARS.from_config(plain.get_config()).get_config() == (
      plain.get_config())


@pytest.mark.parametrize("kwargs, message", [
    (dict(momentum=1.5),
     r"^`momentum` must be in \[0, 1\). Received: momentum=1.5$"),
    (dict(momentum=1.0), r"momentum=1.0"),
    (dict(momentum=-0.1), r"momentum=-0.1"),
    (dict(eeta=0.0), r"`eeta` must be a positive number. Received: eeta=0.0"),
    (dict(eeta=-1e-3), r"eeta=-0.001"),
    (dict(weight_decay=-1e-4),
     r"`weight_decay` must be >= 0. Received: weight_decay=-0.0001"),
    (dict(exclude_from_weight_decay="bias"),
     r"`exclude_from_weight_decay` must be a list .* "
     r"Received: exclude_from_weight_decay='bias'"),
    (dict(exclude_from_layer_adaptation=["("]),
     r"`exclude_from_layer_adaptation` has an invalid regex"),
])
def test_lars_rejects_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    optimizers.LARS(0.1, **kwargs)


# ImageNet, as in the paper: base lr 0.3, batch 4096, 1281167 examples,
# 10 warm-up epochs, 100 epochs.
#   scaled lr     = 0.3 * 4096 / 256 = 4.8
#   warmup steps  = int(round(10 * 1281167 // 4096)) = 12811670 // 4096
#                 = 3127 (12811670 / 4096 = 3127.85, floored)
#   total steps   = 1281167 * 100 // 4096 + 1 = 31278 + 1 = 31279
#   decay steps   = 31279 - 3127 = 28152
IMAGENET = dict(batch_size=4096, num_examples=1281167, warmup_epochs=10,
                total_steps=31279)


@pytest.mark.parametrize("step, expected", [
    (0, 0.0),
    (1000, 1.5350175887),   # 1000 / 3127 * 4.8 = 4800 / 3127
    (3126, 4.7984649824),   # 3126 / 3127 * 4.8, last warm-up step
    (3127, 4.8),            # end of warm-up: cos(0) = 1
    (10165, 4.0970562748),  # 3127 + 28152 / 4: 2.4 * (1 + cos(pi / 4))
    (17203, 2.4),           # 3127 + 28152 / 2: 2.4 * (1 + cos(pi / 2))
    (31278, 1.494e-8),      # last step: 2.4 * (1 + cos(pi * 28151 / 28152))
    (31279, 0.0),           # total_steps: cos(pi) = -1
    (50000, 0.0),           # past the end it stays at 0
])
def test_schedule_imagenet_linear(step, expected):
  schedule = optimizers.WarmUpAndCosineDecay(0.3, **IMAGENET)
  assert schedule.warmup_steps == 3127
  assert schedule.scaled_learning_rate == pytest.approx(4.8)
  value = schedule(step)
  assert value.dtype == tf.float32
  # float32: relative 1e-6, plus 1e-6 absolute for the near-zero tail, where
  # 1 + cos(x) near x = pi cancels in float32 (the authors' too).
  np.testing.assert_allclose(float(value), expected, rtol=1e-6, atol=1e-6)


def test_schedule_sqrt_scaling_and_authors_floor():
  # CIFAR-10 recipe: lr 1.0, batch 512, 50000 examples, 10 warm-up epochs,
  # 1000 epochs. warmup = int(round(10 * 50000 // 512)) = 500000 // 512 = 976
  # (976.5625 floored before the round; rounding first would give 977).
  # total = 50000 * 1000 // 512 + 1 = 97656 + 1 = 97657.
  cifar = dict(batch_size=512, num_examples=50000, warmup_epochs=10,
               total_steps=97657)
  linear = optimizers.WarmUpAndCosineDecay(1.0, **cifar)
  sqrt = optimizers.WarmUpAndCosineDecay(1.0, scaling="sqrt", **cifar)
  assert linear.warmup_steps == sqrt.warmup_steps == 976
  assert linear.scaled_learning_rate == pytest.approx(2.0)  # 1.0 * 512 / 256
  # 1.0 * sqrt(512) = 22.627417
  assert sqrt.scaled_learning_rate == pytest.approx(22.6274169980)
  # Step 488 is half-way through warm-up: half the peak.
  np.testing.assert_allclose(float(linear(488)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(sqrt(488)), 11.3137084990, rtol=1e-6)
  np.testing.assert_allclose(float(sqrt(976)), 22.6274169980, rtol=1e-6)
  # The paper's sqrt setting: 0.075 * sqrt(4096) = 0.075 * 64 = 4.8.
  paper_sqrt = optimizers.WarmUpAndCosineDecay(0.075, scaling="sqrt",
                                               **IMAGENET)
  np.testing.assert_allclose(float(paper_sqrt(17203)), 2.4, rtol=1e-6)


def test_schedule_without_warmup():
  # base 0.3, batch 256 -> peak 0.3; 0 warm-up epochs -> cosine from step 0
  # over 10 steps.
  schedule = optimizers.WarmUpAndCosineDecay(
      0.3, batch_size=256, num_examples=1000, warmup_epochs=0, total_steps=10)
  assert schedule.warmup_steps == 0
  np.testing.assert_allclose(float(schedule(0)), 0.3, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(5)), 0.15, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), 0.0, atol=1e-7)


def test_schedule_fractional_warmup_epochs():
  # 0.5 * 1000 // 256 = 500.0 // 256 = 1.0 -> 1 warm-up step.
  schedule = optimizers.WarmUpAndCosineDecay(
      0.3, batch_size=256, num_examples=1000, warmup_epochs=0.5,
      total_steps=10)
  assert schedule.warmup_steps == 1
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(1)), 0.3, rtol=1e-6)


def test_schedule_warmup_covering_the_run_stays_finite():
  # warm-up = 2 * 1024 // 256 = 8 steps = total steps: no decay phase, where
  # the authors' code would divide 0 by 0. Documented: lr stays at the peak.
  schedule = optimizers.WarmUpAndCosineDecay(
      0.3, batch_size=256, num_examples=1024, warmup_epochs=2, total_steps=8)
  assert schedule.decay_steps == 0
  np.testing.assert_allclose(float(schedule(4)), 0.15, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(8)), 0.3, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(20)), 0.3, rtol=1e-6)
  # A warm-up longer than the run just never reaches the peak.
  longer = optimizers.WarmUpAndCosineDecay(
      0.3, batch_size=256, num_examples=1024, warmup_epochs=4, total_steps=8)
  np.testing.assert_allclose(float(longer(7)), 0.3 * 7 / 16, rtol=1e-6)


def test_schedule_in_tf_function_with_int64_step():
  schedule = optimizers.WarmUpAndCosineDecay(0.3, **IMAGENET)
  steps = [0, 1000, 3127, 17203, 31279]

  @tf.function
  def evaluate(step):
    return schedule(step)

  for step in steps:
    value = evaluate(tf.constant(step, tf.int64))
    assert value.dtype == tf.float32
    np.testing.assert_allclose(
        float(value), numpy_schedule(step, base_lr=0.3, **IMAGENET),
        rtol=1e-6, atol=1e-6)


def test_schedule_config_and_bad_arguments():
  schedule = optimizers.WarmUpAndCosineDecay(0.3, scaling="sqrt", **IMAGENET)
  config = schedule.get_config()
  assert config == dict(base_learning_rate=0.3, scaling="sqrt",
                        name="WarmUpAndCosineDecay", **IMAGENET)
  restored = optimizers.WarmUpAndCosineDecay.from_config(config)
  assert float(restored(5000)) == float(schedule(5000))
  with pytest.raises(ValueError, match=r"scaling='cubic'"):
    optimizers.WarmUpAndCosineDecay(0.3, scaling="cubic", **IMAGENET)
  bad = [dict(total_steps=0), dict(batch_size=0), dict(num_examples=0),
         dict(warmup_epochs=-1)]
  for override in bad:
    (name, value), = override.items()
    with pytest.raises(ValueError, match=f"`{name}`.*{name}={value}"):
      optimizers.WarmUpAndCosineDecay(0.3, **{**IMAGENET, **override})
  with pytest.raises(ValueError, match="base_learning_rate=0"):
    optimizers.WarmUpAndCosineDecay(0, **IMAGENET)


def test_total_train_steps():
  # 1281167 * 100 // 4096 + 1 = 31278 + 1.
  assert optimizers.total_train_steps(1281167, 100, 4096) == 31279
  # 50000 * 1000 // 512 + 1 = 97656 + 1.
  assert optimizers.total_train_steps(50000, 1000, 512) == 97657
  # 100 * 1 // 128 + 1 = 0 + 1: even less than one batch trains one step.
  assert optimizers.total_train_steps(100, 1, 128) == 1
  assert optimizers.total_train_steps(50000, 1000, 512, train_steps=500) == 500
  with pytest.raises(ValueError, match="batch_size=0"):
    optimizers.total_train_steps(100, 1, 0)


def _weight_decay_model():
  """dense(2->2) + BN + head_supervised(2->1) with hand-set weights."""
  inputs = keras.Input((2,))
  x = keras.layers.Dense(2)(inputs)
  x = keras.layers.BatchNormalization()(x)
  x = keras.layers.Dense(1, name="head_supervised")(x)
  model = keras.Model(inputs, x)
  values = {
      "dense/kernel": [[1.0, 2.0], [3.0, 4.0]],      # 0.5 * 30 = 15
      "dense/bias": [1.0, 1.0],                       # 0.5 * 2 = 1
      "batch_normalization/gamma": [2.0, 2.0],        # 0.5 * 8 = 4
      "batch_normalization/beta": [1.0, 1.0],         # 0.5 * 2 = 1
      "head_supervised/kernel": [[3.0], [4.0]],       # 0.5 * 25 = 12.5
      "head_supervised/bias": [2.0],                  # 0.5 * 4 = 2
  }
  for variable in model.trainable_variables:
    variable.assign(np.array(values[variable.path], np.float32))
  return model


def test_l2_weight_decay():
  model = _weight_decay_model()
  variables = model.trainable_variables
  # LARS: only the supervised head's kernel: 0.1 * 12.5.
  lars = optimizers.l2_weight_decay(variables, 0.1, "lars")
  np.testing.assert_allclose(float(lars), 1.25, rtol=1e-7)
  # Momentum / Adam: all but BN: 0.1 * (15 + 1 + 12.5 + 2) = 3.05.
  for name in ("momentum", "adam"):
    np.testing.assert_allclose(
        float(optimizers.l2_weight_decay(variables, 0.1, name)), 3.05,
        rtol=1e-6)
  # BN moving statistics are excluded too (they match the BN pattern).
  np.testing.assert_allclose(
      float(optimizers.l2_weight_decay(model.variables, 0.1, "momentum")),
      3.05, rtol=1e-6)
  # LARS without a supervised head: exactly 0.
  no_head = [v for v in variables if "head_supervised" not in v.path]
  assert float(optimizers.l2_weight_decay(no_head, 0.1, "lars")) == 0.0
  with pytest.raises(ValueError, match="optimizer_name='sgd'"):
    optimizers.l2_weight_decay(variables, 0.1, "sgd")
  assert optimizers.LARS_EXCLUDE_FROM_WEIGHT_DECAY == tuple(
      AUTHORS_EXCLUSIONS)
  assert optimizers.BATCH_NORM_PATTERN == "batch_normalization"


def test_build_optimizer():
  cfg = config_lib.OptimizerConfig(optimizer="lars", momentum=0.8,
                                   weight_decay=1e-4)
  lars = optimizers.build_optimizer(cfg, 0.5)
  assert isinstance(lars, optimizers.LARS)
  lars_config = lars.get_config()
  assert lars_config["momentum"] == 0.8
  assert lars_config["weight_decay"] == 1e-4
  assert lars_config["exclude_from_weight_decay"] == AUTHORS_EXCLUSIONS
  assert lars_config["exclude_from_layer_adaptation"] is None
  assert lars_config["classic_momentum"] and not lars_config["nesterov"]
  assert lars_config["eeta"] == 0.001
  assert lars.weight_decay is None

  schedule = optimizers.WarmUpAndCosineDecay(0.3, **IMAGENET)
  sgd = optimizers.build_optimizer(
      config_lib.OptimizerConfig(optimizer="momentum"), schedule)
  assert isinstance(sgd, keras.optimizers.SGD)
  assert sgd.momentum == 0.9 and sgd.nesterov
  assert sgd.weight_decay is None  # Decay goes through the loss.
  assert sgd._learning_rate is schedule

  adam = optimizers.build_optimizer(
      config_lib.OptimizerConfig(optimizer="adam", momentum=0.85), 1e-3)
  assert isinstance(adam, keras.optimizers.Adam)
  assert adam.beta_1 == 0.85 and adam.weight_decay is None

  with pytest.raises(ValueError, match="optimizer='rmsprop'"):
    optimizers.build_optimizer(
        config_lib.OptimizerConfig(optimizer="rmsprop"), 0.1)


def test_lars_in_model_fit_two_replicas_matches_one_device(
    two_replica_strategy):
  # The path training takes: compile + fit. Without BatchNorm, per-replica
  # batch statistics cannot differ, so 2 replicas must train exactly like
  # one device on the same global batches.
  rng = np.random.default_rng(4)
  x = rng.normal(size=(16, 3)).astype(np.float32)
  y = rng.normal(size=(16, 2)).astype(np.float32)

  def fit(strategy):
    keras.utils.set_random_seed(7)
    with strategy.scope():
      model = keras.Sequential([
          keras.Input((3,)),
          keras.layers.Dense(4, name="dense"),
          keras.layers.Dense(2, name="head_supervised"),
      ])
      schedule = optimizers.WarmUpAndCosineDecay(
          1.0, batch_size=8, num_examples=16, warmup_epochs=1, total_steps=4)
      model.compile(
          optimizer=optimizers.LARS(
              schedule, weight_decay=1e-2, eeta=0.1,
              exclude_from_weight_decay=AUTHORS_EXCLUSIONS),
          loss="mse")
    initial = [v.numpy() for v in model.trainable_variables]
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 4
    return model, initial

  model, initial = fit(two_replica_strategy)
  ref_model, ref_initial = fit(tf.distribute.get_strategy())
  for a, b in zip(initial, ref_initial):
    np.testing.assert_array_equal(a, b)
  for variable, ref, start in zip(model.trainable_variables,
                                  ref_model.trainable_variables, initial):
    assert not np.allclose(ref.numpy(), start)  # It trained.
    for copy in two_replica_strategy.experimental_local_results(
        variable.value):
      np.testing.assert_allclose(copy.numpy(), ref.numpy(), rtol=1e-6,
                                 atol=1e-7)
