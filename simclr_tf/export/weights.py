"""An export's layers: built fresh from a config, filled from a model.

The export computes with its own copy of the layers (see `hub_module`):
plain variables outside any strategy, every layer trainable, BatchNorm
unsynchronised. `exportable_copy` fills them from an in-memory model;
`export_loader` fills them from a checkpoint instead.
"""

import dataclasses
from typing import Optional

import numpy as np

from simclr_tf.export import hub_module
from simclr_tf.config import ExperimentConfig
from simclr_tf.models import simclr


def exportable_copy(model,
                    config: ExperimentConfig) -> hub_module.SimCLRExport:
  """Wraps a copy of `model` fit for export as a `SimCLRExport`.

  The copy has plain (not distributed) variables holding the model's current
  values, every layer trainable and unsynchronised BatchNorm (see
  `hub_module`). Call it outside any `strategy.scope()`.

  Args:
    model: a built `SimCLRModel`, possibly under a distribution strategy.
    config: the run's config (architecture, image size, eval transform).

  Returns:
    The `SimCLRExport`.

  Raises:
    ExportError: if `model` does not have the config's architecture.
  """
  head = model.supervised_head
  parts = build_parts(config,
                      num_classes=head.num_classes if head else None)
  pairs = [(model.encoder, parts.encoder),
           (model.projection_head, parts.projection_head)]
  if head is not None:
    pairs.append((head, parts.supervised_head))
  for source, target in pairs:
    copy_weights(source, target)
  return module_for(parts, config)


def build_parts(config: ExperimentConfig,
                num_classes: Optional[int]) -> hub_module.ModelParts:
  """Fresh layers of the config's architecture, for an export.

  Args:
    config: the run's config.
    num_classes: the supervised head's classes, or None for no head.

  Returns:
    `ModelParts` with every layer trainable and unsynchronised BatchNorm.
  """
  model_config = dataclasses.replace(config.model, global_bn=False,
                                     fine_tune_after_block=-1)
  # Pretrain mode freezes nothing; the forward pass is the export's own.
  model = simclr.build_simclr_model(
      model_config, image_size=config.data.image_size,
      num_classes=num_classes or 1, train_mode="pretrain",
      with_supervised_head=num_classes is not None)
  return hub_module.ModelParts(model.encoder, model.projection_head,
                               model.supervised_head)


def module_for(parts: hub_module.ModelParts,
               config: ExperimentConfig) -> hub_module.SimCLRExport:
  """The hub module computing with `parts` at the config's image size."""
  return hub_module.SimCLRExport(parts, image_size=config.data.image_size,
                                 augment_config=config.augment)


def copy_weights(source, target) -> None:
  """Assigns `source`'s weights to `target`, a layer of the same architecture.

  Raises:
    ExportError: if their weights differ in number, name or shape.
  """
  # Identical architectures list their weights in the same (structural)
  # order, whatever was frozen; check names and shapes anyway.
  source_weights, target_weights = source.weights, target.weights
  if len(source_weights) != len(target_weights):
    raise hub_module.ExportError(
        f"The model's {source.name} has {len(source_weights)} weights but "
        f"the config's architecture has {len(target_weights)}: export with "
        "the config the model was built from.")
  for src, dst in zip(source_weights, target_weights):
    if src.name != dst.name or tuple(src.shape) != tuple(dst.shape):
      raise hub_module.ExportError(
          f"The model's weight {src.path} {tuple(src.shape)} does not match "
          f"{dst.path} {tuple(dst.shape)} of the config's architecture.")
    dst.assign(np.asarray(src.numpy()))
