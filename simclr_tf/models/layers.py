"""Building blocks of the SimCLR ResNet, as in the authors' implementation."""

import keras
from keras import layers
from keras import ops

from simclr_tf.models import batch_norm as batch_norm_lib

BATCH_NORM_EPSILON = 1e-5


def track_layer_list(owner, prefix, layer_list):
  """Makes layers held in a Python list visible to tf.train.Checkpoint.

  Keras keeps list attributes in its own TrackedList, which TensorFlow's
  object-graph checkpointing does not follow; without this the layers'
  variables are saved only through the optimizer's variable list, and a
  restore through the model (e.g. loading a pretrained encoder) misses them.
  Each layer is also set as a named attribute, which TensorFlow does follow.

  Args:
    owner: the layer holding the list.
    prefix: attribute name prefix; layer i becomes `{prefix}_{i}`.
    layer_list: the layers.
  """
  for index, layer in enumerate(layer_list):
    setattr(owner, f"{prefix}_{index}", layer)


def conv_initializer():
  # The authors' VarianceScaling(): scale 1, fan-in, truncated normal.
  return keras.initializers.VarianceScaling()


@keras.saving.register_keras_serializable(package="simclr_tf")
class BatchNormRelu(layers.Layer):
  """BatchNorm, optionally followed by ReLU.

  The inner layer is named `batch_normalization` so its variables match the
  optimizer's BatchNorm exclusion pattern by path.

  Args:
    relu: apply ReLU after normalising.
    init_zero: start gamma at 0, so a residual branch starts as identity.
    center: learn beta.
    scale: learn gamma.
    momentum: moving-average momentum (the authors' batch_norm_decay).
    synchronized: compute batch statistics over the global batch across
      replicas (sync BN).
    fused: use TensorFlow's fused BatchNorm kernel where it applies (see
      `batch_norm.BatchNormalization`); the result is the same.
  """

  def __init__(self, relu=True, init_zero=False, center=True, scale=True,
               momentum=0.9, synchronized=False, fused=True, **kwargs):
    super().__init__(**kwargs)
    self.relu = relu
    self.init_zero = init_zero
    self.center = center
    self.scale = scale
    self.momentum = momentum
    self.synchronized = synchronized
    self.fused = fused
    self.batch_norm = batch_norm_lib.BatchNormalization(
        momentum=momentum, epsilon=BATCH_NORM_EPSILON, center=center,
        scale=scale, gamma_initializer="zeros" if init_zero else "ones",
        synchronized=synchronized, fused=fused, name="batch_normalization")

  def build(self, input_shape):
    self.batch_norm.build(input_shape)

  def call(self, inputs, training=None):
    outputs = self.batch_norm(inputs, training=training)
    return ops.relu(outputs) if self.relu else outputs

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(relu=self.relu, init_zero=self.init_zero,
                  center=self.center, scale=self.scale,
                  momentum=self.momentum, synchronized=self.synchronized,
                  fused=self.fused)
    return config


def fixed_padding(inputs, kernel_size):
  """Pads H and W so a strided convolution's output size ignores input size."""
  pad_total = kernel_size - 1
  pad_begin = pad_total // 2
  pad_end = pad_total - pad_begin
  return ops.pad(inputs, [[0, 0], [pad_begin, pad_end], [pad_begin, pad_end],
                          [0, 0]])


# TensorFlow 2.21's oneDNN filter gradient of a strided 1x1 "valid"
# convolution corrupts the heap when the input has fewer than this many
# channels and is at least about 48 px (found at width_multiplier=0.125 and
# 224 px: the process dies in the first step). Below it, the stride is taken
# by subsampling first, the same arithmetic; above it the strided kernel is
# kept, as it is about twice as fast.
STRIDED_1X1_MIN_CHANNELS = 16


