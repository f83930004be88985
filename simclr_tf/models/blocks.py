"""Residual blocks and block groups of the SimCLR ResNet."""

import keras
from keras import layers
from keras import ops

from simclr_tf.models.layers import BatchNormRelu
from simclr_tf.models.layers import Conv2DFixedPadding
from simclr_tf.models.layers import SelectiveKernelConv2D
from simclr_tf.models.layers import SqueezeExcite
from simclr_tf.models.layers import track_layer_list

BLOCK_TYPES = ("residual", "bottleneck")


def _projection_shortcut(filters_out, strides, resnet_d, bn_args):
  """Layers that bring the input to the block's output shape.

  With `resnet_d` (used together with selective kernels) the stride comes
  from an average pool before a 1x1 convolution (ResNet-D), so no input pixel
  is skipped.
  """
  shortcut = []
  if resnet_d:
    if strides > 1:
      shortcut.append(layers.ZeroPadding2D(((0, 1), (0, 1)),
                                           name="shortcut_pad"))
    shortcut.append(layers.AveragePooling2D(
        2, strides=strides, padding="same" if strides == 1 else "valid",
        name="shortcut_pool"))
    shortcut.append(Conv2DFixedPadding(filters_out, 1, 1,
                                       name="shortcut_conv"))
  else:
    shortcut.append(Conv2DFixedPadding(filters_out, 1, strides,
                                       name="shortcut_conv"))
  shortcut.append(BatchNormRelu(relu=False, name="shortcut_bn", **bn_args))
  return shortcut


class _ResNetBlock(layers.Layer):
  """Shared plumbing: a residual branch plus an optional projection shortcut.

  Subclasses fill `residual_layers`; `training` reaches the BatchNorms through
  Keras' call context.
  """

  def __init__(self, filters, strides, use_projection=False, sk_ratio=0.0,
               se_ratio=0.0, momentum=0.9, synchronized=False, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.strides = strides
    self.use_projection = use_projection
    self.sk_ratio = sk_ratio
    self.se_ratio = se_ratio
    self.momentum = momentum
    self.synchronized = synchronized
    self.bn_args = dict(momentum=momentum, synchronized=synchronized)
    self.shortcut_layers = (
        _projection_shortcut(self.expansion * filters, strides, sk_ratio > 0,
                             self.bn_args)
        if use_projection else [])
    self.residual_layers = self._residual_layers()
    if se_ratio > 0:
      self.residual_layers.append(
          SqueezeExcite(filters, se_ratio, name="squeeze_excite"))
    track_layer_list(self, "shortcut", self.shortcut_layers)
    track_layer_list(self, "residual", self.residual_layers)

  def _residual_layers(self):
    raise NotImplementedError

  def build(self, input_shape):
    _build_chain(self.shortcut_layers, input_shape)
    _build_chain(self.residual_layers, input_shape)

  def call(self, inputs):
    return ops.relu(_run_chain(self.residual_layers, inputs) +
                    _run_chain(self.shortcut_layers, inputs))

  def compute_output_shape(self, input_shape):
    return _chain_output_shape(self.residual_layers, input_shape)

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, strides=self.strides,
                  use_projection=self.use_projection, sk_ratio=self.sk_ratio,
                  se_ratio=self.se_ratio, momentum=self.momentum,
                  synchronized=self.synchronized)
    return config


@keras.saving.register_keras_serializable(package="simclr_tf")
class ResidualBlock(_ResNetBlock):
  """Two 3x3 convolutions with a shortcut (ResNet-18/34).

  Args:
    filters: channels of both convolutions and of the output.
    strides: stride of the first convolution.
    use_projection: project the shortcut with a 1x1 convolution + BN.
    sk_ratio: > 0 switches the projection shortcut to ResNet-D.
    se_ratio: > 0 adds squeeze-excite before the residual sum.
    momentum: BatchNorm momentum.
    synchronized: sync BatchNorm across replicas.
  """
  expansion = 1

  def _residual_layers(self):
    return [
        Conv2DFixedPadding(self.filters, 3, self.strides, name="conv_1"),
        BatchNormRelu(name="bn_1", **self.bn_args),
        Conv2DFixedPadding(self.filters, 3, 1, name="conv_2"),
        BatchNormRelu(relu=False, init_zero=True, name="bn_2", **self.bn_args),
    ]


