"""BatchNormalization on TensorFlow's fused kernel where it applies.

Keras 3's TensorFlow backend computes BatchNorm as `tf.nn.moments` followed
by `tf.nn.batch_normalization`: a dozen element-wise ops forward and more
backward, each a full pass over the activations, in float32 even under a
bfloat16 policy (the layer upcasts its input). TensorFlow's
`FusedBatchNormV3` computes statistics, normalisation and their gradient in
one kernel each way, reads and writes the compute dtype (bfloat16 too, with
float32 statistics and accumulation) and is what tf-keras uses.

`BatchNormalization` here is Keras' layer with the same variables, names,
arguments and semantics, whose `call` runs:

- the fused kernel when the batch statistics are this replica's own: in
  inference, and in training unless `synchronized` with more than one
  replica in sync. Inputs of rank 2 are viewed as (N, 1, 1, C) and rank 4
  must be channels-last. The kernel returns the variance with Bessel's
  correction; the moving variance gets the biased one, as Keras' layer and
  the authors' code keep it.
- otherwise statistics over the global batch: each replica's own in two
  passes, combined by one all-reduce (two beyond `GATHER_MAX_REPLICAS`;
  Keras' own sync path makes three all-reduces, counts with a `ones_like`
  of the whole input and takes the variance as E[x^2] - E[x]^2, which
  cancels badly in float32), then
  `tf.nn.batch_normalization`, as Keras does. Unsynchronised, or on one
  replica, `tf.nn.moments`.

Statistics are float32 under every dtype policy. Masks and batch
renormalisation, which the fused kernel cannot do, fall back to Keras' own
`call`, as does every backend other than TensorFlow: on JAX the layer is
Keras' own, and `synchronized` needs nothing more there, since the step's
batch axis already spans every device (see `simclr_tf.replicas`).
TensorFlow is imported only on the TensorFlow backend.
"""

import contextlib
import threading

import keras

if keras.backend.backend() == "tensorflow":
  import tensorflow as tf

# The computation `call` takes (`BatchNormalization.kernel_path`).
FUSED = "fused"
SYNCHRONIZED_FUSED = "synchronized_fused"
UNFUSED = "unfused"
KERAS = "keras"

# Up to this many replicas, synchronised statistics take one all-reduce (a
# table of every replica's count, mean and squared deviations, 2C + 1 values
# a replica); beyond, two all-reduces of C values each
# (`BatchNormalization._global_moments`). The step waits on every
# collective, and a ResNet has one BatchNorm layer per convolution.
GATHER_MAX_REPLICAS = 8

# The layers whose moving-average updates `deferred_moving_updates` holds
# back, per thread: MirroredStrategy runs each replica's step in its own
# thread on the same layer objects. Maps id(layer) to its statistics list.
_DEFERRED = threading.local()


def _deferred_statistics(layer):
  """The list `layer`'s statistics go to in this thread, or None."""
  return getattr(_DEFERRED, "lists", {}).get(id(layer))


