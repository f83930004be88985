"""The hub module: the root object of a SimCLR SavedModel export.

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

This module builds the object that is saved; `export_writer` writes it
(`export_layout` says where), `export_loader` opens it again.
"""

import dataclasses
from typing import Callable, Dict, Optional

import keras
import tensorflow as tf

from simclr_tf.augment import host as augment
from simclr_tf.storage import export_layout
from simclr_tf.storage.export_layout import ExportError
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
ENCODER_VARIABLES = export_layout.part_attribute("encoder")
PROJECTION_HEAD_VARIABLES = export_layout.part_attribute("projection_head")
SUPERVISED_HEAD_VARIABLES = export_layout.part_attribute("supervised_head")


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
