"""Projection head (SimCLR v1/v2) and the supervised (linear) head."""

import keras
from keras import layers
from keras import ops

from simclr_tf.models.layers import BatchNormRelu
from simclr_tf.models.layers import track_layer_list

PROJ_HEAD_MODES = ("none", "linear", "nonlinear")
SUPERVISED_HEAD_NAME = "head_supervised"


@keras.saving.register_keras_serializable(package="simclr_tf")
class LinearLayer(layers.Layer):
  """Dense layer, optionally followed by BatchNorm (the authors' LinearLayer).

  With BatchNorm the Dense layer has no bias: BN's beta plays that role when
  `use_bias`, and there is no offset at all otherwise.

  Args:
    units: output size; None keeps the input size.
    use_bias: learn an offset (Dense bias, or BN beta with `use_bn`).
    use_bn: BatchNorm after the Dense layer.
    momentum: BatchNorm momentum.
    synchronized: sync BatchNorm across replicas.
    zero_init: start the kernel (and bias) at zero instead of N(0, 0.01^2).
  """

  def __init__(self, units=None, use_bias=True, use_bn=False, momentum=0.9,
               synchronized=False, zero_init=False, **kwargs):
    super().__init__(**kwargs)
    if units is not None and units < 1:
      raise ValueError(f"`units` must be positive. Received: units={units}")
    self.units = units
    self.use_bias = use_bias
    self.use_bn = use_bn
    self.momentum = momentum
    self.synchronized = synchronized
    self.zero_init = zero_init
    self.dense = None
    self.batch_norm = None

  def build(self, input_shape):
    if len(input_shape) != 2:
      raise ValueError("LinearLayer expects (batch, features) inputs. "
                       f"Received: input_shape={tuple(input_shape)}")
    units = self.units or input_shape[-1]
    self.dense = layers.Dense(
        units, use_bias=self.use_bias and not self.use_bn,
        kernel_initializer=("zeros" if self.zero_init else
                            keras.initializers.RandomNormal(stddev=0.01)),
        name="dense")
    self.dense.build(input_shape)
    if self.use_bn:
      self.batch_norm = BatchNormRelu(
          relu=False, center=self.use_bias, momentum=self.momentum,
          synchronized=self.synchronized, name="bn")
      self.batch_norm.build((input_shape[0], units))

  def call(self, inputs):
    outputs = self.dense(inputs)
    if self.batch_norm is not None:
      outputs = self.batch_norm(outputs)
    return outputs

  def compute_output_shape(self, input_shape):
    return (input_shape[0], self.units or input_shape[-1])

  def get_config(self):
    config = super().get_config()
    config.update(units=self.units, use_bias=self.use_bias,
                  use_bn=self.use_bn, momentum=self.momentum,
                  synchronized=self.synchronized, zero_init=self.zero_init)
    return config