@keras.saving.register_keras_serializable(package="simclr_tf")
class BatchNormalization(keras.layers.BatchNormalization):
  """`keras.layers.BatchNormalization` using the fused kernel when it can.

  Args:
    fused: use TensorFlow's fused kernel where it applies (see the module
      docstring). False always takes the unfused statistics path, as a
      reference and for comparisons.
    **kwargs: `keras.layers.BatchNormalization` arguments.
  """

  def __init__(self, fused=True, synchronized=False, **kwargs):
    # Keras refuses `synchronized` off TensorFlow. There the step's batch
    # axis already spans every device, so the statistics are global anyway.
    # The argument is kept for `get_config`, so a saved model means the same
    # on every backend.
    super().__init__(
        synchronized=synchronized and keras.backend.backend() == "tensorflow",
        **kwargs)
    self._synchronized_argument = synchronized
    if not isinstance(fused, bool):
      raise ValueError(f"`fused` must be a bool. Received: fused={fused!r}")
    self.fused = fused

  def kernel_path(self, input_rank, training, replicas, masked=False):
    """Which computation `call` runs for such an input.

    Args:
      input_rank: the input's rank.
      training: whether the call is in training mode.
      replicas: the replicas in sync (1 outside a strategy's replica
        context).
      masked: whether a mask is passed.

    Returns:
      `FUSED`, `SYNCHRONIZED_FUSED`, `UNFUSED` or `KERAS`.
    """
    channels_last = self.axis in (-1, input_rank - 1)
    if (masked or self.renorm or keras.backend.backend() != "tensorflow" or
        not (channels_last and input_rank in (2, 4))):
      return KERAS
    training = bool(training) and self.trainable
    local_statistics = not self.synchronized or replicas == 1
    if self.fused and (not training or local_statistics):
      return FUSED
    return SYNCHRONIZED_FUSED if self.fused else UNFUSED

  def call(self, inputs, training=None, mask=None):
    replicas = None
    if keras.backend.backend() == "tensorflow":
      replicas = tf.distribute.get_replica_context()
    # None in a cross-replica context: the strategy's whole batch is here.
    replicas = 1 if replicas is None else replicas.num_replicas_in_sync
    path = self.kernel_path(len(inputs.shape), training, replicas,
                            masked=mask is not None)
    if path == KERAS:
      if training and _deferred_statistics(self) is not None:
        raise ValueError(
            f"{self.name}: moving-average updates can be deferred only on "
            "this layer's own TensorFlow paths, not Keras' (masks, renorm, "
            "channels-first or rank other than 2 and 4). Received: "
            f"input rank {len(inputs.shape)}, renorm={self.renorm}")
      return super().call(inputs, training=training, mask=mask)
    training = bool(training) and self.trainable
    if path == FUSED:
      return self._fused_call(inputs, training)
    if path == SYNCHRONIZED_FUSED:
      return self._synchronized_fused_call(inputs)
    return self._statistics_call(inputs, training)

  def _scale_and_offset(self, channels):
    gamma = self.gamma if self.scale else tf.ones((channels,), tf.float32)
    beta = self.beta if self.center else tf.zeros((channels,), tf.float32)
    return tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta)

  def _update_moving(self, mean, variance):
    mean = tf.stop_gradient(mean)
    variance = tf.stop_gradient(variance)
    deferred = _deferred_statistics(self)
    if deferred is not None:
      deferred.append((mean, variance))
      return
    self.update_moving_statistics(mean, variance)

  def update_moving_statistics(self, mean, variance):
    """One moving-average update towards the given batch statistics.

    Args:
      mean: (channels,) float32 batch mean.
      variance: (channels,) float32 biased batch variance.
    """
    self.moving_mean.assign(self.moving_mean * self.momentum
                            + mean * (1.0 - self.momentum))
    self.moving_variance.assign(self.moving_variance * self.momentum
                                + variance * (1.0 - self.momentum))

  def _fused_inputs(self, inputs):
    """(x as the fused kernels take it, whether it was rank 2, gamma, beta)."""
    x = tf.convert_to_tensor(inputs)
    rank_2 = len(x.shape) == 2
    if rank_2:
      x = x[:, None, None, :]
    # The kernels take float32, float16 or bfloat16 (the policy's compute
    # dtype) and keep float32 statistics.
    if x.dtype not in (tf.float16, tf.bfloat16):
      x = tf.cast(x, tf.float32)
    gamma, beta = self._scale_and_offset(x.shape[-1])
    return x, rank_2, gamma, beta

  def _fused_call(self, inputs, training):
    x, rank_2, gamma, beta = self._fused_inputs(inputs)
    if training:
      empty = tf.constant([], tf.float32)
      y, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
          x=x, scale=gamma, offset=beta, mean=empty, variance=empty,
          epsilon=self.epsilon, exponential_avg_factor=1.0,
          data_format="NHWC", is_training=True)
      count = tf.cast(tf.size(x, out_type=tf.int64) // x.shape[-1],
                      tf.float32)
      variance = unbiased_variance * ((count - 1.0) / tf.maximum(count, 1.0))
      self._update_moving(mean, variance)
    else:
      y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
          x=x, scale=gamma, offset=beta,
          mean=tf.convert_to_tensor(self.moving_mean),
          variance=tf.convert_to_tensor(self.moving_variance),
          epsilon=self.epsilon, exponential_avg_factor=1.0,
          data_format="NHWC", is_training=False)
    if rank_2:
      y = y[:, 0, 0, :]
    return tf.cast(y, self.compute_dtype)

  def _synchronized_fused_call(self, inputs):
    """Training with global statistics, on the fused kernels both ways.

    The forward pass is the fused kernel in inference mode, given the
    global mean and variance. Its gradient treats those as constants, so
    the custom gradient adds their part: with N the global count and
    x_hat = (x - mean) / sqrt(variance + eps),

      dx = gamma / sqrt(variance + eps) *
           (dy - sum(dy) / N - x_hat * sum(dy * x_hat) / N),

    where the two per-channel sums are over the global batch: the fused
    gradient kernel gives this replica's, and one all-reduce adds the
    others'. The gradients of gamma and beta are this replica's sums; the
    step's gradient all-reduce adds them up like any other weight's.
    """
    x, rank_2, gamma, beta = self._fused_inputs(inputs)
    context = tf.distribute.get_replica_context()
    epsilon = self.epsilon

    @tf.custom_gradient
    def normalise(x, gamma, beta):
      x32 = tf.cast(x, tf.float32)
      mean, variance = self._global_moments(x32)
      y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
          x=x, scale=gamma, offset=beta, mean=mean, variance=variance,
          epsilon=epsilon, exponential_avg_factor=1.0, data_format="NHWC",
          is_training=False)

      def gradient(dy, unused_dmean, unused_dvariance):
        # Local parts: dy * gamma / sqrt(variance + eps), sum(dy * x_hat)
        # and sum(dy), from the fused gradient kernel.
        dx_local, dgamma, dbeta, _, _ = tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=dy, x=x, scale=gamma, reserve_space_1=mean,
            reserve_space_2=variance,
            reserve_space_3=tf.constant([], tf.float32), epsilon=epsilon,
            data_format="NHWC", is_training=False)
        channels = x.shape[-1]
        count = tf.cast(tf.size(x, out_type=tf.int64) // channels,
                        tf.float32)
        sums = context.all_reduce(
            tf.distribute.ReduceOp.SUM,
            tf.concat([dbeta, dgamma, count[None]], 0))
        sum_dy, sum_dy_x_hat = sums[:channels], sums[channels:-1]
        total = sums[-1]
        inv_std = tf.math.rsqrt(variance + epsilon)
        # dx = dx_local - (a + b * x), per channel a and b.
        b = gamma * tf.square(inv_std) * sum_dy_x_hat / total
        a = gamma * inv_std * sum_dy / total - b * mean
        dx = tf.cast(dx_local, tf.float32) - (a + b * x32)
        return tf.cast(dx, x.dtype), dgamma, dbeta

      return (y, mean, variance), gradient

    y, mean, variance = normalise(x, gamma, beta)
    self._update_moving(mean, variance)
    if rank_2:
      y = y[:, 0, 0, :]
    return tf.cast(y, self.compute_dtype)

  def _statistics_call(self, inputs, training):
    x = tf.cast(inputs, tf.float32)
    gamma, beta = self._scale_and_offset(x.shape[-1])
    if training:
      mean, variance = self._global_moments(x)
      self._update_moving(mean, variance)
    else:
      mean = tf.convert_to_tensor(self.moving_mean)
      variance = tf.convert_to_tensor(self.moving_variance)
    y = tf.nn.batch_normalization(x, mean, variance, offset=beta,
                                  scale=gamma,
                                  variance_epsilon=self.epsilon)
    return tf.cast(y, self.compute_dtype)

  def _global_moments(self, x):
    """Per-channel mean and biased variance over the global batch.

    Each replica takes its own count, mean and sum of squared deviations
    from that mean (two local passes, so nothing cancels). Up to
    `GATHER_MAX_REPLICAS` replicas, one all-reduce gathers every replica's
    triple: each writes its own row of an otherwise zero table. They
    combine as in Chan et al.'s parallel variance,

      M2 = sum_r M2_r + sum_r n_r (mean_r - mean)^2,

    whose second term is a sum of squares, not a difference. With more
    replicas the table would outgrow the statistics, so two all-reduces of
    per-channel sums are made instead: the mean first, then the squared
    deviations from it. The one-pass E[x^2] - E[x]^2 loses the variance
    to cancellation in float32 when the mean is large against the spread
    (a mean of 40 and a spread of 0.5 lose 2%).
    """
    axes = list(range(len(x.shape) - 1))
    channels = x.shape[-1]
    count = tf.cast(tf.size(x, out_type=tf.int64) // channels, tf.float32)
    context = tf.distribute.get_replica_context()
    if (not self.synchronized or context is None
        or context.num_replicas_in_sync == 1):
      return tf.nn.moments(x, axes)

    def global_sum(tensor):
      return context.all_reduce(tf.distribute.ReduceOp.SUM, tensor)

    replicas = context.num_replicas_in_sync
    if replicas <= GATHER_MAX_REPLICAS:
      # The corrected two-pass sums (Chan, Golub and LeVeque): the mean's
      # rounding error, which the between-replica term would carry at
      # first order, is summed back from the deviations. divide_no_nan:
      # a replica may hold no rows of a last batch.
      first_mean = tf.math.divide_no_nan(tf.reduce_sum(x, axes), count)
      deviation = x - first_mean
      correction = tf.reduce_sum(deviation, axes)
      local_mean = first_mean + tf.math.divide_no_nan(correction, count)
      local_squared = (tf.reduce_sum(tf.square(deviation), axes) -
                       tf.math.divide_no_nan(tf.square(correction), count))
      row = tf.concat([count[None], local_mean, local_squared], 0)
      mine = tf.one_hot(context.replica_id_in_sync_group, replicas,
                        dtype=tf.float32)
      table = global_sum(mine[:, None] * row[None, :])
      counts = table[:, :1]
      means = table[:, 1:channels + 1]
      total_count = tf.reduce_sum(counts)
      mean = tf.math.divide_no_nan(tf.reduce_sum(counts * means, 0),
                                   total_count)
      squared = (tf.reduce_sum(table[:, channels + 1:], 0) +
                 tf.reduce_sum(counts * tf.square(means - mean), 0))
      return mean, tf.math.divide_no_nan(squared, total_count)
    sums = global_sum(tf.concat([tf.reduce_sum(x, axes), count[None]], 0))
    total_count = sums[-1]
    mean = tf.math.divide_no_nan(sums[:channels], total_count)
    squared = global_sum(tf.reduce_sum(tf.square(x - mean), axes))
    return mean, tf.math.divide_no_nan(squared, total_count)

  def get_config(self):
    config = super().get_config()
    config.update(fused=self.fused, synchronized=self._synchronized_argument)
    return config


def batch_norm_layers(model):
  """This module's BatchNormalization layers inside `model`, in order.

  Args:
    model: a Keras layer or model.

  Returns:
    A list of `BatchNormalization` layers.

  Raises:
    ValueError: `model` holds Keras' own BatchNormalization, whose
      moving averages `deferred_moving_updates` cannot hold back.
  """
  # Keras 3 has no public recursive walk of sublayers.
  found = []
  for layer in model._flatten_layers(include_self=True, recursive=True):  # pylint: disable=protected-access
    if isinstance(layer, BatchNormalization):
      found.append(layer)
    elif isinstance(layer, keras.layers.BatchNormalization):
      raise ValueError(
          f"{layer.name} is Keras' own BatchNormalization; deferred "
          "moving-average updates need simclr_tf.models.batch_norm's. "
          f"Received: {type(layer).__name__}")
  return found


@contextlib.contextmanager
def deferred_moving_updates(layers):
  """Holds back the moving-average updates of `layers` while inside.

  A training-mode call of a held layer appends its batch statistics
  (mean, biased variance; float32, no gradient) to the layer's list and
  leaves the moving averages as they were. The caller decides what, if
  anything, to apply, with `BatchNormalization.update_moving_statistics`.
  Statistics are appended when the call is traced, so inside a
  `tf.function` the lists hold that graph's tensors. It holds them for the
  calling thread only: under MirroredStrategy each replica defers its own.

  Args:
    layers: `BatchNormalization` layers, e.g. `batch_norm_layers(model)`.

  Yields:
    A list of (layer, statistics) pairs, one per layer, statistics being
    the list of (mean, variance) of its calls, in call order.
  """
  layers = list(layers)
  for layer in layers:
    if _deferred_statistics(layer) is not None:
      raise ValueError(f"{layer.name}: moving-average updates are already "
                       "deferred (nested deferred_moving_updates).")
  lists = getattr(_DEFERRED, "lists", None)
  if lists is None:
    lists = _DEFERRED.lists = {}
  held = [(layer, []) for layer in layers]
  try:
    for layer, statistics in held:
      lists[id(layer)] = statistics
    yield held
  finally:
    for layer in layers:
      lists.pop(id(layer), None)
