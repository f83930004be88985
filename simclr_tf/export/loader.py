"""Opening exports and checkpoints as hub modules.

`load` opens an export with `tf.saved_model.load`, or builds the same hub
module in memory from one of our checkpoints, a run's model_dir or one of
the authors' TF2 formats (`module_from_checkpoint`), so the tools take any
of them. `export_checkpoint` writes such a module out as an export.
"""

from typing import Optional

import tensorflow as tf

from simclr_tf.checkpoints import authors as authors_checkpoint
from simclr_tf.checkpoints import ours as checkpoints
from simclr_tf.checkpoints import pretrained
from simclr_tf.storage import config_file
from simclr_tf.storage import export_layout
from simclr_tf.export import weights as export_weights
from simclr_tf.export import writer as export_writer
from simclr_tf.export import hub_module
from simclr_tf.config import ConfigError
from simclr_tf.config import ExperimentConfig


def _config_of(prefix) -> ExperimentConfig:
  stored = pretrained.stored_config(prefix)
  if stored is None:
    raise checkpoints.CheckpointError(
        f"{prefix}: no {config_file.CONFIG_FILE} beside it, so its "
        "architecture is unknown. Export from the run's model_dir, where "
        "the program writes it.")
  try:
    return ExperimentConfig.from_dict(stored)
  except (ConfigError, TypeError) as error:
    raise checkpoints.CheckpointError(
        f"{prefix}: its {config_file.CONFIG_FILE} is not a config of this "
        f"version ({str(error).splitlines()[0][:200]}).") from error


def _step_of(prefix) -> Optional[int]:
  export_dir = export_layout.export_dir_of(prefix)
  if export_dir is not None:
    return export_layout.read_metadata(export_dir).get("global_step")
  suffix = prefix.rsplit("-", 1)[-1]
  return int(suffix) if suffix.isdigit() else None


def module_from_checkpoint(path: str):
  """Builds a `SimCLRExport` in memory from a checkpoint, model_dir or export.

  The architecture comes from the run's `config.json` (or the export's
  metadata); whether there is a supervised head, and its classes, from the
  saved variables.

  Args:
    path: what `--checkpoint` accepts (see `pretrained.resolve`).

  Returns:
    (module, metadata dict).

  Raises:
    checkpoints.CheckpointError: missing, unrecognised or mismatched.
  """
  authors = authors_checkpoint.open_source(path)
  if authors is not None:
    return _module_from_authors(authors)
  prefix = pretrained.resolve(path)
  config = _config_of(prefix)
  export_dir = export_layout.export_dir_of(prefix)
  if export_dir is not None:
    num_classes = export_layout.read_metadata(export_dir).get(
        "num_classes")
  else:
    kernel = checkpoints.saved_variable_shape(
        prefix, ("supervised_head", "linear_layer", "dense", "_kernel"))
    num_classes = kernel[-1] if kernel else None
  parts = export_weights.build_parts(config, num_classes)
  layers = dict(encoder=parts.encoder,
                projection_head=parts.projection_head)
  if parts.supervised_head is not None:
    layers["supervised_head"] = parts.supervised_head
  try:
    checkpoints.restore_parts(prefix, layers)
  except (AssertionError, ValueError, tf.errors.OpError) as error:
    raise checkpoints.CheckpointError(
        f"{prefix} does not hold the architecture its config describes "
        f"({str(error).splitlines()[0][:200]}).") from error
  module = export_weights.module_for(parts, config)
  return module, export_writer.metadata(module, config, _step_of(prefix))


def _module_from_authors(source):
  """`module_from_checkpoint` for the authors' TF2 formats."""
  config = authors_checkpoint.experiment_config(source)
  parts = export_weights.build_parts(config, source.architecture.num_classes)
  layers = {name: layer for name, layer in (
      ("encoder", parts.encoder), ("projection_head", parts.projection_head),
      ("supervised_head", parts.supervised_head)) if layer is not None}
  authors_checkpoint.load_parts(source, layers)
  module = export_weights.module_for(parts, config)
  return module, export_writer.metadata(module, config, source.global_step)


def export_checkpoint(path: str, export_dir: str, *,
                      overwrite: bool = False) -> dict:
  """Exports a checkpoint, model_dir (its latest checkpoint) or export.

  Args:
    path: what `--checkpoint` accepts.
    export_dir: where to write the SavedModel.
    overwrite: replace an existing export there.

  Returns:
    The metadata written.
  """
  module, meta = module_from_checkpoint(path)
  export_writer.write_saved_model(module, export_dir, meta, overwrite=overwrite)
  return meta


class LoadedModel:
  """An export or checkpoint ready to compute outputs, with checked inputs.

  Attributes:
    module: the callable reusable-SavedModel object (loaded, or built in
      memory from a checkpoint).
    metadata: the export metadata (see `export_writer.metadata`).
    source: the path it came from.
  """

  def __init__(self, module, meta, source):
    self.module = module
    self.metadata = meta
    self.source = source

  @property
  def output_keys(self):
    return tuple(self.metadata["outputs"])

  @property
  def image_size(self) -> int:
    return self.metadata["image_size"]

  def __call__(self, images, training=False):
    """Runs the model.

    Args:
      images: float (B, H, W, 3) in [0, 1].
      training: Python bool, see `SimCLRExport.__call__`.

    Returns:
      A dict from output name to tensor.

    Raises:
      ExportError: for images of another rank, channel count or dtype.
    """
    hub_module.check_images(images)
    return self.module(tf.cast(images, tf.float32), training=bool(training))


def load(path: str) -> LoadedModel:
  """Opens an export, or builds the same model from a checkpoint.

  Args:
    path: an export directory, a checkpoint prefix or a run's model_dir.

  Returns:
    A `LoadedModel`.

  Raises:
    checkpoints.CheckpointError: a missing path, or one that is neither a
      checkpoint nor an export, with a one-line message naming it.
    ExportError: an export whose metadata cannot be read.
  """
  if export_layout.is_export(path):
    meta = export_layout.read_metadata(path)
    try:
      module = tf.saved_model.load(path)
    except (OSError, ValueError, tf.errors.OpError) as error:
      raise checkpoints.CheckpointError(
          f"{path}: cannot load the SavedModel "
          f"({str(error).splitlines()[0][:200]}).") from error
    return LoadedModel(module, meta, path)
  module, meta = module_from_checkpoint(path)
  return LoadedModel(module, meta, path)
