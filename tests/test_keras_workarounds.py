"""Keras bugs that `SimCLRModel` works around with a private override.

Each test reproduces the bug with plain Keras. When one starts failing, Keras
has fixed the bug: remove the override its docstring names.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf


class _LazyDense(keras.Model):
  """A model whose weights are built on first call, from the data."""

  def __init__(self):
    super().__init__()
    self.dense = keras.layers.Dense(1)

  def call(self, inputs):
    return self.dense(inputs)


def test_keras_cannot_build_a_model_from_uneven_replica_batches(
    two_replica_strategy):
  """`SimCLRModel._maybe_symbolic_build` exists for this: Keras builds an
  unbuilt model from the first batch, summed over replicas with `AddN`, which
  fails when replicas hold different batch sizes (a short eval split)."""
  with two_replica_strategy.scope():
    model = _LazyDense()
    model.compile(loss="mse")
  three_examples = tf.data.Dataset.from_tensor_slices(
      (np.zeros((3, 4), "float32"), np.zeros((3, 1), "float32"))).batch(4)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="must have the same size and shape"):
    model.evaluate(three_examples, verbose=0)
