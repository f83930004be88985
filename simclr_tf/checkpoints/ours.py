"""Checkpoints: saving, resuming, and loading a pretrained encoder.

A run's checkpoints are `tf.train.Checkpoint(model=..., optimizer=...)`
written by a `tf.train.CheckpointManager` into `model_dir` as `ckpt-<step>`.
Mirrored variables save and restore under any strategy, so a run can resume
on different hardware.

`--checkpoint` may also name a SavedModel written by `simclr_tf.export`
(its layout is `simclr_tf.storage.export_layout`'s). Its variables file is an
object-based checkpoint too. Its root holds each part's variables as a list
(`encoder_variables`, ...) in Keras' structural order, the order `layer.weights` lists them in, so an export
loads through the same `tf.train.Checkpoint` matching as a run's checkpoint,
variable by variable, with shapes checked.

`--checkpoint` may also be one of the authors' TF2 formats (their SavedModel
or training checkpoint); `simclr_tf.checkpoints.authors` reads those, and the
functions here hand such paths to it.
"""

import os
import re
import time
from typing import Callable, List, Optional, Sequence

import keras
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from simclr_tf.storage import config_file
from simclr_tf.storage import export_layout
from simclr_tf.storage import write_errors

CHECKPOINT_NAME = "ckpt"
CONFIG_FILE = config_file.CONFIG_FILE
# The object-graph key TensorFlow stores in every object-based checkpoint.
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


class CheckpointError(ValueError):
  """A checkpoint that cannot be used, with a one-line message."""


class DamagedCheckpointError(CheckpointError):
  """A checkpoint whose files cannot be read back whole.

  Args:
    prefix: the checkpoint prefix.
    path: the file found damaged (or the prefix's files, if unknown).
    reason: what TensorFlow said, one line.
  """

  def __init__(self, prefix: str, path: str, reason: str):
    self.prefix = prefix
    self.path = path
    self.reason = reason
    super().__init__(f"{path} is damaged ({reason})")


class CheckpointReadError(CheckpointError):
  """A checkpoint that could not be read, with no sign of damage.

  An interrupted read, a storage outage (a GCS 5xx), a permission error:
  the bytes may well be intact, so nothing is set aside.

  Args:
    prefix: the checkpoint prefix.
    reason: what the storage or TensorFlow said, one line.
  """

  def __init__(self, prefix: str, reason: str):
    self.prefix = prefix
    self.reason = reason
    super().__init__(f"cannot read {prefix} ({reason})")


# Suffix of a damaged checkpoint's files, renamed aside (see
# `resumable_checkpoint`): `ckpt-6.index` becomes `ckpt-6.damaged.index`.
DAMAGED_TAG = "damaged"
_SHARD = re.compile(r"shard (\d+)")

# What reading a damaged or vanished checkpoint raises: OpError subclasses
# (DataLossError for a checksum mismatch, NotFoundError), and IndexError for
# a truncated file ("Read less bytes than requested").
_READ_ERRORS = (tf.errors.OpError, IndexError, ValueError, OSError)
# TensorFlow's checkpoint reader raises every failure as a plain OpError
# (code UNKNOWN), so corruption is told from a failed read by its message:
# a checksum, a truncation, a file that is not a bundle, a shard missing.
_CORRUPTION_MARKERS = ("Checksum does not match",
                       "Read less bytes than requested", "sstable",
                       "Perhaps the file is corrupt", "Data loss",
                       "No such file or directory")
# Seconds between the attempts to read a checkpoint that failed without a
# sign of damage: five attempts over 15 s ride out a dropped connection or
# a storage node's restart, and a lasting outage still stops the run soon.
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0)


def make_manager(model, model_dir, max_to_keep):
  """A `CheckpointManager` for the model and its optimizer in `model_dir`.

  Args:
    model: a compiled `SimCLRModel` whose optimizer slots exist.
    model_dir: the run's directory.
    max_to_keep: checkpoints to keep.

  Returns:
    A `tf.train.CheckpointManager`.
  """
  checkpoint = _run_checkpoint(model)
  return tf.train.CheckpointManager(checkpoint, directory=model_dir,
                                    max_to_keep=max_to_keep,
                                    checkpoint_name=CHECKPOINT_NAME)


