"""What `--checkpoint` names, and loading it into a model.

`--checkpoint` may be a run's checkpoint prefix or its model_dir (the latest
checkpoint), an export of this project (its variables file, laid out by
`simclr_tf.storage.export_layout`), or one of the authors' TF2 formats, which
`simclr_tf.checkpoints.authors` reads. This module routes each to its reader;
it sits above both, so neither imports it.
"""

import os

import tensorflow as tf

from simclr_tf.checkpoints import authors
from simclr_tf.checkpoints import ours
from simclr_tf.storage import config_file
from simclr_tf.storage import export_layout

CheckpointError = ours.CheckpointError


def resolve(path):
  """Turns `--checkpoint` into a checkpoint prefix.

  Args:
    path: a checkpoint prefix (".../ckpt-100"), a directory holding
      checkpoints (a run's model_dir), whose latest is used, or an export
      directory (".../saved_model/100"), whose variables are used; also
      the authors' TF2 SavedModel directories (their variables prefix).

  Returns:
    The checkpoint prefix; for an export, `<export>/variables/variables`.

  Raises:
    CheckpointError: if there is no checkpoint or export there.
  """
  if tf.io.gfile.isdir(path):
    if export_layout.is_export(path):
      return export_layout.variables_prefix(path)
    if export_layout.is_saved_model(path):
      source = _authors_source(path)
      if source is not None:
        return source.prefix
      raise CheckpointError(
          f"--checkpoint {path}: a SavedModel, but not one written by "
          f"simclr_tf (it has no {export_layout.METADATA_FILE}). Give a "
          "checkpoint, a model_dir or an export of this project.")
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      source = _authors_source(path)
      if source is not None:
        return source.prefix
      exports = export_layout.step_exports(path)
      if exports:
        raise CheckpointError(
            f"--checkpoint {path}: holds exports, not a checkpoint. Give one "
            f"of them, e.g. {os.path.join(path, exports[-1])}.")
      raise CheckpointError(
          f"--checkpoint {path}: the directory holds no checkpoint and is "
          "not an export. Give a pretraining model_dir, a checkpoint prefix "
          f"such as {os.path.join(path, 'ckpt-1000')}, or an export such as "
          f"{export_layout.step_export_dir(path, 1000)}.")
    return latest
  if tf.io.gfile.exists(path + ".index"):
    return path
  if tf.io.gfile.exists(path):
    raise CheckpointError(
        f"--checkpoint {path}: not a checkpoint. Give the prefix without "
        "the .index/.data suffix, the run's model_dir, or an export "
        "directory.")
  raise CheckpointError(f"--checkpoint {path}: no such file or directory.")


def _authors_source(path):
  """The authors' TF2 SavedModel or checkpoint at `path`, or None."""
  return authors.open_source(path)


def stored_config(checkpoint_prefix):
  """The run config of a checkpoint or export, as a dict, or None.

  For a checkpoint, the `config.json` beside it; for an export's variables,
  the config recorded in its metadata.
  """
  export_dir = export_layout.export_dir_of(checkpoint_prefix)
  if export_dir is not None:
    try:
      return export_layout.read_metadata(export_dir).get("config")
    except export_layout.ExportError:
      return None
  return config_file.read(os.path.dirname(checkpoint_prefix), strict=False)


def _verify_given(path, prefix):
  # A checkpoint the user names is theirs to replace: no fallback.
  try:
    ours.verify(prefix)
  except ours.DamagedCheckpointError as error:
    raise CheckpointError(
        f"--checkpoint {path}: {error}. Give an intact checkpoint, e.g. an "
        "earlier ckpt-N of the same run, or its export.") from error


def load_pretrained(model, path, model_config, log=None, *, image_size):
  """Loads a pretraining checkpoint into `model` for fine-tuning.

  The encoder and projection head are loaded, and the supervised head as
  `supervised_head_start` says: when fine-tuning, restored unless
  `zero_init_logits_layer`, the checkpoint's head does not fit, or it read
  another projection layer than this run's `ft_proj_selector`. The
  optimizer state starts fresh.

  Args:
    model: a `SimCLRModel`.
    path: what `--checkpoint` gave (see `resolve`): a checkpoint, a model_dir
      or an export.
    model_config: this run's `ModelConfig`, to explain mismatches.
    log: where the line on what was loaded goes.
    image_size: this run's image size (an automatic stem depends on it).

  Returns:
    The checkpoint prefix that was loaded.

  Raises:
    CheckpointError: if the checkpoint is missing or holds a different
      architecture.
  """
  source = _authors_source(path)
  if source is not None:
    return authors.load_pretrained(model, source, model_config, log)
  prefix = resolve(path)
  _verify_given(path, prefix)
  stored = stored_config(prefix)
  parts = dict(encoder=model.encoder, projection_head=model.projection_head)
  head = model.supervised_head
  head_start = None
  if head is not None:
    head_start = ours.supervised_head_start(
        head, model_config, model.train_mode,
        ours.saved_part_shapes(prefix, "supervised_head"),
        config_file.head_feature_layer(stored))
    if head_start is None:
      parts["supervised_head"] = head
  try:
    ours.restore_parts(prefix, parts)
  except (AssertionError, ValueError, tf.errors.OpError) as error:
    differences = config_file.architecture_differences(
        stored, model_config, image_size)
    detail = ("; ".join(differences) if differences else
              str(error).splitlines()[0][:200])
    raise CheckpointError(
        f"--checkpoint {prefix} does not match this model ({detail}). Use "
        "the pretraining run's architecture flags.") from error
  if log is not None:
    loaded = ", ".join(name.replace("_", " ") for name in parts)
    log(f"Loaded the pretrained encoder from {prefix}. From it: {loaded}. "
        f"Starting fresh: {head_start + ', ' if head_start else ''}"
        "optimizer.")
  return prefix


def restore_for_eval(model, path, log=None):
  """Restores a whole model (with its supervised head) for evaluation.

  Args:
    model: a `SimCLRModel` with a supervised head.
    path: a checkpoint prefix, a run's model_dir or an export.
    log: where a line on what was loaded goes (the authors' formats).

  Returns:
    The checkpoint prefix.

  Raises:
    CheckpointError: if missing or of another architecture.
  """
  source = _authors_source(path)
  if source is not None:
    return authors.restore_for_eval(model, source, log)
  prefix = resolve(path)
  _verify_given(path, prefix)
  try:
    export_dir = export_layout.export_dir_of(prefix)
    if export_dir:
      ours.restore_parts(prefix, dict(encoder=model.encoder,
                                 projection_head=model.projection_head,
                                 supervised_head=model.supervised_head))
      # An export holds no optimizer; report results at the step it was
      # exported at, as for the checkpoint it came from.
      step = export_layout.read_metadata(export_dir).get("global_step")
      if step is not None and getattr(model, "optimizer", None) is not None:
        model.optimizer.iterations.assign(step)
    else:
      status = tf.train.Checkpoint(model=model).restore(prefix)
      status.expect_partial().assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.OpError) as error:
    raise CheckpointError(
        f"Cannot evaluate {prefix}: it does not hold this model with a "
        "supervised head (use the same flags as the run that wrote it). "
        f"{str(error).splitlines()[0][:200]}") from error
  return prefix
