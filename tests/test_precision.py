"""Mixed precision: policies, what stays float32, loss scaling (correctness)."""

import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf import losses
from simclr_tf import optimizers
from simclr_tf.training import precision
from simclr_tf.models import simclr
from test_losses import numpy_nt_xent

COMPUTE_DTYPE = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


def unit_roundoff(dtype) -> float:
  """u = eps / 2: the largest relative error of one round-to-nearest."""
  return float(ml_dtypes.finfo(tf.as_dtype(dtype).as_numpy_dtype).eps) / 2


def gamma(k, dtype="float32") -> float:
  """Higham's gamma_k = k u / (1 - k u): the worst-case relative error of a
  result reached through k roundings (Higham, "Accuracy and Stability of
  Numerical Algorithms", 2nd ed., lemma 3.1)."""
  u = unit_roundoff(dtype)
  return k * u / (1 - k * u)


# A bound that a result of n independent roundings exceeds with probability
# at most 2 exp(-LAMBDA^2 / 2) = 7e-6: |relative error| <= LAMBDA sqrt(n) u
# (Higham & Mary, "A New Approach to Probabilistic Rounding Error
# Analysis", SIAM J. Sci. Comput. 41(5), 2019). The worst case, n u, is
# what the same roundings could do if every one erred the same way.
LAMBDA = 5.0


def rounding_sites(model) -> int:
  """Half-precision roundings on the way from image to output.

  The image is rounded once on entry; every layer computing in half
  precision rounds its output, and a layer with weights also computes with
  rounded copies of them. Accumulations inside a layer are float32 (oneDNN
  and cuDNN accumulate half-precision products in float32), so they are not
  counted. Every layer of the model is counted although one path passes
  through a subset, so this overcounts.
  """
  layers = [layer for layer in model._flatten_layers()  # pylint: disable=protected-access
            if not list(layer._flatten_layers(include_self=False))]  # pylint: disable=protected-access
  half = [layer for layer in layers
          if layer.compute_dtype in ("float16", "bfloat16")]
  return 1 + len(half) + sum(1 for layer in half if layer.weights)


def _build(policy):
  with precision.policy_scope(policy):
    return simclr.build_simclr_model(
        config_lib.ModelConfig(resnet_depth=18, width_multiplier=0.125,
                               proj_out_dim=16),
        image_size=16, num_classes=4, train_mode="pretrain",
        with_supervised_head=True, temperature=0.5, weight_decay=1e-4)


def _batch(seed=0, batch=8):
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(batch, 16, 16, 6)).astype("float32")
  labels = np.eye(4, dtype="float32")[rng.integers(0, 4, batch)]
  return images, labels


def _losses(model, images, labels):
  terms = model.compute_losses(images, labels, model(images, training=True))
  return {name: value for name, value in terms.items()
          if name in (simclr.CONTRAST_LOSS, simclr.SUPERVISED_LOSS,
                      simclr.TOTAL_LOSS)}


def test_policy_scope_restores_the_global_policy():
  before = keras.config.dtype_policy().name
  with precision.policy_scope("mixed_float16") as policy:
    assert policy.compute_dtype == "float16"
    assert policy.variable_dtype == "float32"
  assert keras.config.dtype_policy().name == before
  with pytest.raises(ValueError, match="Received: precision='float8'"):
    with precision.policy_scope("float8"):
      pass


def _relative_error(got, expected):
  got = np.asarray(tf.cast(got, tf.float32), np.float64)
  expected = np.asarray(expected, np.float64)
  return np.linalg.norm(got - expected) / np.linalg.norm(expected)


