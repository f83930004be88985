"""SavedModel export of a trained SimCLR model, for TF Hub style reuse.

An export is a TensorFlow SavedModel that every common loader accepts:

- `tf.saved_model.load(path)` / `hub.load(path)`: the root object follows TF
  Hub's reusable-SavedModel interface. `obj(images, training=False)` takes
  float images (B, H, W, 3) in [0, 1] and returns a dict of named outputs;
  `trainable=` is accepted in place of `training=`, as the authors' hub
  modules take it. `obj.variables`, `obj.trainable_variables` and
  `obj.regularization_losses` (and `obj.non_trainable_variables`) are lists
  saved with the object, so `hub.KerasLayer(path, trainable=True)`
  fine-tunes every weight.
- `keras.layers.TFSMLayer(path, call_endpoint="serving_default")`: the
  `serving_default` signature (inference) returns the same dict;
  `call_training_endpoint="call_training"` adds training-mode BatchNorm.
- Serving: `serving_default` takes `images`; `serving_image_bytes` takes
  encoded jpeg/png `image_bytes` and applies the evaluation transform
  (`augment.preprocess_for_eval` at the training image size) first.

Outputs (keys are the module constants below): the encoder's
`initial_conv`, `initial_max_pool`, `block_group1`..`block_group4` and
`final_avg_pool`; `proj_head_input` (the encoder features) and
`proj_head_output`; `logits_sup` when the model has a supervised head.

Decisions:

- The export is a copy of the model with every layer trainable (a linear
  evaluation's frozen encoder included: whoever reuses it decides what to
  freeze) and BatchNorm not synchronised across replicas: a hub module is
  called on one device's batch. Sync BN computes its variance as
  E[x^2] - E[x]^2 rather than in two passes, so a `global_bn` model and its
  export differ in training mode by float rounding (up to 3e-5 on outputs
  of magnitude 1 to 4 in our tiny test models); in inference mode they are
  equal.
- `training=True` is fine-tuning mode: BatchNorm normalises with the batch's
  statistics and updates its moving averages, as a Keras BatchNormalization
  layer does, so a fine-tuned module's inference statistics follow its
  weights.
- `regularization_losses` is empty: SimCLR's weight decay lives in the
  optimizer (LARS) or the training loss, not in the layers. Add your own.

Exports are written under a temporary name beside the target and renamed
when complete, so a crash never leaves a half-written export in place.
`assets.extra/simclr_tf_export.json` records what was exported (the run's
config, image size, step); it is also how `--checkpoint` recognises an
export.
"""

import dataclasses
import json
import os
import time
from typing import Callable, Dict, Optional

import keras
import numpy as np
import tensorflow as tf

from simclr_tf import augment
from simclr_tf import authors_checkpoint
from simclr_tf import checkpoints
from simclr_tf import config_file
from simclr_tf import run_dir
from simclr_tf import write_errors
from simclr_tf.config import ConfigError
from simclr_tf.config import ExperimentConfig
from simclr_tf.models import resnet_encoder as resnet_lib
from simclr_tf.models import simclr

# Output keys of the export, as in the authors' hub modules.
INITIAL_CONV = resnet_lib.INITIAL_CONV
INITIAL_MAX_POOL = resnet_lib.INITIAL_MAX_POOL
BLOCK_GROUPS = resnet_lib.BLOCK_GROUPS
FINAL_AVG_POOL = resnet_lib.FINAL_AVG_POOL
PROJ_HEAD_INPUT = simclr.PROJ_HEAD_INPUT
PROJ_HEAD_OUTPUT = simclr.PROJ_HEAD_OUTPUT
LOGITS_SUP = simclr.LOGITS_SUP
ENCODER_OUTPUTS = resnet_lib.ENDPOINTS
HEAD_OUTPUTS = (PROJ_HEAD_INPUT, PROJ_HEAD_OUTPUT)

# Signatures, endpoints and their inputs.
SERVING_SIGNATURE = "serving_default"
IMAGE_BYTES_SIGNATURE = "serving_image_bytes"
TRAINING_ENDPOINT = "call_training"
IMAGES_INPUT = "images"
IMAGE_BYTES_INPUT = "image_bytes"

# Root attributes holding each part's variables (see `ModelParts`).
ENCODER_VARIABLES = checkpoints.export_part_attribute("encoder")
PROJECTION_HEAD_VARIABLES = checkpoints.export_part_attribute(
    "projection_head")
SUPERVISED_HEAD_VARIABLES = checkpoints.export_part_attribute(
    "supervised_head")

