"""Mixed precision: Keras dtype policies and loss scaling.

`--precision` is one of `PRECISIONS`:

- "float32": everything in float32.
- "mixed_bfloat16": layers compute in bfloat16, variables stay float32. No
  loss scaling: bfloat16 has float32's exponent range.
- "mixed_float16": layers compute in float16, variables stay float32, and
  the optimizer is wrapped in `keras.optimizers.LossScaleOptimizer`, which
  scales the loss up before the gradient, unscales the gradients, and skips
  (does not apply, does not count) a step whose gradients are not finite,
  halving the scale.
- "auto": "mixed_bfloat16" where the hardware computes bfloat16 natively,
  else "float32" (`resolve`): TPUs; GPUs of compute capability 8.0 or more
  (Ampere on), when every GPU has it; with no GPU, CPUs whose flags show
  AVX512-BF16 or AMX-BF16 (Linux /proc/cpuinfo). Elsewhere bfloat16 is
  emulated and slower than float32.

What stays float32 under every policy, and where that is done:

- the contrastive logits, softmax and loss (`losses.contrastive_loss` casts
  the projections first) and the supervised loss (`losses.supervised_loss`);
- BatchNorm statistics (`models.batch_norm.BatchNormalization`: the fused
  kernel accumulates and returns float32 statistics of bfloat16 or float16
  inputs; the synchronised path upcasts its inputs to float32);
- LARS norms and updates (`optimizers.LARS` computes in float32) and the L2
  weight-decay term (`optimizers.l2_weight_decay`).
"""

import contextlib
import functools

import keras

from simclr_tf.config import PRECISIONS

AUTO = "auto"
# CPU flags (Linux names) of native bfloat16 arithmetic.
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_CPUINFO = "/proc/cpuinfo"


def _check(precision):
  if precision not in PRECISIONS:
    raise ValueError(f"`precision` must be one of {', '.join(PRECISIONS)}. "
                     f"Received: precision={precision!r}")


def cpu_has_native_bfloat16(cpuinfo_path=_CPUINFO):
  """Whether the host CPU's flags include a bfloat16 instruction set.

  Args:
    cpuinfo_path: the Linux CPU description; missing (other systems) means
      no.

  Returns:
    True if a "flags" line names avx512_bf16 or amx_bf16.
  """
  try:
    with open(cpuinfo_path) as cpuinfo:
      for line in cpuinfo:
        if line.startswith("flags"):
          return any(flag in line.split() for flag in _CPU_BF16_FLAGS)
  except OSError:
    pass
  return False


@functools.lru_cache(maxsize=None)
def _native_bfloat16():
  import tensorflow as tf  # Device queries are TensorFlow's.
  strategy = tf.distribute.get_strategy()
  if isinstance(strategy, (tf.distribute.TPUStrategy,
                           tf.distribute.experimental.TPUStrategy)):
    return True
  gpus = tf.config.list_physical_devices("GPU")
  if gpus:
    capabilities = [tf.config.experimental.get_device_details(gpu).get(
        "compute_capability", (0, 0)) for gpu in gpus]
    return all(tuple(c) >= (8, 0) for c in capabilities)
  return cpu_has_native_bfloat16()


def resolve(precision: str) -> str:
  """The precision to run: "auto" decided for this machine, others as is.

  Args:
    precision: one of `PRECISIONS`.

  Returns:
    "float32", "mixed_bfloat16" or "mixed_float16".
  """
  _check(precision)
  if precision != AUTO:
    return precision
  return "mixed_bfloat16" if _native_bfloat16() else "float32"


def _has_gpu():
  import tensorflow as tf  # Device queries are TensorFlow's.
  return bool(tf.config.list_physical_devices("GPU"))


def emulation_warning(precision: str):
  """One console line when a forced mixed policy is emulated here, else None.

  "auto" never warns: it picks float32 where bfloat16 is emulated. A forced
  "mixed_bfloat16" on a CPU without AVX512-BF16 or AMX, or "mixed_float16"
  with no GPU, runs each op through float32 conversions; measured on a
  2-core AVX2-only EPYC, 10 steps of ResNet-18 at 32 px took over 11 minutes
  in bfloat16 against about 1 in float32.

  Args:
    precision: one of `PRECISIONS`.

  Returns:
    The warning line, or None when the precision runs natively.
  """
  _check(precision)
  if precision == "mixed_bfloat16":
    native = _native_bfloat16()
  elif precision == "mixed_float16":
    native = _has_gpu()
  else:
    return None
  if native:
    return None
  unit = "bfloat16" if precision == "mixed_bfloat16" else "float16"
  return (f"warning: --precision={precision} is emulated on this hardware "
          f"(no native {unit} arithmetic), which can be many times slower "
          "than float32; use --precision=auto (float32 here) or "
          "--precision=float32.")


@contextlib.contextmanager
def policy_scope(precision: str):
  """Sets Keras' global dtype policy for the layers built inside.

  Layers take their policy when they are constructed, so build the model in
  this scope; the previous global policy comes back on exit, so the setting
  does not leak into later models in the same process.

  Args:
    precision: one of `PRECISIONS` ("auto" is resolved first).

  Yields:
    The `keras.DTypePolicy` in force.
  """
  precision = resolve(precision)
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(precision)
  try:
    yield keras.config.dtype_policy()
  finally:
    keras.config.set_dtype_policy(previous)


def wrap_optimizer(optimizer, precision: str):
  """Adds dynamic loss scaling when the precision needs it.

  Args:
    optimizer: a Keras optimizer.
    precision: one of `PRECISIONS`.

  Returns:
    `keras.optimizers.LossScaleOptimizer(optimizer)` for "mixed_float16",
    else `optimizer` itself.
  """
  if resolve(precision) != "mixed_float16":
    return optimizer
  return keras.optimizers.LossScaleOptimizer(optimizer)


def inner_optimizer(optimizer):
  """The optimizer that owns the slots and iterations.

  Args:
    optimizer: a Keras optimizer, possibly a `LossScaleOptimizer`.

  Returns:
    The wrapped optimizer of a `LossScaleOptimizer`, else `optimizer`.
  """
  if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
    return optimizer.inner_optimizer
  return optimizer
