"""Writing exports: one at a time, whole or not at all, old ones pruned.

`write_saved_model` saves a hub module (`hub_module.SimCLRExport`) with its
metadata through `atomic_dir.replace_directory`, so a crash never leaves a
half-written export in place and a replaced export stays until the new one
is complete. `export_to_model_dir` is the automatic export at the end of a
stage; `prune_exports` keeps the latest `keep_hub_module_max` of them.
Where everything goes is `export_layout`'s.
"""

import os
import time
from typing import Callable, Optional

import tensorflow as tf

from simclr_tf.storage import atomic_dir
from simclr_tf.storage import export_layout
from simclr_tf.export import weights as export_weights
from simclr_tf.export import hub_module
from simclr_tf.storage import files
from simclr_tf.storage import write_errors
from simclr_tf.config import ExperimentConfig
from simclr_tf.storage.export_layout import ExportError


def metadata(module: hub_module.SimCLRExport, config: ExperimentConfig,
             global_step: Optional[int]) -> dict:
  """What an export's metadata file records about it.

  Args:
    module: the hub module being exported.
    config: the run's config.
    global_step: the training step of its weights, or None.

  Returns:
    A JSON-serialisable dict.
  """
  head = module.parts.supervised_head
  return {
      "format": export_layout.METADATA_FORMAT,
      "version": export_layout.METADATA_VERSION,
      "global_step": global_step,
      "image_size": module.image_size,
      "outputs": list(module.output_keys),
      "num_classes": head.num_classes if head is not None else None,
      "signatures": {
          hub_module.SERVING_SIGNATURE: hub_module.IMAGES_INPUT,
          hub_module.IMAGE_BYTES_SIGNATURE: hub_module.IMAGE_BYTES_INPUT},
      "training_endpoint": hub_module.TRAINING_ENDPOINT,
      "config": config.to_dict(),
  }


def write_saved_model(module: hub_module.SimCLRExport, export_dir: str,
                      meta: dict, *, overwrite: bool = False) -> str:
  """Saves `module` to `export_dir` through a temporary directory.

  Args:
    module: the `SimCLRExport`.
    export_dir: the final directory.
    meta: the metadata to record (see `metadata`).
    overwrite: replace an existing export at `export_dir`.

  Returns:
    `export_dir`.

  Raises:
    ExportError: if `export_dir` exists and may not be replaced.
    write_errors.WriteFailedError: the disk refused the write; nothing
      partial is left and an earlier export there is untouched.
  """
  export_dir = export_dir.rstrip("/")
  if tf.io.gfile.isdir(export_dir) and not tf.io.gfile.listdir(export_dir):
    tf.io.gfile.rmtree(export_dir)  # An empty directory made for it.
  if tf.io.gfile.exists(export_dir):
    if not export_layout.is_export(export_dir):
      raise ExportError(
          f"{export_dir} exists and is not an export: choose a new "
          "directory.")
    if not overwrite:
      raise ExportError(f"{export_dir} already holds an export: pass "
                        "--overwrite to replace it, or choose a new "
                        "directory.")

  def write(temp):
    try:
      tf.saved_model.save(module, temp,
                          signatures=module.serving_signatures())
      export_layout.write_metadata(temp, meta)
    except (tf.errors.OpError, OSError) as error:
      raise write_errors.WriteFailedError(
          f"could not write the export {export_dir} "
          f"({write_errors.reason(error)}); nothing partial was left and "
          "earlier exports are untouched. Free space (or fix the disk) and "
          "rerun the same command.") from error

  return atomic_dir.replace_directory(
      export_dir, write, temp_prefix=export_layout.TEMP_PREFIX,
      old_prefix=export_layout.OLD_PREFIX)


def export_model(model, config: ExperimentConfig, export_dir: str, *,
                 global_step: Optional[int] = None,
                 overwrite: bool = False) -> str:
  """Exports an in-memory `SimCLRModel` to `export_dir`.

  Args:
    model: a built `SimCLRModel` (under any strategy).
    config: the config it was built from.
    export_dir: where to write the SavedModel.
    global_step: the training step, recorded in the metadata.
    overwrite: replace an existing export there.

  Returns:
    `export_dir`.
  """
  module = export_weights.exportable_copy(model, config)
  return write_saved_model(module, export_dir,
                           metadata(module, config, global_step),
                           overwrite=overwrite)


def prune_exports(exports_dir: str, keep: int) -> None:
  """Keeps the `keep` latest step exports; drops leftovers of dead writers.

  Args:
    exports_dir: a run's `saved_model` directory.
    keep: how many step directories to keep (at least 1).

  Raises:
    ExportError: if `keep` is below 1.
  """
  if keep < 1:
    raise ExportError(f"`keep_hub_module_max` must be positive. Received: "
                      f"keep_hub_module_max={keep}")
  for name in export_layout.step_names(exports_dir)[:-keep]:
    tf.io.gfile.rmtree(os.path.join(exports_dir, name))
  atomic_dir.remove_abandoned(
      exports_dir, (export_layout.TEMP_PREFIX, export_layout.OLD_PREFIX))


def directory_size_mb(path: str) -> float:
  """Total size of the files under `path`, in MB (10^6 bytes)."""
  return files.directory_bytes(path) / 1e6


def export_to_model_dir(model, config: ExperimentConfig, *,
                        global_step: int,
                        log: Callable[[str], None] = print,
                        model_dir: Optional[str] = None) -> str:
  """The automatic export at the end of a stage.

  Writes `model_dir/saved_model/<global_step>/` (replacing an export of the
  same step) and keeps the last `keep_hub_module_max` exports.

  Args:
    model: the stage's `SimCLRModel`.
    config: the stage's config.
    global_step: the step the weights are from.
    log: where to report.
    model_dir: where to write instead of `config.run.model_dir` (a
      non-chief worker's temporary directory).

  Returns:
    The export directory.
  """
  start = time.time()
  model_dir = model_dir or config.run.model_dir
  export_dir = export_model(
      model, config, export_layout.step_export_dir(model_dir, global_step),
      global_step=global_step, overwrite=True)
  prune_exports(export_layout.exports_dir(model_dir),
                config.run.keep_hub_module_max)
  log(f"[{config.run.train_mode}] exported SavedModel {export_dir} "
      f"({directory_size_mb(export_dir):.1f} MB, {time.time() - start:.0f}s).")
  return export_dir
