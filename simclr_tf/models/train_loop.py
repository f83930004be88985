"""The train function `fit` calls: several steps per host call, any strategy.

Keras' own multi-step function (`steps_per_execution > 1`) fails under
`MirroredStrategy` (a placeholder error from its Optional-based while loop,
keras-team/keras#19246), and its `jit_compile` wraps `strategy.run`, which XLA
cannot place across devices. This replacement loops `strategy.run` with
`tf.range` inside one `tf.function`, compiles only the per-replica work when
XLA is on, and never runs past the model's step budget, so checkpoints and
the final step land exactly where asked.

What XLA compiles depends on the strategy (`xla_scope`):

- "step": the whole per-replica step (on-device augmentation, forward,
  loss, backward, optimizer update). One replica (default, one-device or a
  one-device mirrored strategy), and mirrored or multi-worker strategies
  whose devices are all GPUs: there TensorFlow runs the cross-replica sums
  and gathers as XLA collectives.
- "augmentation": only the on-device augmentation. Mirrored strategies over
  CPU devices (`cpu_replicas`) synchronise replicas with `merge_call`
  (gradient all-reduce, sync BatchNorm, the loss' all-gather), which cannot
  run inside a compiled function; the rest of the step runs as a graph.
- "tpu": TPUStrategy compiles the whole step with XLA anyway.
"""

import tensorflow as tf

XLA_STEP = "step"
XLA_AUGMENTATION = "augmentation"
XLA_TPU = "tpu"

# How often a loop reruns its remaining steps when some were skipped
# (non-finite float16 gradients). A float16 run starts at a loss scale of
# 2^15 and its first steps halve it until the gradients fit: a few skips.
MAX_RETRIES_PER_LOOP = 32


def xla_scope(strategy) -> str:
  """What `jit_compile=True` compiles per replica under `strategy`.

  Args:
    strategy: a `tf.distribute.Strategy`.

  Returns:
    `XLA_STEP`, `XLA_AUGMENTATION` or `XLA_TPU` (see the module docstring).
  """
  if isinstance(strategy, (tf.distribute.TPUStrategy,
                           tf.distribute.experimental.TPUStrategy)):
    return XLA_TPU
  if strategy.num_replicas_in_sync == 1:
    return XLA_STEP
  devices = getattr(strategy.extended, "worker_devices", ())
  if devices and all(tf.DeviceSpec.from_string(d).device_type == "GPU"
                     for d in devices):
    return XLA_STEP
  return XLA_AUGMENTATION


def _with_augmentation(step, augmentation, iterations):
  """`step` on (views, labels) made from (images, labels).

  The augmentation gets the replica's id over the whole cluster and the
  optimizer step, so that its stateless draws differ between replicas and
  workers and repeat for a given seed, cluster shape and step.
  """
  if augmentation is None:
    return step

  def augmented_step(data):
    images, *rest = data
    replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
    views = augmentation(images, tf.cast(replica_id, tf.int64),
                         tf.convert_to_tensor(iterations))
    return step((views, *rest))

  return augmented_step


def _traced_with_threefry(augmentation):
  """`augmentation` tracing its stateless draws with ThreeFry (XLA only)."""
  from simclr_tf.augment import host as augment  # Only the compiled path needs it.

  def traced(*args):
    with augment.xla_random():
      return augmentation(*args)

  return traced


def make_train_function(model, steps_per_loop: int, jit_compile: bool):
  """Builds the function `keras.Model.fit` calls once per loop.

  Args:
    model: a compiled `SimCLRModel` (its `train_step`, optimizer, metrics,
      `stop_at_step` and `train_augmentation`). A `train_augmentation`
      `(images, replica_id, step)` turns each batch's images into the views
      on the device, before `train_step`.
    steps_per_loop: optimizer steps per call (fit's `steps_per_execution`
      must be the same, so fit calls it the right number of times).
    jit_compile: compile each replica's work with XLA, as far as the
      strategy allows (`xla_scope`).

  Returns:
    A function of the distributed iterator returning the metric results.
  """
  if steps_per_loop < 1:
    raise ValueError("`steps_per_loop` must be positive. Received: "
                     f"steps_per_loop={steps_per_loop}")
  strategy = model.distribute_strategy
  augmentation = getattr(model, "train_augmentation", None)
  scope = xla_scope(strategy) if jit_compile else None
  if scope is not None and augmentation is not None:
    # Compiled in every scope: the stateless draws' fast algorithm there.
    augmentation = _traced_with_threefry(augmentation)
  if scope == XLA_AUGMENTATION and augmentation is not None:
    augmentation = tf.function(augmentation, jit_compile=True)
  replica_step = _with_augmentation(model.train_step, augmentation,
                                    model.optimizer.iterations)
  if scope == XLA_STEP:
    # Handed to `strategy.run` as a compiled tf.function: on GPUs mirrored
    # strategies then call it once per replica with XLA collectives.
    replica_step = tf.function(replica_step, jit_compile=True,
                               reduce_retracing=True)

  @tf.function(reduce_retracing=True)
  def run_steps(iterator, num_steps):
    for _ in tf.range(num_steps):
      strategy.run(replica_step, args=(next(iterator),))

  def train_function(iterator):
    if model.stop_at_step is None:
      run_steps(iterator, tf.constant(steps_per_loop, tf.int32))
      return model.metric_results()
    done = int(model.optimizer.iterations.numpy())
    target = min(done + steps_per_loop, model.stop_at_step)
    # A loss-scaled (float16) step whose gradients overflow is skipped and
    # not counted; run more batches so the loop still ends at its step and
    # the run at `stop_at_step`. Bounded, in case the loss itself diverged.
    for _ in range(1 + MAX_RETRIES_PER_LOOP):
      if done >= target:
        break
      run_steps(iterator, tf.constant(target - done, tf.int32))
      done = int(model.optimizer.iterations.numpy())
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
