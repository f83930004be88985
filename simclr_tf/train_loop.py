"""The train function `fit` calls: several steps per host call, any strategy.

Keras' own multi-step function (`steps_per_execution > 1`) fails under
`MirroredStrategy` (a placeholder error from its Optional-based while loop,
keras-team/keras#19246), and its `jit_compile` wraps `strategy.run`, which XLA
cannot place across devices. This replacement loops `strategy.run` with
`tf.range` inside one `tf.function`, compiles only the per-replica step when
XLA is on, and never runs past the model's step budget, so checkpoints and
the final step land exactly where asked.
"""

import tensorflow as tf


def make_train_function(model, steps_per_loop: int, jit_compile: bool):
  """Builds the function `keras.Model.fit` calls once per loop.

  Args:
    model: a compiled `SimCLRModel` (its `train_step`, optimizer, metrics
      and `stop_at_step`).
    steps_per_loop: optimizer steps per call (fit's `steps_per_execution`
      must be the same, so fit calls it the right number of times).
    jit_compile: compile each replica's train step with XLA.

  Returns:
    A function of the distributed iterator returning the metric results.
  """
  if steps_per_loop < 1:
    raise ValueError("`steps_per_loop` must be positive. Received: "
                     f"steps_per_loop={steps_per_loop}")
  strategy = model.distribute_strategy
  replica_step = model.train_step
  if jit_compile:
    replica_step = tf.function(replica_step, jit_compile=True,
                               reduce_retracing=True)

  @tf.function(reduce_retracing=True)
  def run_steps(iterator, num_steps):
    for _ in tf.range(num_steps):
      strategy.run(replica_step, args=(next(iterator),))

  def train_function(iterator):
    num_steps = steps_per_loop
    if model.stop_at_step is not None:
      done = int(model.optimizer.iterations.numpy())
      num_steps = min(num_steps, model.stop_at_step - done)
    if num_steps > 0:
      run_steps(iterator, tf.constant(num_steps, tf.int32))
    # Read in the cross-replica context: metric totals and counts are summed
    # over replicas, so these are exact global means.
    return model.metric_results()

  return train_function


def make_test_function(model):
  """Builds the function `keras.Model.evaluate` calls once per batch.

  Keras' own test function reduces each replica's metric results with
  `strategy.reduce(MEAN, ..., axis=0)` under `MultiWorkerMirroredStrategy`,
  which fails for scalar results. The metrics already hold exact global
  totals, so, as in training, they are read in the cross-replica context
  instead.

  Args:
    model: a compiled `SimCLRModel`.

  Returns:
    A function of the distributed iterator returning the metric results.
  """
  strategy = model.distribute_strategy

  @tf.function(reduce_retracing=True)
  def run_step(iterator):
    strategy.run(model.test_step, args=(next(iterator),))

  def test_function(iterator):
    run_step(iterator)
    return {metric.name: metric.result() for metric in model.metrics}

  return test_function