@keras.saving.register_keras_serializable(package="simclr_tf")
class BottleneckBlock(_ResNetBlock):
  """1x1 -> 3x3 -> 1x1 (4x filters) bottleneck with a shortcut (ResNet-50+).

  Args:
    filters: bottleneck width; the output has 4 * filters channels.
    strides: stride of the 3x3 convolution.
    use_projection: project the shortcut with a 1x1 convolution + BN.
    sk_ratio: > 0 replaces the 3x3 convolution by a selective kernel and the
      projection shortcut by ResNet-D.
    se_ratio: > 0 adds squeeze-excite before the residual sum.
    momentum: BatchNorm momentum.
    synchronized: sync BatchNorm across replicas.
  """
  expansion = 4

  def _residual_layers(self):
    chain = [
        Conv2DFixedPadding(self.filters, 1, 1, name="conv_1"),
        BatchNormRelu(name="bn_1", **self.bn_args),
    ]
    if self.sk_ratio > 0:
      chain.append(SelectiveKernelConv2D(self.filters, self.strides,
                                         self.sk_ratio, name="sk_conv_2",
                                         **self.bn_args))
    else:
      chain += [
          Conv2DFixedPadding(self.filters, 3, self.strides, name="conv_2"),
          BatchNormRelu(name="bn_2", **self.bn_args),
      ]
    return chain + [
        Conv2DFixedPadding(4 * self.filters, 1, 1, name="conv_3"),
        BatchNormRelu(relu=False, init_zero=True, name="bn_3", **self.bn_args),
    ]


@keras.saving.register_keras_serializable(package="simclr_tf")
class BlockGroup(layers.Layer):
  """A stage of blocks; the first may stride and always projects.

  The authors project the shortcut of every stage's first block, even when
  shapes already match (ResNet-18's first stage); parameter counts depend on
  it.

  Args:
    filters: block width (see the block types).
    num_blocks: blocks in the stage.
    strides: stride of the first block.
    block_type: "residual" or "bottleneck".
    sk_ratio: selective-kernel ratio, 0 for none.
    se_ratio: squeeze-excite ratio, 0 for none.
    momentum: BatchNorm momentum.
    synchronized: sync BatchNorm across replicas.
  """

  def __init__(self, filters, num_blocks, strides, block_type, sk_ratio=0.0,
               se_ratio=0.0, momentum=0.9, synchronized=False, **kwargs):
    super().__init__(**kwargs)
    if block_type not in BLOCK_TYPES:
      raise ValueError(f"`block_type` must be one of {BLOCK_TYPES}. "
                       f"Received: block_type={block_type!r}")
    self.filters = filters
    self.num_blocks = num_blocks
    self.strides = strides
    self.block_type = block_type
    self.sk_ratio = sk_ratio
    self.se_ratio = se_ratio
    self.momentum = momentum
    self.synchronized = synchronized
    block_class = (ResidualBlock if block_type == "residual"
                   else BottleneckBlock)
    self.blocks = [
        block_class(filters, strides if i == 0 else 1,
                    use_projection=(i == 0), sk_ratio=sk_ratio,
                    se_ratio=se_ratio, momentum=momentum,
                    synchronized=synchronized, name=f"block_{i}")
        for i in range(num_blocks)
    ]
    track_layer_list(self, "block", self.blocks)

  def build(self, input_shape):
    _build_chain(self.blocks, input_shape)

  def call(self, inputs):
    return _run_chain(self.blocks, inputs)

  def compute_output_shape(self, input_shape):
    return _chain_output_shape(self.blocks, input_shape)

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, num_blocks=self.num_blocks,
                  strides=self.strides, block_type=self.block_type,
                  sk_ratio=self.sk_ratio, se_ratio=self.se_ratio,
                  momentum=self.momentum, synchronized=self.synchronized)
    return config


def _run_chain(chain, inputs):
  for layer in chain:
    inputs = layer(inputs)
  return inputs


def _build_chain(chain, input_shape):
  for layer in chain:
    layer.build(input_shape)
    input_shape = layer.compute_output_shape(input_shape)


def _chain_output_shape(chain, input_shape):
  for layer in chain:
    input_shape = layer.compute_output_shape(input_shape)
  return input_shape