@pytest.mark.parametrize("policy", sorted(COMPUTE_DTYPE))
def test_outputs_and_losses_stay_within_rounding_bounds_of_float32(policy):
  reference = _build("float32")
  mixed = _build(policy)
  for target, source in zip(mixed.weights, reference.weights):
    target.assign(source)
  # float32's own rounding (u = 6e-8) is negligible beside the half
  # precision's (4e-3 for bfloat16, 5e-4 for float16): float32 stands in for
  # the exact result. The bound assumes the layers pass relative errors on
  # without amplifying them; BatchNorm over a small batch amplifies a few
  # times, which LAMBDA = 5 leaves room for. A model with other weights
  # differs by 80% or more in these outputs, far outside the bound
  # (20% for bfloat16, 2.5% for float16 on this 53-layer model).
  bound = LAMBDA * np.sqrt(rounding_sites(mixed)) * unit_roundoff(
      COMPUTE_DTYPE[policy])
  assert bound < 0.25  # still far from "any output would do"
  for seed in range(3):
    images, labels = _batch(seed)
    expected = reference(images, training=True)
    got = mixed(images, training=True)
    for name in (simclr.PROJ_HEAD_INPUT, simclr.PROJ_HEAD_OUTPUT,
                 simclr.LOGITS_SUP):
      assert _relative_error(got[name], expected[name]) <= bound, name
    # The losses are functions of these outputs whose relative sensitivity
    # is below 1 (softmax cross-entropy moves by at most the largest logit
    # change, and the logits are bounded by 1 / temperature = 2).
    expected_losses = _losses(reference, images, labels)
    for name, value in _losses(mixed, images, labels).items():
      assert value.dtype == "float32", name
      assert _relative_error(value, expected_losses[name]) <= bound, name
  # The network really computes in half precision, on float32 variables...
  outputs = mixed(images, training=True)
  assert outputs[simclr.PROJ_HEAD_OUTPUT].dtype == COMPUTE_DTYPE[policy]
  assert {v.dtype for v in mixed.weights} == {"float32"}
  # ...and BatchNorm keeps float32 statistics.
  moving = [v for v in mixed.non_trainable_weights if "moving" in v.path]
  assert moving and all(v.dtype == "float32" for v in moving)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_losses_of_half_precision_inputs_are_float32_accurate(dtype):
  # Half-precision network outputs go into the losses; the losses must cast
  # first and compute in float32. Reference: the same math in float64 numpy
  # on the same (already rounded) values, so the only error left is the
  # loss's own float32 rounding, bounded in the worst case (gamma):
  batch, dim, temperature = 8, 16, 0.5
  rng = np.random.default_rng(0)
  hidden = tf.cast(rng.normal(size=(2 * batch, dim)), dtype)
  exact_hidden = np.asarray(tf.cast(hidden, tf.float64))
  loss, _, _ = losses.contrastive_loss(hidden, temperature=temperature)
  per_anchor, _ = numpy_nt_xent(exact_hidden, temperature)
  # The loss is the per-example sum of both directions, averaged.
  expected = 2 * per_anchor.mean()
  # Normalising a row takes `dim` squares and sums, a square root and a
  # division: gamma(dim + 3) relative per row. A cosine of two normalised
  # rows adds a dot product, gamma(dim), and dividing by the temperature one
  # rounding; |cosine| <= 1, so each logit is off by at most
  # (2 gamma(dim + 3) + gamma(dim + 1)) / temperature. A log-sum-exp over
  # the 2 * batch logits moves by at most the largest logit error, plus
  # gamma(2 * batch + 4) of its value for the exp, sum, log and max shift.
  # Each example adds two such cross-entropies; the mean adds gamma(batch).
  logit_error = (2 * gamma(dim + 3) + gamma(dim + 1)) / temperature
  per_direction = (2 * logit_error +
                   gamma(2 * batch + 4) * (1 + per_anchor.max()))
  bound = 2 * per_direction + gamma(batch) * abs(expected)
  assert loss.dtype == "float32"
  assert abs(float(loss) - expected) <= bound
  # One rounding of the loss to `dtype` alone moves it by up to u of its
  # value (2e-2 for bfloat16, 3e-3 for float16 here): more than ten times
  # the bound, so a loss computed in half precision fails the check above.
  assert bound < unit_roundoff(dtype) * abs(expected) / 10
  labels = np.eye(4)[rng.integers(0, 4, size=batch)]
  logits = tf.cast(rng.normal(size=(batch, 4)) * 3, dtype)
  exact_logits = np.asarray(tf.cast(logits, tf.float64))
  log_softmax = exact_logits - np.log(
      np.exp(exact_logits).sum(axis=1, keepdims=True))
  expected_sup = -np.mean(np.sum(labels * log_softmax, axis=1))
  got_sup = losses.supervised_loss(labels, logits)
  assert got_sup.dtype == "float32"
  # One log-sum-exp over 4 logits, then the mean over the batch.
  bound_sup = (gamma(4 + 4) * (1 + np.abs(log_softmax).max()) +
               gamma(batch) * abs(expected_sup))
  assert abs(float(got_sup) - expected_sup) <= bound_sup