# `model_dir/saved_model/<step>/` holds the automatic exports.
EXPORTS_DIR = "saved_model"
METADATA_FORMAT = "simclr_tf.export"
METADATA_VERSION = 1
_TEMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"


class ExportError(ValueError):
  """An export that cannot be written or used, or inputs it cannot take.

  The message is one line meant for the user.
  """


def check_images(images) -> None:
  """Checks that `images` is a float (batch, height, width, 3) batch.

  Args:
    images: a tensor or array.

  Raises:
    ExportError: naming the shape or dtype received.
  """
  shape = tf.TensorShape(getattr(images, "shape", None))
  if shape.rank != 4 or shape[-1] != 3:
    shape_text = "unknown" if shape.rank is None else tuple(shape.as_list())
    raise ExportError(
        "Images must be a (batch, height, width, 3) batch of RGB images. "
        f"Received: images.shape={shape_text}")
  dtype = tf.as_dtype(images.dtype)
  if not dtype.is_floating:
    raise ExportError(
        "Images must be floats in [0, 1] (e.g. "
        "tf.image.convert_image_dtype(images, tf.float32)). Received: "
        f"images.dtype={dtype.name}")


@dataclasses.dataclass(frozen=True)
class ModelParts:
  """The layers an export computes with (a plain holder: not saved itself).

  Attributes:
    encoder: a `resnet()` model whose `ENDPOINTS` layers give the
      intermediate outputs.
    projection_head: a built `ProjectionHead`.
    supervised_head: a built `SupervisedHead`, or None.
  """
  encoder: keras.Model
  projection_head: keras.layers.Layer
  supervised_head: Optional[keras.layers.Layer] = None

  def weights_by_part(self) -> Dict[str, list]:
    """Each part's weights in Keras' structural order, keyed as saved."""
    parts = {ENCODER_VARIABLES: self.encoder.weights,
             PROJECTION_HEAD_VARIABLES: self.projection_head.weights}
    if self.supervised_head is not None:
      parts[SUPERVISED_HEAD_VARIABLES] = self.supervised_head.weights
    return {name: list(weights) for name, weights in parts.items()}


class SimCLRExport(tf.Module):
  """The root object of an export: a reusable SavedModel.

  Only TensorFlow objects are saved: the functions below and lists of
  variables, as Keras' own `ExportArchive` does. The Keras layers stay out of
  the SavedModel, which keeps it loadable without this project's code and
  quick to write.

  Args:
    parts: the `ModelParts` to compute with.
    image_size: the side the model was trained at; the bytes signature
      resizes to it.
    augment_config: the `AugmentConfig` whose evaluation transform the bytes
      signature applies.
    name: module name.
  """

  # TF Hub's reusable-SavedModel interface reads these three as lists saved
  # with the object. tf.Module computes `variables` and
  # `trainable_variables` as properties, which SavedModel does not save:
  # after loading they are missing and hub.KerasLayer(trainable=True) sees
  # no weights (the authors' issue #116). Plain class attributes shadow the
  # properties so that __init__ can store the lists. `non_trainable_variables`
  # (BatchNorm statistics) is saved too, as Keras' ExportArchive saves it.
  variables = ()
  trainable_variables = ()
  non_trainable_variables = ()
  regularization_losses = ()

  def __init__(self, parts: ModelParts, *, image_size, augment_config,
               name="simclr_export"):
    super().__init__(name=name)
    if image_size < 8:
      raise ExportError(f"`image_size` must be at least 8. Received: "
                        f"image_size={image_size}")
    self.parts = parts
    self.image_size = image_size
    self.augment_config = augment_config
    self.output_keys = (ENCODER_OUTPUTS + HEAD_OUTPUTS +
                        ((LOGITS_SUP,) if parts.supervised_head else ()))
    weights_by_part = parts.weights_by_part()
    # Per-part lists let `--checkpoint` load an export's encoder and
    # projection head by object path, as from a run's checkpoint.
    for part_name, weights in weights_by_part.items():
      setattr(self, part_name, weights)
    weights = [w for part in weights_by_part.values() for w in part]
    self.variables = weights
    self.trainable_variables = [w for w in weights if w.trainable]
    self.non_trainable_variables = [w for w in weights if not w.trainable]
    self.regularization_losses = []
    images_spec = tf.TensorSpec([None, None, None, 3], tf.float32,
                                name=IMAGES_INPUT)
    bytes_spec = tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)
    # The network is traced once per BatchNorm mode. Every endpoint calls
    # these two traces, so the endpoints' own traces (and saving's retraces
    # of them) only wrap a call: exporting costs two traces of the network,
    # not one per endpoint. autograph=False throughout: there is no
    # tensor-dependent Python control flow, and conversion slows tracing.
    forward = _make_forward(parts)

    def trace(training):
      return tf.function(lambda images: forward(images, training),
                         input_signature=[images_spec],
                         autograph=False).get_concrete_function()

    by_mode = {False: trace(False), True: trace(True)}
    self._run = lambda images, training: by_mode[training](images)
    # A loaded tf.function only runs the traces saved with it: trace every
    # way the reusable interface is called (`training` or the authors'
    # `trainable`, each True or False, or neither).
    for kwargs in ({}, {"training": True}, {"trainable": True},
                   {"trainable": False}):
      self.__call__.get_concrete_function(images_spec, **kwargs)
    self.serve = self.__call__.get_concrete_function(images_spec)
    setattr(self, TRAINING_ENDPOINT,
            self.__call__.get_concrete_function(images_spec, training=True))
    decode_and_transform = _make_decode_and_transform(image_size,
                                                      augment_config)
    serve = self.serve

    @tf.function(input_signature=[bytes_spec], autograph=False)
    def serve_image_bytes(image_bytes):
      return serve(decode_and_transform(image_bytes))

    self.serve_image_bytes = serve_image_bytes

  @tf.function(autograph=False)
  def __call__(self, images, training=False, trainable=None):
    """Runs the network.

    Args:
      images: float32 (B, H, W, 3) in [0, 1].
      training: Python bool; True normalises with batch statistics and
        updates BatchNorm's moving averages (fine-tuning).
      trainable: the authors' name for `training`; overrides it when given.

    Returns:
      A dict from output name (`output_keys`) to float32 tensor.
    """
    check_images(images)
    if trainable is not None:
      training = trainable
    return self._run(images, bool(training))

  def serving_signatures(self) -> Dict[str, Callable]:
    """The serving signatures to save, by name."""
    return {SERVING_SIGNATURE: self.serve,
            IMAGE_BYTES_SIGNATURE: self.serve_image_bytes}