def save(manager, step):
  """Saves checkpoint `step` with `manager`.

  Crash safety comes from TensorFlow's order of work: the checkpoint's
  files are written first (data under a temporary name, then renamed), and
  only then is the `checkpoint` state file, which `latest_checkpoint` reads,
  atomically replaced to name it; old checkpoints are deleted after that.
  A kill at any point leaves the previous checkpoint named and intact.

  A write that fails (a full disk, say) leaves the state file as it was;
  what it wrote of the new checkpoint (the `ckpt-<step>_temp` directory
  TensorFlow writes shards into, and any `ckpt-<step>` files) is removed,
  so nothing partial is left beside the previous checkpoint.

  Args:
    manager: a `tf.train.CheckpointManager`.
    step: the step number, used in the file name ("ckpt-<step>").

  Returns:
    The new checkpoint's prefix.

  Raises:
    write_errors.WriteFailedError: the checkpoint could not be written.
  """
  try:
    return manager.save(checkpoint_number=step)
  except (tf.errors.OpError, OSError) as error:
    prefix = os.path.join(manager.directory, f"{CHECKPOINT_NAME}-{step}")
    _remove_unfinished(prefix, manager.directory)
    previous = manager.latest_checkpoint
    raise write_errors.WriteFailedError(
        f"could not write checkpoint {prefix} "
        f"({write_errors.reason(error)}); the previous checkpoint "
        f"{previous or '(none yet)'} is intact and nothing partial was "
        "left. Free space (or fix the disk) and rerun the same command to "
        "resume" + (" from it." if previous else ".")) from error


def _remove_unfinished(prefix, directory):
  """Deletes a failed save's files, unless the state file names them."""
  if prefix in listed_checkpoints(directory):
    return
  for path in tf.io.gfile.glob(prefix + "_temp*"):
    _remove_quietly(path)
  for path in [prefix + ".index"] + _data_files(prefix):
    _remove_quietly(path)


def _remove_quietly(path):
  try:
    if tf.io.gfile.isdir(path):
      tf.io.gfile.rmtree(path)
    elif tf.io.gfile.exists(path):
      tf.io.gfile.remove(path)
  except (tf.errors.OpError, OSError):
    pass  # Not in the state file, so never read; best effort.


def restore_latest(model, prefix):
  """Restores a run's own checkpoint (model and optimizer) to resume it.

  Args:
    model: a compiled `SimCLRModel` whose optimizer slots exist.
    prefix: the checkpoint prefix, from `resumable_checkpoint`.

  Raises:
    CheckpointError: if it cannot be read (it changed since it was checked).
  """
  try:
    _run_checkpoint(model).restore(prefix).expect_partial()
  except _READ_ERRORS as error:
    raise CheckpointError(
        f"cannot resume from {prefix} ({first_line(error)}); nothing was "
        "changed. Rerun to check the run's checkpoints again.") from error


def first_line(error) -> str:
  """The first line of an error's message, without TF's op preamble."""
  text = (getattr(error, "message", None) or str(error)).strip()
  line = text.splitlines()[0] if text else type(error).__name__
  line = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", line)
  return line[:200]


def _data_files(prefix) -> List[str]:
  return sorted(tf.io.gfile.glob(prefix + ".data-?????-of-?????"))


def _damaged_data_file(prefix, error) -> str:
  files = _data_files(prefix)
  shard = _SHARD.search(first_line(error))
  if shard:
    wanted = f".data-{int(shard.group(1)):05d}-of-"
    named = [path for path in files if wanted in path]
    if named:
      return named[0]
  if len(files) == 1:
    return files[0]
  return prefix + ".data-*"