@keras.saving.register_keras_serializable(package="simclr_tf")
class Conv2DFixedPadding(layers.Layer):
  """Bias-free convolution; strided ones pad explicitly instead of "same".

  A strided 1x1 convolution on fewer than `STRIDED_1X1_MIN_CHANNELS` input
  channels subsamples its input and convolves at stride 1, which computes
  the same outputs (see the constant for why).

  Args:
    filters: output channels.
    kernel_size: square kernel side.
    strides: square stride.
  """

  def __init__(self, filters, kernel_size, strides, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.kernel_size = kernel_size
    self.strides = strides
    self.subsample = False
    self.conv = None

  def build(self, input_shape):
    channels = input_shape[-1]
    # Unknown channels take the subsampling route: it is right either way.
    self.subsample = (self.kernel_size == 1 and self.strides > 1 and
                      (channels is None or
                       channels < STRIDED_1X1_MIN_CHANNELS))
    conv_strides = 1 if self.subsample else self.strides
    self.conv = layers.Conv2D(
        self.filters, self.kernel_size, strides=conv_strides,
        padding="same" if conv_strides == 1 else "valid", use_bias=False,
        kernel_initializer=conv_initializer(), name="conv2d")
    if self.subsample:
      # Subsampled, the input has the output's height and width.
      input_shape = (self.compute_output_shape(input_shape)[:3] +
                     (input_shape[3],))
    self.conv.build(input_shape)

  def call(self, inputs):
    if self.subsample:
      # A 1x1 "valid" convolution at stride s reads pixels 0, s, 2s, ...
      inputs = inputs[:, ::self.strides, ::self.strides, :]
    elif self.strides > 1:
      inputs = fixed_padding(inputs, self.kernel_size)
    return self.conv(inputs)

  def compute_output_shape(self, input_shape):
    # "same" at stride 1; at stride s, padding k - 1 then "valid" gives
    # ceil(size / s), like "same" but with the padding always split alike.
    def out_size(size):
      return None if size is None else -(-size // self.strides)
    return (input_shape[0], out_size(input_shape[1]),
            out_size(input_shape[2]), self.filters)

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, kernel_size=self.kernel_size,
                  strides=self.strides)
    return config


@keras.saving.register_keras_serializable(package="simclr_tf")
class SelectiveKernelConv2D(layers.Layer):
  """Selective-kernel 3x3 convolution (SimCLRv2's SK-ResNet).

  Two 3x3 streams are computed as one conv of twice the filters; a squeeze of
  their sum gives softmax weights that mix the streams channel by channel.

  Args:
    filters: output channels.
    strides: stride of the two streams.
    sk_ratio: width of the mixing bottleneck relative to `filters`.
    min_dim: smallest width of the mixing bottleneck.
    momentum: BatchNorm momentum.
    synchronized: sync BatchNorm across replicas.
  """

  def __init__(self, filters, strides, sk_ratio, min_dim=32, momentum=0.9,
               synchronized=False, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.strides = strides
    self.sk_ratio = sk_ratio
    self.min_dim = min_dim
    self.momentum = momentum
    self.synchronized = synchronized
    bn_args = dict(momentum=momentum, synchronized=synchronized)
    self.streams_conv = Conv2DFixedPadding(2 * filters, 3, strides,
                                           name="streams_conv")
    self.streams_bn = BatchNormRelu(name="streams_bn", **bn_args)
    mid_dim = max(int(filters * sk_ratio), min_dim)
    self.squeeze_conv = layers.Conv2D(
        mid_dim, 1, use_bias=False, kernel_initializer=conv_initializer(),
        name="squeeze_conv")
    self.squeeze_bn = BatchNormRelu(name="squeeze_bn", **bn_args)
    self.mixing_conv = layers.Conv2D(
        2 * filters, 1, use_bias=False, kernel_initializer=conv_initializer(),
        name="mixing_conv")

  def build(self, input_shape):
    self.streams_conv.build(input_shape)
    streams_shape = self.streams_conv.compute_output_shape(input_shape)
    self.streams_bn.build(streams_shape)
    pooled_shape = (input_shape[0], 1, 1, self.filters)
    self.squeeze_conv.build(pooled_shape)
    squeezed_shape = self.squeeze_conv.compute_output_shape(pooled_shape)
    self.squeeze_bn.build(squeezed_shape)
    self.mixing_conv.build(squeezed_shape)

  def call(self, inputs, training=None):
    streams = self.streams_bn(self.streams_conv(inputs), training=training)
    streams = ops.stack(ops.split(streams, 2, axis=-1))  # (2, B, H, W, C)
    pooled = ops.mean(ops.sum(streams, axis=0), axis=(1, 2), keepdims=True)
    squeezed = self.squeeze_bn(self.squeeze_conv(pooled), training=training)
    mixing = ops.stack(ops.split(self.mixing_conv(squeezed), 2, axis=-1))
    mixing = ops.softmax(mixing, axis=0)
    return ops.sum(streams * mixing, axis=0)

  def compute_output_shape(self, input_shape):
    shape = self.streams_conv.compute_output_shape(input_shape)
    return shape[:-1] + (self.filters,)

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, strides=self.strides,
                  sk_ratio=self.sk_ratio, min_dim=self.min_dim,
                  momentum=self.momentum, synchronized=self.synchronized)
    return config


@keras.saving.register_keras_serializable(package="simclr_tf")
class SqueezeExcite(layers.Layer):
  """Squeeze-and-excitation channel gating.

  Args:
    filters: the block's base width; the squeeze has
      max(1, int(filters * se_ratio)) channels.
    se_ratio: squeeze width relative to `filters`.
  """

  def __init__(self, filters, se_ratio, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.se_ratio = se_ratio
    self.reduce_conv = layers.Conv2D(
        max(1, int(filters * se_ratio)), 1, padding="same", use_bias=True,
        kernel_initializer=conv_initializer(), name="reduce_conv")
    self.expand_conv = None

  def build(self, input_shape):
    pooled_shape = (input_shape[0], 1, 1, input_shape[-1])
    self.reduce_conv.build(pooled_shape)
    # The expansion restores the input's channels, known only now.
    self.expand_conv = layers.Conv2D(
        input_shape[-1], 1, padding="same", use_bias=True,
        kernel_initializer=conv_initializer(), name="expand_conv")
    self.expand_conv.build(self.reduce_conv.compute_output_shape(pooled_shape))

  def call(self, inputs):
    squeezed = ops.mean(inputs, axis=(1, 2), keepdims=True)
    gate = self.expand_conv(ops.relu(self.reduce_conv(squeezed)))
    return ops.sigmoid(gate) * inputs

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, se_ratio=self.se_ratio)
    return config