def _make_decode_and_transform(image_size, augment_config):
  """Encoded images (B,) -> float32 (B, size, size, 3), eval transform."""

  def one(encoded):
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return augment.preprocess_for_eval(image, image_size, augment_config)

  def decode_and_transform(image_bytes):
    return tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec(
        [image_size, image_size, 3], tf.float32))

  return decode_and_transform


def _make_forward(parts):
  """The export's forward pass: images -> dict of named float32 outputs."""
  encoder = parts.encoder
  projection_head = parts.projection_head
  supervised_head = parts.supervised_head
  feature_extractor = keras.Model(
      encoder.input,
      {name: encoder.get_layer(name).output for name in ENCODER_OUTPUTS},
      name="feature_extractor")

  def forward(images, training):
    outputs = dict(feature_extractor(images, training=training))
    features = outputs[FINAL_AVG_POOL]
    projection, head_input = projection_head(features, training=training)
    outputs[PROJ_HEAD_INPUT] = features
    outputs[PROJ_HEAD_OUTPUT] = projection
    if supervised_head is not None:
      outputs[LOGITS_SUP] = supervised_head(head_input, training=training)
    # Mixed-precision models compute in 16 bits; consumers get float32.
    return {name: tf.cast(value, tf.float32)
            for name, value in outputs.items()}

  return forward


def exportable_copy(model, config: ExperimentConfig) -> SimCLRExport:
  """Wraps a copy of `model` fit for export as a `SimCLRExport`.

  The copy has plain (not distributed) variables holding the model's current
  values, every layer trainable and unsynchronised BatchNorm (see the module
  docstring). Call it outside any `strategy.scope()`.

  Args:
    model: a built `SimCLRModel`, possibly under a distribution strategy.
    config: the run's config (architecture, image size, eval transform).

  Returns:
    The `SimCLRExport`.

  Raises:
    ExportError: if `model` does not have the config's architecture.
  """
  head = model.supervised_head
  parts = _build_parts(config,
                       num_classes=head.num_classes if head else None)
  pairs = [(model.encoder, parts.encoder),
           (model.projection_head, parts.projection_head)]
  if head is not None:
    pairs.append((head, parts.supervised_head))
  for source, target in pairs:
    _copy_weights(source, target)
  return _wrap(parts, config)


def _build_parts(config, num_classes) -> ModelParts:
  """Fresh layers of the config's architecture, for an export."""
  model_config = dataclasses.replace(config.model, global_bn=False,
                                     fine_tune_after_block=-1)
  # Pretrain mode freezes nothing; the forward pass is the export's own.
  model = simclr.build_simclr_model(
      model_config, image_size=config.data.image_size,
      num_classes=num_classes or 1, train_mode="pretrain",
      with_supervised_head=num_classes is not None)
  return ModelParts(model.encoder, model.projection_head,
                    model.supervised_head)