def verify(prefix) -> None:
  """Reads back every tensor of a checkpoint, which checks its checksums.

  TensorFlow's checkpoint bundle stores a CRC32C of every tensor (and of
  every block of the `.index` file), and reading a tensor checks it: a
  truncated file cannot be read, a flipped bit fails its checksum. This
  reads the whole checkpoint once, one tensor at a time.

  Args:
    prefix: a checkpoint prefix (".../ckpt-100", or an export's
      ".../variables/variables").

  Raises:
    DamagedCheckpointError: naming the first damaged file, for a checksum
      mismatch, a truncated or malformed file, or a missing shard.
    CheckpointReadError: a read failed without any of those signs.
  """
  index = prefix + ".index"
  try:
    reader = tf.train.load_checkpoint(prefix)
  except _READ_ERRORS as error:
    raise _read_failure(prefix, index, error) from error
  for key in sorted(reader.get_variable_to_dtype_map()):
    try:
      reader.get_tensor(key)
    except _READ_ERRORS as error:
      raise _read_failure(prefix, _damaged_data_file(prefix, error),
                          error) from error


def is_corruption(error) -> bool:
  """Whether a read error proves the bytes wrong, not the storage busy."""
  if isinstance(error, (IndexError, tf.errors.DataLossError)):
    return True
  text = getattr(error, "message", None) or str(error)
  return any(marker in text for marker in _CORRUPTION_MARKERS)


def _read_failure(prefix, path, error) -> CheckpointError:
  if is_corruption(error):
    return DamagedCheckpointError(prefix, path, first_line(error))
  return CheckpointReadError(prefix, first_line(error))


def _with_retries(action, prefix, log):
  """`action()`, tried again after each `CheckpointReadError`.

  Raises:
    CheckpointReadError: the last attempt failed too; its message says how
      often it was tried and that nothing was changed.
  """
  for attempt, delay in enumerate(RETRY_DELAYS_S + (None,), start=1):
    try:
      return action()
    except CheckpointReadError as error:
      if delay is None:
        raise CheckpointReadError(
            prefix, f"{error.reason}; tried {attempt} times over "
            f"{sum(RETRY_DELAYS_S):.0f} s; nothing was changed. Check the "
            "storage, then rerun to resume") from error
      log(f"WARNING: reading checkpoint {prefix} failed ({error.reason}); "
          f"trying again in {delay:.0f} s (attempt {attempt + 1} of "
          f"{len(RETRY_DELAYS_S) + 1}).")
      time.sleep(delay)


def listed_checkpoints(model_dir) -> List[str]:
  """The checkpoints `model_dir/checkpoint` names, newest first."""
  state = tf.train.get_checkpoint_state(model_dir)
  if state is None or not state.model_checkpoint_path:
    return []
  paths = list(state.all_model_checkpoint_paths)
  if state.model_checkpoint_path in paths:
    paths.remove(state.model_checkpoint_path)
  return [state.model_checkpoint_path] + paths[::-1]


def checkpoint_step(prefix) -> int:
  """The step a run's checkpoint was saved at: 6 for ".../ckpt-6"."""
  name = os.path.basename(prefix)
  match = re.fullmatch(re.escape(CHECKPOINT_NAME) + r"-(\d+)", name)
  if match is None:
    raise CheckpointError(f"{prefix} is not a run's checkpoint (its name is "
                          f"not {CHECKPOINT_NAME}-<step>).")
  return int(match.group(1))


def prefix_of_step(model_dir, step) -> str:
  """The prefix of `model_dir`'s checkpoint of `step`.

  Spelled as the state file spells it where it lists that checkpoint.
  """
  for prefix in listed_checkpoints(model_dir):
    if os.path.basename(prefix) == f"{CHECKPOINT_NAME}-{step}":
      return prefix
  return os.path.join(model_dir, f"{CHECKPOINT_NAME}-{step}")


