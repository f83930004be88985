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

What stays float32 under every policy, and where that is done:

- the contrastive logits, softmax and loss (`losses.contrastive_loss` casts
  the projections first) and the supervised loss (`losses.supervised_loss`);
- BatchNorm statistics (Keras' BatchNormalization upcasts its inputs to
  float32 for the moments, also when synchronised across replicas);
- LARS norms and updates (`optimizers.LARS` computes in float32) and the L2
  weight-decay term (`optimizers.l2_weight_decay`).
"""

import contextlib

import keras

from simclr_tf.config import PRECISIONS


def _check(precision):
  if precision not in PRECISIONS:
    raise ValueError(f"`precision` must be one of {', '.join(PRECISIONS)}. "
                     f"Received: precision={precision!r}")


@contextlib.contextmanager
def policy_scope(precision: str):
  """Sets Keras' global dtype policy for the layers built inside.

  Layers take their policy when they are constructed, so build the model in
  this scope; the previous global policy comes back on exit, so the setting
  does not leak into later models in the same process.

  Args:
    precision: one of `PRECISIONS`.

  Yields:
    The `keras.DTypePolicy` in force.
  """
  _check(precision)
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
  _check(precision)
  if precision != "mixed_float16":
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
