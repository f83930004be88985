"""Checkpoints: saving, resuming, and loading a pretrained encoder.

A run's checkpoints are `tf.train.Checkpoint(model=..., optimizer=...)`
written by a `tf.train.CheckpointManager` into `model_dir` as `ckpt-<step>`.
Mirrored variables save and restore under any strategy, so a run can resume
on different hardware.
"""

import json
import os

import keras
import tensorflow as tf

CHECKPOINT_NAME = "ckpt"
CONFIG_FILE = "config.json"
# Settings that change the encoder or projection head's variables.
_ARCHITECTURE_KEYS = ("resnet_depth", "width_multiplier", "sk_ratio",
                      "se_ratio", "cifar_stem", "proj_head_mode",
                      "proj_out_dim", "num_proj_layers")


class CheckpointError(ValueError):
  """A checkpoint that cannot be used, with a one-line message."""


def make_manager(model, model_dir, max_to_keep):
  """A `CheckpointManager` for the model and its optimizer in `model_dir`.

  Args:
    model: a compiled `SimCLRModel` whose optimizer slots exist.
    model_dir: the run's directory.
    max_to_keep: checkpoints to keep.

  Returns:
    A `tf.train.CheckpointManager`.
  """
  # The inner optimizer is saved under "optimizer" whatever the precision,
  # so a run can resume with another --precision and keep its step and
  # slots; a loss-scale wrapper adds its scale beside it.
  optimizer = model.optimizer
  extra = {}
  if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
    extra["loss_scale_optimizer"] = optimizer
    optimizer = optimizer.inner_optimizer
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, **extra)
  return tf.train.CheckpointManager(checkpoint, directory=model_dir,
                                    max_to_keep=max_to_keep,
                                    checkpoint_name=CHECKPOINT_NAME)


def resolve(path):
  """Turns `--checkpoint` into a checkpoint prefix.

  Args:
    path: a checkpoint prefix (".../ckpt-100"), or a directory holding
      checkpoints (a run's model_dir), whose latest is used.

  Returns:
    The checkpoint prefix.

  Raises:
    CheckpointError: if there is no checkpoint there.
  """
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise CheckpointError(
          f"--checkpoint {path}: the directory holds no checkpoint. Give a "
          "pretraining model_dir, a checkpoint prefix such as "
          f"{os.path.join(path, 'ckpt-1000')}, or an export.")
    return latest
  if tf.io.gfile.exists(path + ".index"):
    return path
  if tf.io.gfile.exists(path):
    raise CheckpointError(
        f"--checkpoint {path}: not a checkpoint. Give the prefix without "
        "the .index/.data suffix, or the run's model_dir.")
  raise CheckpointError(f"--checkpoint {path}: no such file or directory.")


def stored_config(checkpoint_prefix):
  """The `config.json` next to a checkpoint, as a dict, or None."""
  path = os.path.join(os.path.dirname(checkpoint_prefix), CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path) as handle:
      return json.load(handle)
  except (ValueError, tf.errors.OpError):
    return None


def architecture_differences(stored, model_config):
  """Architecture settings that differ between a stored config and ours.

  Args:
    stored: a `config.json` dict (or None).
    model_config: this run's `ModelConfig`.

  Returns:
    "name: checkpoint X, this run Y" strings; empty if unknown or equal.
  """
  if not stored:
    return []
  stored_model = stored.get("model", {})
  differences = []
  for key in _ARCHITECTURE_KEYS:
    if key in stored_model and stored_model[key] != getattr(model_config,
                                                            key):
      differences.append(f"{key}: checkpoint {stored_model[key]}, this run "
                         f"{getattr(model_config, key)}")
  return differences


def load_pretrained(model, path, model_config):
  """Loads the encoder and projection head of a checkpoint into `model`.

  The supervised head and optimizer state are not loaded: fine-tuning and
  linear evaluation start their head and optimizer afresh, as the authors do
  (they zero the head when `zero_init_logits_layer`).

  Args:
    model: a `SimCLRModel`.
    path: what `--checkpoint` gave (see `resolve`).
    model_config: this run's `ModelConfig`, to explain mismatches.

  Returns:
    The checkpoint prefix that was loaded.

  Raises:
    CheckpointError: if the checkpoint is missing or holds a different
      architecture.
  """
  prefix = resolve(path)
  parts = tf.train.Checkpoint(encoder=model.encoder,
                              projection_head=model.projection_head)
  try:
    status = tf.train.Checkpoint(model=parts).restore(prefix)
    status.expect_partial().assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.OpError) as error:
    differences = architecture_differences(stored_config(prefix),
                                           model_config)
    detail = ("; ".join(differences) if differences else
              str(error).splitlines()[0][:200])
    raise CheckpointError(
        f"--checkpoint {prefix} does not match this model ({detail}). Use "
        "the pretraining run's architecture flags.") from error
  return prefix


def restore_for_eval(model, path):
  """Restores a whole model (with its supervised head) for evaluation.

  Args:
    model: a `SimCLRModel` with a supervised head.
    path: a checkpoint prefix or a run's model_dir.

  Returns:
    The checkpoint prefix.

  Raises:
    CheckpointError: if missing or of another architecture.
  """
  prefix = resolve(path)
  try:
    status = tf.train.Checkpoint(model=model).restore(prefix)
    status.expect_partial().assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.OpError) as error:
    raise CheckpointError(
        f"Cannot evaluate {prefix}: it does not hold this model with a "
        "supervised head (use the same flags as the run that wrote it). "
        f"{str(error).splitlines()[0][:200]}") from error
  return prefix