def _rewrite_state(model_dir, latest, dropped):
  """Names `latest` as the newest checkpoint, forgetting `dropped`.

  The save times are kept: `CheckpointManager` only takes over (and later
  prunes) the listed checkpoints that have one.
  """
  state = tf.train.get_checkpoint_state(model_dir)
  paths = list(state.all_model_checkpoint_paths)
  stamps = list(state.all_model_checkpoint_timestamps)
  if len(stamps) != len(paths):  # A state file written without times.
    stamps = [None] * len(paths)
  kept = [(path, stamp) for path, stamp in zip(paths, stamps)
          if path not in dropped]
  tf.compat.v1.train.update_checkpoint_state(
      model_dir, latest,
      all_model_checkpoint_paths=[path for path, _ in kept],
      all_model_checkpoint_timestamps=(
          [stamp for _, stamp in kept] if None not in stamps else None),
      last_preserved_timestamp=state.last_preserved_timestamp or None)


def _set_aside(prefix) -> str:
  """Renames a damaged checkpoint's files to `<prefix>.damaged[-N].*`."""
  number = 1
  while True:
    tag = DAMAGED_TAG if number == 1 else f"{DAMAGED_TAG}-{number}"
    target = f"{prefix}.{tag}"
    if not tf.io.gfile.glob(target + ".*"):
      break
    number += 1
  for path in [prefix + ".index"] + _data_files(prefix):
    if tf.io.gfile.exists(path):
      tf.io.gfile.rename(path, target + path[len(prefix):])
  return target


def resumable_checkpoint(model_dir, *, log: Callable[[str], None] = print,
                         repair: bool = True) -> Optional[str]:
  """The newest intact checkpoint of a run, to resume from.

  Each checkpoint the `checkpoint` state file names is checked with
  `verify`, newest first. A damaged one is reported in one line naming the
  file, and training falls back to the newest intact one, with a warning.
  The damaged checkpoint is never deleted: with `repair`, its files are
  renamed beside it (`ckpt-6.index` to `ckpt-6.damaged.index`, readable as
  the checkpoint `ckpt-6.damaged`), so that neither the checkpoint of the
  same step written later nor `keep_checkpoint_max` can overwrite or delete
  it, and the state file is rewritten to name the intact ones only.
  If no listed checkpoint is intact, it refuses rather than starting the
  run afresh beside (and later deleting) the damaged ones.

  Only proof of damage (see `verify`) sets a checkpoint aside. A read that
  fails otherwise, such as an interrupted network read, is tried again
  after each of `RETRY_DELAYS_S`, with a warning each time; if every
  attempt fails the run stops, and nothing is renamed or rewritten.

  Args:
    model_dir: the run's directory.
    log: where warnings go.
    repair: set the damaged checkpoints aside and rewrite the state file;
      only the process that writes `model_dir` (the chief) may.

  Returns:
    A checkpoint prefix, or None if `model_dir` names no checkpoint.

  Raises:
    CheckpointError: checkpoints are named but none is intact.
    CheckpointReadError: a checkpoint could not be read, with no sign of
      damage, on any attempt.
  """
  listed = listed_checkpoints(model_dir)
  damaged, missing, intact = [], [], None
  for prefix in listed:
    if not _with_retries(lambda: _index_exists(prefix), prefix, log):
      log(f"WARNING: checkpoint {prefix} is named in "
          f"{os.path.join(model_dir, 'checkpoint')} but its files are gone.")
      missing.append(prefix)
      continue
    try:
      _with_retries(lambda: verify(prefix), prefix, log)
    except DamagedCheckpointError as error:
      log(f"WARNING: checkpoint {prefix}: {error}.")
      damaged.append(prefix)
      continue
    intact = prefix
    break
  if not (damaged or missing):
    return intact
  if intact is None:
    raise CheckpointError(
        f"{model_dir} holds no intact checkpoint (damaged or missing: "
        f"{', '.join(damaged + missing)}). Move its ckpt-* files out of "
        "model_dir to start the run afresh, or use another --model_dir.")
  kept = []
  if repair:
    kept = [_set_aside(prefix) for prefix in damaged]
    _rewrite_state(model_dir, intact, dropped=damaged + missing)
  log(f"WARNING: resuming from the newest intact checkpoint {intact}; the "
      "steps after it are trained again"
      + (f"; the damaged checkpoint is kept as {', '.join(kept)}"
         if kept else "") + ".")
  return intact


