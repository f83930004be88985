"""Mixed precision: policies, what stays float32, loss scaling (correctness)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf import optimizers
from simclr_tf import precision
from simclr_tf.models import simclr

# Stated tolerances of each policy's losses against float32 on the same batch
# and weights (relative). bfloat16 keeps 8 significant bits (~0.4% per
# rounding), float16 11 bits (~0.05%).
LOSS_RTOL = {"mixed_bfloat16": 0.03, "mixed_float16": 0.005}
COMPUTE_DTYPE = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


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


@pytest.mark.parametrize("policy", sorted(LOSS_RTOL))
def test_losses_stay_within_tolerance_of_float32(policy):
  reference = _build("float32")
  mixed = _build(policy)
  for target, source in zip(mixed.weights, reference.weights):
    target.assign(source)
  for seed in range(3):
    images, labels = _batch(seed)
    expected = _losses(reference, images, labels)
    got = _losses(mixed, images, labels)
    for name, value in got.items():
      assert value.dtype == "float32", name
      np.testing.assert_allclose(float(value), float(expected[name]),
                                 rtol=LOSS_RTOL[policy], err_msg=name)
  # The network really computes in half precision, on float32 variables...
  outputs = mixed(images, training=True)
  assert outputs[simclr.PROJ_HEAD_OUTPUT].dtype == COMPUTE_DTYPE[policy]
  assert {v.dtype for v in mixed.weights} == {"float32"}
  # ...and BatchNorm keeps float32 statistics.
  moving = [v for v in mixed.non_trainable_weights if "moving" in v.path]
  assert moving and all(v.dtype == "float32" for v in moving)


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
  # state. (BatchNorm and biases skip LARS' trust ratio, so a missing
  # unscale would make their updates 128 times too large.)
  reference = _build("float32")
  for target, source in zip(reference.weights, model.weights):
    target.assign(source)
  reference.compile(_lars())
  reference.fit(dataset, steps_per_epoch=1, verbose=0)
  optimizer.dynamic_scale.assign(128.0)
  model.fit(dataset, steps_per_epoch=1, verbose=0)
  assert int(optimizer.iterations.numpy()) == 1
  errors = []
  for mixed, ref, start in zip(model.trainable_weights,
                               reference.trainable_weights, before):
    expected = ref.numpy() - start
    if np.any(expected):
      errors.append(np.linalg.norm(mixed.numpy() - start - expected) /
                    np.linalg.norm(expected))
  # float16 forward noise gives a few percent here (median 0.05, max 0.09
  # measured); a missing unscale would be off by a factor of 128.
  assert len(errors) > len(before) // 2
  assert np.median(errors) < 0.1 and np.max(errors) < 0.3


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


def test_auto_picks_bfloat16_exactly_where_the_cpu_has_it():
  # No GPU in the test environment: the CPU flags decide.
  assert not tf.config.list_physical_devices("GPU")
  expected = ("mixed_bfloat16" if precision.cpu_has_native_bfloat16()
              else "float32")
  assert precision.resolve("auto") == expected
  with precision.policy_scope("auto") as policy:
    assert policy.name == expected
  for name in ("float32", "mixed_bfloat16", "mixed_float16"):
    assert precision.resolve(name) == name
  # "auto" never means float16, so never loss scaling.
  assert not isinstance(precision.wrap_optimizer(_lars(), "auto"),
                        keras.optimizers.LossScaleOptimizer)