def test_only_float16_gets_loss_scaling():
  lars = optimizers.LARS(0.1)
  assert precision.wrap_optimizer(lars, "float32") is lars
  assert precision.wrap_optimizer(lars, "mixed_bfloat16") is lars
  wrapped = precision.wrap_optimizer(lars, "mixed_float16")
  assert isinstance(wrapped, keras.optimizers.LossScaleOptimizer)
  assert precision.inner_optimizer(wrapped) is lars


def _lars():
  return optimizers.LARS(0.5, exclude_from_weight_decay=list(
      optimizers.LARS_EXCLUDE_FROM_WEIGHT_DECAY))


def test_float16_skips_steps_with_non_finite_gradients():
  model = _build("mixed_float16")
  optimizer = precision.wrap_optimizer(_lars(), "mixed_float16")
  model.compile(optimizer)
  model.build_optimizer_slots()
  dataset = tf.data.Dataset.from_tensors(_batch()).repeat()

  # A scale this large overflows the float16 backward pass: the step must be
  # skipped (weights and step count unchanged) and the scale halved.
  optimizer.dynamic_scale.assign(2.0 ** 40)
  before = [v.numpy() for v in model.trainable_weights]
  model.fit(dataset, steps_per_epoch=1, verbose=0)
  assert int(optimizer.iterations.numpy()) == 0
  assert float(optimizer.dynamic_scale.numpy()) == 2.0 ** 39
  for variable, value in zip(model.trainable_weights, before):
    np.testing.assert_array_equal(variable.numpy(), value, variable.path)

  # With a scale that fits, the step is applied, with the gradients
  # unscaled: it moves the weights as float32 training does from the same
  # state. BatchNorm parameters and biases skip LARS' trust ratio, so their
  # first step is -lr * gradient (the momentum starts at 0): a loss scale
  # left in the gradients multiplies it by the scale, 128 here, and a stale
  # or doubly removed scale by another power of two (loss scales are powers
  # of two). The fitted factor between the float16 and the float32 steps
  # must therefore be nearer 1 than the nearest wrong power of two, 2 or
  # 1/2: the decision bound is their geometric midpoint, sqrt(2). Float16
  # noise in the gradients (a few percent) moves the fitted factor by about
  # that much, well inside. Layer-adapted weights cancel any scale in the
  # trust ratio; they are held to the same bound, so their step has the
  # float32 direction and size.
  reference = _build("float32")
  for target, source in zip(reference.weights, model.weights):
    target.assign(source)
  reference.compile(_lars())
  reference.fit(dataset, steps_per_epoch=1, verbose=0)
  optimizer.dynamic_scale.assign(128.0)
  model.fit(dataset, steps_per_epoch=1, verbose=0)
  assert int(optimizer.iterations.numpy()) == 1
  lars = precision.inner_optimizer(optimizer)
  steps = {True: ([], []), False: ([], [])}  # adapted: (float16, float32)
  for mixed, ref, start in zip(model.trainable_weights,
                               reference.trainable_weights, before):
    got, expected = steps[lars.applies_layer_adaptation(mixed)]
    got.append(np.ravel(mixed.numpy() - start))
    expected.append(np.ravel(ref.numpy() - start))
  for adapted, (got, expected) in steps.items():
    got, expected = np.concatenate(got), np.concatenate(expected)
    assert np.any(expected), adapted
    factor = np.dot(got, expected) / np.dot(expected, expected)
    assert 2 ** -0.5 < factor < 2 ** 0.5, (adapted, factor)


@pytest.mark.parametrize("capabilities, expected", [
    ([(8, 0)], "mixed_bfloat16"), ([(9, 0), (8, 6)], "mixed_bfloat16"),
    ([(7, 5)], "float32"), ([(8, 0), (7, 0)], "float32"), ([None], "float32")])