def _index_exists(prefix) -> bool:
  try:
    return tf.io.gfile.exists(prefix + ".index")
  except _READ_ERRORS as error:
    raise CheckpointReadError(prefix, first_line(error)) from error


def _run_checkpoint(model):
  """The object graph of a run's checkpoints."""
  # The inner optimizer is saved under "optimizer" whatever the precision,
  # so a run can resume with another --precision and keep its step and
  # slots; a loss-scale wrapper adds its scale beside it.
  optimizer = model.optimizer
  extra = {}
  if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
    extra["loss_scale_optimizer"] = optimizer
    optimizer = optimizer.inner_optimizer
  return tf.train.Checkpoint(model=model, optimizer=optimizer, **extra)


def restore_parts(prefix, parts):
  """Restores named parts of a model from a checkpoint or export prefix.

  Args:
    prefix: from `resolve`.
    parts: attribute name ("encoder", "projection_head", "supervised_head")
      to the layer to fill; names are those of `SimCLRModel`.

  Raises:
    AssertionError, ValueError, tf.errors.OpError: the checkpoint lacks a
      part or holds other shapes (callers turn these into CheckpointError).
  """
  if export_layout.export_dir_of(prefix):
    _, graph = _object_graph(prefix)
    lists = {}
    for name, layer in parts.items():
      attribute = export_layout.part_attribute(name)
      weights = list(layer.weights)
      node = _node_at(graph, [attribute])
      if node is None:
        raise ValueError(f"the export has no {name}")
      # A longer saved list would otherwise load partially without a word.
      if len(node.children) != len(weights):
        raise ValueError(f"the export's {name} has {len(node.children)} "
                         f"variables, this model's {len(weights)}")
      lists[attribute] = weights
    root = tf.train.Checkpoint(**lists)
  else:
    # A run's checkpoint keeps the model's parts under `model`.
    root = tf.train.Checkpoint(model=tf.train.Checkpoint(**parts))
  # `read`, unlike `restore`, does not create the root's save counter, which
  # an export does not hold and the assertion below would then miss.
  status = root.read(prefix)
  status.expect_partial().assert_existing_objects_matched()


def _object_graph(prefix):
  reader = tf.train.load_checkpoint(prefix)
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
  return reader, graph


def _node_at(graph, steps):
  node = graph.nodes[0]
  for step in steps:
    child = [c.node_id for c in node.children if c.local_name == step]
    if not child:
      return None
    node = graph.nodes[child[0]]
  return node


def saved_variable_shape(prefix, path: Sequence[str]):
  """The shape of a variable in a run's checkpoint, found by object path.

  Variables shared by several objects are stored under one name only (the
  optimizer's, say), so names cannot be trusted; the object graph can.

  Args:
    prefix: a checkpoint prefix from `resolve` (not an export's).
    path: attribute names from the model to the variable (e.g.
      ("supervised_head", "linear_layer", "dense", "_kernel")).

  Returns:
    The shape as a list, or None if the checkpoint has no such object.
  """
  reader, graph = _object_graph(prefix)
  node = _node_at(graph, ["model"] + list(path))
  if node is None:
    return None
  keys = [a.checkpoint_key for a in node.attributes
          if a.name == "VARIABLE_VALUE"]
  if not keys:
    return None
  return list(reader.get_variable_to_shape_map()[keys[0]])


def saved_part_shapes(prefix, part_name) -> Optional[List[tuple]]:
  """The shapes of the variables a checkpoint or export holds for a part.

  Args:
    prefix: from `resolve`: a run's checkpoint or an export's variables.
    part_name: "encoder", "projection_head" or "supervised_head".

  Returns:
    The shapes as a sorted list of tuples, or None if there is no such part.
  """
  reader, graph = _object_graph(prefix)
  steps = ([export_layout.part_attribute(part_name)]
           if export_layout.export_dir_of(prefix)
           else ["model", part_name])
  node = _node_at(graph, steps)
  if node is None:
    return None
  shapes = reader.get_variable_to_shape_map()
  found, seen, stack = [], set(), [node]
  while stack:
    node = stack.pop()
    found += [tuple(shapes[a.checkpoint_key]) for a in node.attributes
              if a.name == "VARIABLE_VALUE"]
    for child in node.children:
      # A variable reachable by two attribute paths is one variable.
      if child.node_id not in seen:
        seen.add(child.node_id)
        stack.append(graph.nodes[child.node_id])
  return sorted(found) if found else None