@keras.saving.register_keras_serializable(package="simclr_tf")
class ProjectionHead(layers.Layer):
  """Maps encoder features to the space the contrastive loss works in.

  "nonlinear" (v2, the default) stacks `num_proj_layers` LinearLayers with
  BN; the middle ones keep the input width and have an offset and ReLU, the
  last projects to `proj_out_dim` with neither. "linear" is one such last
  layer; "none" passes features through. v1's head is nonlinear with 2
  layers.

  Calling it returns `(proj_head_output, ft_head_input)`: the projection the
  loss sees, and the layer `ft_proj_selector` picks as input of the
  supervised head (0 is the encoder output, k the output of layer k).

  Args:
    proj_head_mode: "none", "linear" or "nonlinear".
    proj_out_dim: output size of the last layer.
    num_proj_layers: layers in "nonlinear" mode.
    ft_proj_selector: which layer feeds fine-tuning, in [0, layers]; -1 is
      the last layer.
    momentum: BatchNorm momentum.
    synchronized: sync BatchNorm across replicas.
  """

  def __init__(self, proj_head_mode="nonlinear", proj_out_dim=128,
               num_proj_layers=3, ft_proj_selector=0, momentum=0.9,
               synchronized=False, **kwargs):
    super().__init__(**kwargs)
    if proj_head_mode not in PROJ_HEAD_MODES:
      raise ValueError(f"`proj_head_mode` must be one of {PROJ_HEAD_MODES}. "
                       f"Received: proj_head_mode={proj_head_mode!r}")
    if proj_out_dim < 1:
      raise ValueError("`proj_out_dim` must be positive. Received: "
                       f"proj_out_dim={proj_out_dim}")
    if num_proj_layers < 1:
      raise ValueError("`num_proj_layers` must be positive. Received: "
                       f"num_proj_layers={num_proj_layers}")
    self.proj_head_mode = proj_head_mode
    self.proj_out_dim = proj_out_dim
    self.num_proj_layers = num_proj_layers
    self.ft_proj_selector = ft_proj_selector
    self.momentum = momentum
    self.synchronized = synchronized
    bn_args = dict(use_bn=True, momentum=momentum, synchronized=synchronized)
    if proj_head_mode == "none":
      self.linear_layers = []
    elif proj_head_mode == "linear":
      self.linear_layers = [
          LinearLayer(proj_out_dim, use_bias=False, name="l_0", **bn_args)]
    else:
      self.linear_layers = [
          LinearLayer(None, use_bias=True, name=f"nl_{j}", **bn_args)
          for j in range(num_proj_layers - 1)
      ] + [LinearLayer(proj_out_dim, use_bias=False,
                       name=f"nl_{num_proj_layers - 1}", **bn_args)]
    track_layer_list(self, "layer", self.linear_layers)
    # -1 is the last layer, as the authors' flag.
    self._selected = (len(self.linear_layers) if ft_proj_selector == -1
                      else ft_proj_selector)
    if not 0 <= self._selected <= len(self.linear_layers):
      raise ValueError(
          f"`ft_proj_selector` must be -1 (the last layer) or in "
          f"[0, {len(self.linear_layers)}] for "
          f"proj_head_mode={proj_head_mode!r}. Received: "
          f"ft_proj_selector={ft_proj_selector}")

  def build(self, input_shape):
    for layer in self.linear_layers:
      layer.build(input_shape)
      input_shape = layer.compute_output_shape(input_shape)

  def call(self, inputs):
    hiddens = [inputs]
    last = len(self.linear_layers) - 1
    for j, layer in enumerate(self.linear_layers):
      hidden = layer(hiddens[-1])
      if self.proj_head_mode == "nonlinear" and j != last:
        hidden = ops.relu(hidden)
      hiddens.append(hidden)
    return hiddens[-1], hiddens[self._selected]

  def compute_output_shape(self, input_shape):
    output_shape = input_shape
    for layer in self.linear_layers:
      output_shape = layer.compute_output_shape(output_shape)
    selected = input_shape
    for layer in self.linear_layers[:self._selected]:
      selected = layer.compute_output_shape(selected)
    return output_shape, selected

  def freeze_through_selector(self):
    """Freezes the layers that feed the supervised head (linear eval)."""
    for layer in self.linear_layers[:self._selected]:
      layer.trainable = False

  def freeze_after_selector(self):
    """Freezes layers the supervised head does not use: they get no
    gradient when only the supervised loss trains."""
    for layer in self.linear_layers[self._selected:]:
      layer.trainable = False

  def get_config(self):
    config = super().get_config()
    config.update(proj_head_mode=self.proj_head_mode,
                  proj_out_dim=self.proj_out_dim,
                  num_proj_layers=self.num_proj_layers,
                  ft_proj_selector=self.ft_proj_selector,
                  momentum=self.momentum, synchronized=self.synchronized)
    return config


@keras.saving.register_keras_serializable(package="simclr_tf")
class SupervisedHead(layers.Layer):
  """Linear classifier on features: logits for `num_classes` classes.

  Its variables live under "head_supervised", the name LARS excludes from
  weight decay and adaptation (its decay is added to the loss instead).

  With `feature_norm`, features pass through a BatchNorm without scale or
  offset first (the linear-probe protocol of MAE, He et al. 2022). At
  inference that is a fixed affine map, so the head stays a linear
  classifier, but its training no longer depends on the features' scale:
  one learning rate then suits encoders whose feature norms differ by 20x
  (a random and a pretrained one, say).

  Args:
    num_classes: number of classes.
    zero_init: start at zero (the authors' zero_init_logits_layer).
    feature_norm: normalise features with a parameter-free BatchNorm.
    momentum: that BatchNorm's moving-average momentum.
    synchronized: sync that BatchNorm across replicas.
  """

  def __init__(self, num_classes, zero_init=False, feature_norm=False,
               momentum=0.9, synchronized=False, name=SUPERVISED_HEAD_NAME,
               **kwargs):
    super().__init__(name=name, **kwargs)
    if num_classes < 1:
      raise ValueError("`num_classes` must be positive. Received: "
                       f"num_classes={num_classes}")
    self.num_classes = num_classes
    self.zero_init = zero_init
    self.feature_norm = feature_norm
    self.momentum = momentum
    self.synchronized = synchronized
    self.feature_batch_norm = (
        BatchNormRelu(relu=False, center=False, scale=False,
                      momentum=momentum, synchronized=synchronized,
                      name="feature_bn") if feature_norm else None)
    self.linear_layer = LinearLayer(num_classes, use_bias=True,
                                    zero_init=zero_init, name="linear_layer")

  def build(self, input_shape):
    if self.feature_batch_norm is not None:
      self.feature_batch_norm.build(input_shape)
    self.linear_layer.build(input_shape)

  def call(self, inputs):
    if self.feature_batch_norm is not None:
      inputs = self.feature_batch_norm(inputs)
    return self.linear_layer(inputs)

  def compute_output_shape(self, input_shape):
    return (input_shape[0], self.num_classes)

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, zero_init=self.zero_init,
                  feature_norm=self.feature_norm, momentum=self.momentum,
                  synchronized=self.synchronized)
    return config