def _wrap(parts, config) -> SimCLRExport:
  return SimCLRExport(parts, image_size=config.data.image_size,
                      augment_config=config.augment)


def _copy_weights(source, target):
  # Identical architectures list their weights in the same (structural)
  # order, whatever was frozen; check names and shapes anyway.
  source_weights, target_weights = source.weights, target.weights
  if len(source_weights) != len(target_weights):
    raise ExportError(
        f"The model's {source.name} has {len(source_weights)} weights but "
        f"the config's architecture has {len(target_weights)}: export with "
        "the config the model was built from.")
  for src, dst in zip(source_weights, target_weights):
    if src.name != dst.name or tuple(src.shape) != tuple(dst.shape):
      raise ExportError(
          f"The model's weight {src.path} {tuple(src.shape)} does not match "
          f"{dst.path} {tuple(dst.shape)} of the config's architecture.")
    dst.assign(np.asarray(src.numpy()))


def metadata(module: SimCLRExport, config: ExperimentConfig,
             global_step: Optional[int]) -> dict:
  """What `assets.extra/simclr_tf_export.json` records about an export."""
  return {
      "format": METADATA_FORMAT,
      "version": METADATA_VERSION,
      "global_step": global_step,
      "image_size": module.image_size,
      "outputs": list(module.output_keys),
      "num_classes": (module.parts.supervised_head.num_classes
                      if module.parts.supervised_head is not None else None),
      "signatures": {SERVING_SIGNATURE: IMAGES_INPUT,
                     IMAGE_BYTES_SIGNATURE: IMAGE_BYTES_INPUT},
      "training_endpoint": TRAINING_ENDPOINT,
      "config": config.to_dict(),
  }


def _pid_of(name):
  try:
    return int(name.rsplit("-", 1)[1])
  except (IndexError, ValueError):
    return None