def supervised_head_start(head, model_config, train_mode,
                          saved_shapes: Optional[List[tuple]],
                          saved_feature_layer: Optional[int] = None):
  """How the supervised head of a stage loading `--checkpoint` starts.

  Fine-tuning follows the authors' rule: they restore the whole model from
  the pretraining checkpoint, so the head trained beside pretraining
  carries over, and then zero it when `zero_init_logits_layer`. A
  checkpoint without a head, or whose head has other shapes (another class
  count, feature width or feature normalisation), leaves this head at its
  initialisation, so transfer to a dataset with other classes still works.
  So does a head trained on another projection layer's output than this
  run reads (v2 fine-tunes from layer 1, beside pretraining the head reads
  layer 0): the shapes can agree, but the weights were fitted to other
  features, and restored they start fine-tuning far worse than a fresh head.
  A linear evaluation always trains its own head: its figure then measures
  the encoder with the same head training as the random-encoder baseline.

  Args:
    head: this model's `SupervisedHead`.
    model_config: this run's `ModelConfig`.
    train_mode: "finetune", "distill" or "linear_eval".
    saved_shapes: the checkpoint's head variable shapes from
      `saved_part_shapes` (or the authors' equivalent), or None.
    saved_feature_layer: the projection layer whose output the checkpoint's
      head read (`ModelConfig.proj_selector` of its run), or None where the
      checkpoint does not record it (the authors' formats).

  Returns:
    None to restore the head; otherwise the line saying how it starts.
  """
  if model_config.zero_init_logits_layer:
    return "supervised head at zero (--zero_init_logits_layer)"
  if train_mode not in ("finetune", "distill"):
    return "supervised head (linear evaluation trains its own)"
  if saved_shapes is None:
    return ("supervised head (the checkpoint has none: pretrained without "
            "--lineareval_while_pretraining)")
  layer = model_config.proj_selector
  if saved_feature_layer is not None and saved_feature_layer != layer:
    return (f"supervised head (the checkpoint's read projection layer "
            f"{saved_feature_layer}, this run's reads layer {layer}: "
            "--ft_proj_selector)")
  ours = sorted(tuple(weight.shape) for weight in head.weights)
  if ours == saved_shapes:
    return None
  kernels = [shape for shape in saved_shapes if len(shape) == 2]
  saved = (f"maps {kernels[0][0]} features to {kernels[0][1]} classes"
           if len(kernels) == 1 else f"has shapes {saved_shapes}")
  return (f"supervised head (the checkpoint's {saved}, this "
          f"run's {head.linear_layer.dense.kernel.shape[0]} to "
          f"{head.num_classes} classes"
          f"{' with' if head.feature_norm else ' without'} feature "
          "normalisation)")


def write_model_checkpoint(model, config, directory, step):
  """Writes a model alone as a run's checkpoint, with its `config.json`.

  What `--checkpoint` then takes like any pretraining model_dir: the model's
  variables under `model` as `ckpt-<step>` (no optimizer state, so a run
  started from it begins at step 0), and the config its architecture is read
  from by the export tools.

  Args:
    model: a built `SimCLRModel`.
    config: the `ExperimentConfig` it was built from.
    directory: where to write; created if missing.
    step: the checkpoint's number.

  Returns:
    The checkpoint prefix.
  """
  tf.io.gfile.makedirs(directory)
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(model=model), directory=directory, max_to_keep=1,
      checkpoint_name=CHECKPOINT_NAME)
  prefix = manager.save(checkpoint_number=step)
  config_file.write(directory, config)
  return prefix
