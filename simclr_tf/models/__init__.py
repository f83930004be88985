"""Encoder, heads and the SimCLR model.

Public API:
  resnet(depth, ...): the authors' ResNet encoder as a Keras model.
  ProjectionHead, SupervisedHead: the heads.
  SimCLRModel: encoder + heads, trained with `fit` in any train mode.
  build_simclr_model(model_config, ...): all of it from a `ModelConfig`.
"""

from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.heads import SupervisedHead
from simclr_tf.models.resnet_encoder import resnet
from simclr_tf.models.simclr import SimCLRModel
from simclr_tf.models.simclr import build_simclr_model

__all__ = ["ProjectionHead", "SupervisedHead", "SimCLRModel",
           "build_simclr_model", "resnet"]