def write_saved_model(module: SimCLRExport, export_dir: str, meta: dict, *,
                      overwrite: bool = False) -> str:
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
  """
  export_dir = export_dir.rstrip("/")
  if tf.io.gfile.isdir(export_dir) and not tf.io.gfile.listdir(export_dir):
    tf.io.gfile.rmtree(export_dir)  # An empty directory made for it.
  if tf.io.gfile.exists(export_dir):
    if not checkpoints.is_export(export_dir):
      raise ExportError(
          f"{export_dir} exists and is not an export: choose a new "
          "directory.")
    if not overwrite:
      raise ExportError(f"{export_dir} already holds an export: pass "
                        "--overwrite to replace it, or choose a new "
                        "directory.")
  parent, name = os.path.split(export_dir)
  parent = parent or "."
  tf.io.gfile.makedirs(parent)
  temp = os.path.join(parent, f"{_TEMP_PREFIX}{name}-{os.getpid()}")
  if tf.io.gfile.exists(temp):
    tf.io.gfile.rmtree(temp)
  try:
    tf.saved_model.save(module, temp, signatures=module.serving_signatures())
    meta_path = os.path.join(temp, checkpoints.EXPORT_METADATA_FILE)
    tf.io.gfile.makedirs(os.path.dirname(meta_path))
    with tf.io.gfile.GFile(meta_path, "w") as handle:
      handle.write(json.dumps(meta, indent=2, sort_keys=True))
  except (tf.errors.OpError, OSError) as error:
    # Nothing but the temporary directory was touched: remove it, and the
    # previous export (if any) stays in place.
    if tf.io.gfile.exists(temp):
      tf.io.gfile.rmtree(temp)
    raise write_errors.WriteFailedError(
        f"could not write the export {export_dir} "
        f"({write_errors.reason(error)}); nothing partial was left and "
        "earlier exports are untouched. Free space (or fix the disk) and "
        "rerun the same command.") from error
  old = None
  if tf.io.gfile.exists(export_dir):
    # Move the previous export aside rather than deleting it first: at every
    # moment one complete export is in place or ready to be renamed.
    old = os.path.join(parent, f"{_OLD_PREFIX}{name}-{os.getpid()}")
    tf.io.gfile.rename(export_dir, old, overwrite=True)
  tf.io.gfile.rename(temp, export_dir)
  if old is not None:
    tf.io.gfile.rmtree(old)
  return export_dir


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
  module = exportable_copy(model, config)
  return write_saved_model(module, export_dir,
                           metadata(module, config, global_step),
                           overwrite=overwrite)


def prune_exports(exports_dir: str, keep: int) -> None:
  """Keeps the `keep` latest step exports; drops leftovers of dead writers.

  Args:
    exports_dir: a run's `saved_model` directory.
    keep: how many step directories to keep (at least 1).
  """
  if keep < 1:
    raise ExportError(f"`keep_hub_module_max` must be positive. Received: "
                      f"keep_hub_module_max={keep}")
  names = [name.rstrip("/") for name in tf.io.gfile.listdir(exports_dir)]
  steps = sorted((name for name in names if name.isdigit()), key=int)
  for name in steps[:-keep]:
    tf.io.gfile.rmtree(os.path.join(exports_dir, name))
  for name in names:
    if (name.startswith((_TEMP_PREFIX, _OLD_PREFIX)) and
        not run_dir.process_alive(_pid_of(name))):
      tf.io.gfile.rmtree(os.path.join(exports_dir, name))


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
  exports_dir = os.path.join(model_dir or config.run.model_dir, EXPORTS_DIR)
  export_dir = export_model(model, config,
                            os.path.join(exports_dir, str(global_step)),
                            global_step=global_step, overwrite=True)
  prune_exports(exports_dir, config.run.keep_hub_module_max)
  log(f"[{config.run.train_mode}] exported SavedModel {export_dir} "
      f"({directory_size_mb(export_dir):.1f} MB, {time.time() - start:.0f}s).")
  return export_dir


def directory_size_mb(path) -> float:
  """Total size of the files under `path`, in MB."""
  total = 0
  for directory, _, files in tf.io.gfile.walk(path):
    for name in files:
      total += tf.io.gfile.stat(os.path.join(directory, name)).length
  return total / 1e6


def _config_of(prefix) -> ExperimentConfig:
  stored = checkpoints.stored_config(prefix)
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
  export_dir = checkpoints.export_dir_of(prefix)
  if export_dir is not None:
    return checkpoints.read_export_metadata(export_dir).get("global_step")
  suffix = prefix.rsplit("-", 1)[-1]
  return int(suffix) if suffix.isdigit() else None


def module_from_checkpoint(path: str):
  """Builds a `SimCLRExport` in memory from a checkpoint, model_dir or export.

  The architecture comes from the run's `config.json` (or the export's
  metadata); whether there is a supervised head, and its classes, from the
  saved variables.

  Args:
    path: what `--checkpoint` accepts (see `checkpoints.resolve`).

  Returns:
    (module, metadata dict).

  Raises:
    checkpoints.CheckpointError: missing, unrecognised or mismatched.
  """
  authors = authors_checkpoint.open_source(path)
  if authors is not None:
    return _module_from_authors(authors)
  prefix = checkpoints.resolve(path)
  config = _config_of(prefix)
  export_dir = checkpoints.export_dir_of(prefix)
  if export_dir is not None:
    num_classes = checkpoints.read_export_metadata(export_dir).get(
        "num_classes")
  else:
    kernel = checkpoints.saved_variable_shape(
        prefix, ("supervised_head", "linear_layer", "dense", "_kernel"))
    num_classes = kernel[-1] if kernel else None
  parts = _build_parts(config, num_classes)
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
  module = _wrap(parts, config)
  return module, metadata(module, config, _step_of(prefix))


def _module_from_authors(source):
  """`module_from_checkpoint` for the authors' TF2 formats."""
  config = authors_checkpoint.experiment_config(source)
  parts = _build_parts(config, source.architecture.num_classes)
  layers = {name: layer for name, layer in (
      ("encoder", parts.encoder), ("projection_head", parts.projection_head),
      ("supervised_head", parts.supervised_head)) if layer is not None}
  authors_checkpoint.load_parts(source, layers)
  module = _wrap(parts, config)
  return module, metadata(module, config, source.global_step)


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
  write_saved_model(module, export_dir, meta, overwrite=overwrite)
  return meta


class LoadedModel:
  """An export or checkpoint ready to compute outputs, with checked inputs.

  Attributes:
    module: the callable reusable-SavedModel object (loaded, or built in
      memory from a checkpoint).
    metadata: the export metadata (see `metadata`).
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
    check_images(images)
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
  """
  if checkpoints.is_export(path):
    meta = checkpoints.read_export_metadata(path)
    try:
      module = tf.saved_model.load(path)
    except (OSError, ValueError, tf.errors.OpError) as error:
      raise checkpoints.CheckpointError(
          f"{path}: cannot load the SavedModel "
          f"({str(error).splitlines()[0][:200]}).") from error
    return LoadedModel(module, meta, path)
  module, meta = module_from_checkpoint(path)
  return LoadedModel(module, meta, path)
