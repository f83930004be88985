"""The SimCLR ResNet encoder (v1 and v2: width multiplier, SK, SE)."""

import keras
from keras import layers

from simclr_tf.models.blocks import BlockGroup
from simclr_tf.models.layers import BatchNormRelu
from simclr_tf.models.layers import Conv2DFixedPadding

# Names of the encoder's intermediate outputs, reachable with
# `encoder.get_layer(name).output` and exported by name.
INITIAL_CONV = "initial_conv"
INITIAL_MAX_POOL = "initial_max_pool"
BLOCK_GROUPS = ("block_group1", "block_group2", "block_group3",
                "block_group4")
FINAL_AVG_POOL = "final_avg_pool"
ENDPOINTS = (INITIAL_CONV, INITIAL_MAX_POOL) + BLOCK_GROUPS + (FINAL_AVG_POOL,)

# depth -> (block type, blocks per group)
RESNET_SPECS = {
    18: ("residual", (2, 2, 2, 2)),
    34: ("residual", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}


def resnet(depth, width_multiplier=1, cifar_stem=False, sk_ratio=0.0,
           se_ratio=0.0, sync_bn=False, bn_momentum=0.9, name=None):
  """Builds the SimCLR authors' ResNet as a functional Keras model.

  Differences from the torchvision/Keras Applications ResNet, all from the
  authors' code: every stage's first block projects its shortcut; strided
  convolutions pad explicitly; the last BN of each block starts with
  gamma = 0; BN uses epsilon 1e-5. With `sk_ratio > 0` the stem is ResNet-D's
  three 3x3 convolutions and shortcuts average-pool before projecting.

  Args:
    depth: 18, 34, 50, 101, 152 or 200.
    width_multiplier: channel multiplier (1, 2, 4 in the paper; below 1, e.g.
      0.25, for tiny test models).
    cifar_stem: 3x3 stride-1 stem without max-pool, for images <= 32 px.
    sk_ratio: selective-kernel ratio (SimCLRv2 uses 0.0625); 0 for none.
    se_ratio: squeeze-excite ratio; 0 for none.
    sync_bn: synchronise BatchNorm statistics across replicas.
    bn_momentum: BatchNorm moving-average momentum.
    name: model name; defaults to "resnet{depth}".

  Returns:
    A `keras.Model` from float images (B, H, W, 3) to pooled features
    (B, 512 * width * expansion). Layers named by `ENDPOINTS` give the
    intermediate outputs.

  Raises:
    ValueError: for an unsupported depth or a bad multiplier or ratio.
  """
  if depth not in RESNET_SPECS:
    raise ValueError(f"`depth` must be one of {sorted(RESNET_SPECS)}. "
                     f"Received: resnet_depth={depth}")
  if not width_multiplier > 0 or int(64 * width_multiplier) < 2:
    raise ValueError("`width_multiplier` must give at least 2 stem channels "
                     "(64 * width_multiplier >= 2). Received: "
                     f"width_multiplier={width_multiplier}")
  for arg_name, ratio in (("sk_ratio", sk_ratio), ("se_ratio", se_ratio)):
    if not 0.0 <= ratio <= 1.0:
      raise ValueError(f"`{arg_name}` must be in [0, 1]. Received: "
                       f"{arg_name}={ratio}")
  block_type, blocks_per_group = RESNET_SPECS[depth]
  bn_args = dict(momentum=bn_momentum, synchronized=sync_bn)
  width = int(64 * width_multiplier)

  inputs = keras.Input((None, None, 3), name="images")
  x = inputs
  if cifar_stem:
    x = Conv2DFixedPadding(width, 3, 1, name="stem_conv")(x)
    x = layers.Identity(name=INITIAL_CONV)(x)
    x = BatchNormRelu(name="stem_bn", **bn_args)(x)
    x = layers.Identity(name=INITIAL_MAX_POOL)(x)
  else:
    if sk_ratio > 0:
      x = Conv2DFixedPadding(width // 2, 3, 2, name="stem_conv_1")(x)
      x = BatchNormRelu(name="stem_bn_1", **bn_args)(x)
      x = Conv2DFixedPadding(width // 2, 3, 1, name="stem_conv_2")(x)
      x = BatchNormRelu(name="stem_bn_2", **bn_args)(x)
      x = Conv2DFixedPadding(width, 3, 1, name="stem_conv")(x)
    else:
      x = Conv2DFixedPadding(width, 7, 2, name="stem_conv")(x)
    x = layers.Identity(name=INITIAL_CONV)(x)
    x = BatchNormRelu(name="stem_bn", **bn_args)(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same",
                            name="stem_max_pool")(x)
    x = layers.Identity(name=INITIAL_MAX_POOL)(x)

  for index, (num_blocks, strides) in enumerate(
      zip(blocks_per_group, (1, 2, 2, 2))):
    x = BlockGroup(int(64 * 2**index * width_multiplier), num_blocks,
                   strides, block_type, sk_ratio=sk_ratio, se_ratio=se_ratio,
                   name=BLOCK_GROUPS[index], **bn_args)(x)
  outputs = layers.GlobalAveragePooling2D(name=FINAL_AVG_POOL)(x)
  return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def freeze_through_block(encoder, block):
  """Freezes the encoder up to and including a block (authors' semantics).

  Frozen layers stop training and their BatchNorms run in inference mode.

  Args:
    encoder: a model from `resnet()`.
    block: -1 freezes nothing; 0 freezes the stem (through
      `initial_max_pool`); k in 1..4 freezes through `block_group{k}`.

  Returns:
    The names of the frozen layers.

  Raises:
    ValueError: for `block` outside [-1, 4].
  """
  if not -1 <= block <= 4:
    raise ValueError("`fine_tune_after_block` must be in [-1, 4]. "
                     f"Received: fine_tune_after_block={block}")
  if block == -1:
    return []
  last = INITIAL_MAX_POOL if block == 0 else BLOCK_GROUPS[block - 1]
  frozen = []
  for layer in encoder.layers:
    layer.trainable = False
    frozen.append(layer.name)
    if layer.name == last:
      break
  return frozen