def test_auto_on_gpus_follows_their_compute_capability(monkeypatch,
                                                       capabilities,
                                                       expected):
  """TensorFlow's device queries faked: the GPU branch on any host; the CPU
  flags are not read when there is a GPU."""
  gpus = [f"GPU:{i}" for i in range(len(capabilities))]
  details = {gpu: ({} if c is None else {"compute_capability": c})
             for gpu, c in zip(gpus, capabilities)}
  monkeypatch.setattr(tf.config, "list_physical_devices",
                      lambda kind=None: gpus if kind == "GPU" else [])
  monkeypatch.setattr(tf.config.experimental, "get_device_details",
                      details.__getitem__)
  monkeypatch.setattr(precision, "cpu_has_native_bfloat16",
                      lambda *a: pytest.fail("read the CPU flags"))
  precision._native_bfloat16.cache_clear()  # pylint: disable=protected-access
  try:
    assert precision.resolve("auto") == expected
  finally:
    monkeypatch.undo()
    precision._native_bfloat16.cache_clear()  # pylint: disable=protected-access


@pytest.mark.parametrize("flags_line, expected", [
    ("flags\t\t: fpu avx512f avx512_bf16 fma", True),
    ("flags\t\t: fpu amx_bf16 amx_tile", True),
    ("flags\t\t: fpu avx512f avx512_vnni", False),
])
def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path, flags_line,
                                                    expected):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text(f"processor\t: 0\nmodel name\t: x\n{flags_line}\n")
  assert precision.cpu_has_native_bfloat16(str(cpuinfo)) is expected
  assert precision.cpu_has_native_bfloat16(str(tmp_path / "none")) is False


def _native_bfloat16_here():
  """Where bfloat16 is native: every GPU of compute capability 8.0 or more
  (Ampere on), or with no GPU the CPU flags."""
  gpus = tf.config.list_physical_devices("GPU")
  if gpus:
    return all(tuple(tf.config.experimental.get_device_details(gpu).get(
        "compute_capability", (0, 0))) >= (8, 0) for gpu in gpus)
  return precision.cpu_has_native_bfloat16()


def test_auto_picks_bfloat16_exactly_where_the_machine_has_it():
  # On a CPU host the CPU flags decide, on a GPU host the GPUs.
  expected = "mixed_bfloat16" if _native_bfloat16_here() else "float32"
  assert precision.resolve("auto") == expected
  with precision.policy_scope("auto") as policy:
    assert policy.name == expected
  for name in ("float32", "mixed_bfloat16", "mixed_float16"):
    assert precision.resolve(name) == name
  # "auto" never means float16, so never loss scaling.
  assert not isinstance(precision.wrap_optimizer(_lars(), "auto"),
                        keras.optimizers.LossScaleOptimizer)


@pytest.mark.parametrize("precision_name, cpu_bf16, gpus, warns", [
    ("mixed_bfloat16", False, [], True),
    ("mixed_bfloat16", True, [], False),
    ("mixed_float16", False, [], True),
    ("mixed_float16", False, ["GPU:0"], False),
    ("float32", False, [], False),
    ("auto", False, [], False),
])
def test_a_forced_mixed_policy_warns_where_the_hardware_emulates_it(
    monkeypatch, precision_name, cpu_bf16, gpus, warns):
  """The hardware faked where TensorFlow and /proc/cpuinfo are asked."""
  monkeypatch.setattr(tf.config, "list_physical_devices",
                      lambda kind=None: gpus if kind == "GPU" else [])
  monkeypatch.setattr(tf.config.experimental, "get_device_details",
                      lambda gpu: {"compute_capability": (7, 0)})
  monkeypatch.setattr(precision, "cpu_has_native_bfloat16",
                      lambda *a: cpu_bf16)
  precision._native_bfloat16.cache_clear()  # pylint: disable=protected-access
  try:
    line = precision.emulation_warning(precision_name)
  finally:
    monkeypatch.undo()
    precision._native_bfloat16.cache_clear()  # pylint: disable=protected-access
  if not warns:
    assert line is None
    return
  assert "\n" not in line
  assert f"--precision={precision_name} is emulated" in line
  assert "--precision=auto" in line and "--precision=float32" in line


def test_emulation_warning_rejects_an_unknown_precision():
  with pytest.raises(ValueError, match="Received: precision='float8'"):
    precision.emulation_warning("float8")
