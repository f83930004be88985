"""The authors' TF2 formats (google-research/simclr `tf2/`) in our model.

Two formats are read, both written by the authors' `tf2/run.py`:

- their SavedModel (`saved_model/<step>/`, the layout of the released models
  under `gs://simclr-checkpoints-tf2/`): a `tf.Module` whose `model`
  attribute is their tf-keras model;
- their training checkpoint (`ckpt-N`, from their `CheckpointManager`),
  holding `model`, `global_step` and `optimizer`.

Both are object-based checkpoints, so one reader serves both: each variable
is found by its attribute path from `model` in the checkpoint's object graph
(`resnet_model/block_groups/0/layers/1/conv2d_bn_layers/0/conv2d/kernel`),
skipping the lists tf-keras adds for SavedModel (`variables`, `keras_api`,
...), which key the SavedModel's values by list position. The attribute
paths are the same in both formats and do not depend on layer class names
(`batch_normalization` or `sync_batch_normalization`) or on the global
layer counters in the variable names.

The architecture is read from that layout: block type and blocks per group
give the depth; the stem convolution gives the stem and the width
multiplier; the ResNet-D stem means selective kernels, whose mixing width
gives `sk_ratio`; squeeze-excite, projection head layers and supervised head
classes come from their variables' shapes. Our layers are then paired with
theirs in order, list by list (their lists also hold weightless layers:
identities, padding, pooling, DropBlock), and every pair's shape is checked.
"""

import dataclasses
import os
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import tensorflow as tf

from simclr_tf.checkpoints import ours as checkpoints
from simclr_tf.storage import config_file
from simclr_tf.storage import export_layout
from simclr_tf.models import blocks as blocks_lib
from simclr_tf.models import heads as heads_lib
from simclr_tf.models import layers as layers_lib
from simclr_tf.models import resnet_encoder as resnet_lib

SAVED_MODEL = "SavedModel"
TRAINING_CHECKPOINT = "training checkpoint"
SAVED_MODEL_DIR = "saved_model"

# Model settings the checkpoint decides; `adopt_architecture` fills them in.
ARCHITECTURE_SETTINGS = config_file.ARCHITECTURE_SETTINGS
# The only selective-kernel ratio the authors used and released. Where the
# mixing width is clamped to its minimum in every block (or a ResNet-18/34
# has no SK convolution), any small ratio builds the same network.
AUTHORS_SK_RATIO = 0.0625
_SK_MIN_DIM = 32

# Attributes of the authors' model, and our part each one fills.
_MODEL = "model"
_PART_ROOTS = {"encoder": "resnet_model",
               "projection_head": "_projection_head",
               "supervised_head": "supervised_head"}
_STEM = "resnet_model/initial_conv_relu_max_pool"
_GROUPS = "resnet_model/block_groups"
_HEAD_LAYERS = "_projection_head/linear_layers"
_SUPERVISED_KERNEL = "supervised_head/linear_layer/dense/kernel"
# Lists tf-keras saves beside the real attributes; they name variables by
# position, not by what they are.
_BOOKKEEPING = frozenset({
    "variables", "trainable_variables", "non_trainable_variables",
    "regularization_losses", "keras_api", "trainable_variables_list",
    "signatures", "_self_unconditional_checkpoint_dependencies"})


class AuthorsCheckpointError(checkpoints.CheckpointError):
  """An authors' checkpoint that cannot be used, with a one-line message."""


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What an authors' checkpoint holds, read from its variables.

  Attributes:
    resnet_depth: 18, 34, 50, 101, 152 or 200.
    width_multiplier: channel multiplier.
    sk_ratio: selective-kernel ratio (0 without; see `AUTHORS_SK_RATIO`).
    se_ratio: squeeze-excite ratio (0 without).
    cifar_stem: 3x3 stride-1 stem without max-pool.
    proj_head_mode: "none" (no projection head saved), "linear" or
      "nonlinear".
    proj_out_dim: output size of the projection head (0 without one).
    num_proj_layers: layers of the projection head (0 without one).
    num_classes: classes of the supervised head, or None without one.
    supervised_input_dim: features the supervised head takes, or None.
    feature_dim: size of the encoder's pooled features.
  """
  resnet_depth: int
  width_multiplier: float
  sk_ratio: float
  se_ratio: float
  cifar_stem: bool
  proj_head_mode: str
  proj_out_dim: int
  num_proj_layers: int
  num_classes: Optional[int]
  supervised_input_dim: Optional[int]
  feature_dim: int

  def model_settings(self) -> dict:
    """The `ModelConfig` fields this architecture fixes."""
    settings = {name: getattr(self, name) for name in ARCHITECTURE_SETTINGS}
    if self.proj_head_mode == "none":
      # Our config keeps its defaults for a head that is not built.
      settings.pop("proj_out_dim")
      settings.pop("num_proj_layers")
    elif self.proj_head_mode == "linear":
      settings.pop("num_proj_layers")
    return settings

  def describe(self) -> str:
    width = (f"{self.width_multiplier:g}x")
    parts = [f"ResNet-{self.resnet_depth} {width}",
             "CIFAR stem" if self.cifar_stem else "ImageNet stem",
             f"SK {self.sk_ratio:g}" if self.sk_ratio else "no SK"]
    if self.se_ratio:
      parts.append(f"SE {self.se_ratio:g}")
    if self.proj_head_mode == "none":
      parts.append("no projection head")
    else:
      parts.append(f"{self.num_proj_layers}-layer projection head to "
                   f"{self.proj_out_dim}")
    parts.append(f"supervised head of {self.num_classes} classes"
                 if self.num_classes else "no supervised head")
    return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class AuthorsSource:
  """An opened authors' checkpoint.

  Attributes:
    path: what the user gave.
    kind: SAVED_MODEL or TRAINING_CHECKPOINT.
    prefix: the checkpoint prefix read.
    layout: attribute path (from `model`) -> (checkpoint key, shape).
    global_step: the step it was written at, if known.
  """
  path: str
  kind: str
  prefix: str
  layout: Dict[str, Tuple[str, Tuple[int, ...]]]
  global_step: Optional[int]

  @property
  def architecture(self) -> Architecture:
    return read_architecture(self.layout, source=self.prefix)

  def name(self) -> str:
    return f"the authors' TF2 {self.kind} {self.path}"


def _is_saved_model(path) -> bool:
  return (export_layout.is_saved_model(path) and
          tf.io.gfile.exists(export_layout.variables_prefix(path) + ".index"))


def _saved_model_in(path) -> Optional[str]:
  """The SavedModel directory `path` names: itself, its `saved_model/`, or
  the latest `saved_model/<step>/` (the authors' model_dir layout)."""
  for candidate in (path, os.path.join(path, SAVED_MODEL_DIR)):
    if not tf.io.gfile.isdir(candidate):
      continue
    if _is_saved_model(candidate):
      return candidate
    steps = sorted((int(name.rstrip("/")) for name in
                    tf.io.gfile.listdir(candidate)
                    if name.rstrip("/").isdigit()), reverse=True)
    for step in steps:
      if _is_saved_model(os.path.join(candidate, str(step))):
        return os.path.join(candidate, str(step))
  return None


def open_source(path) -> Optional[AuthorsSource]:
  """Opens `path` if it is one of the authors' TF2 formats.

  Args:
    path: a SavedModel directory (or a directory holding `saved_model/`), a
      checkpoint prefix, or a directory of checkpoints (the latest is used).

  Returns:
    An `AuthorsSource`, or None if `path` is something else (one of ours, or
    nothing readable as a checkpoint).

  Raises:
    AuthorsCheckpointError: the files are there but cannot be read
      (truncated or corrupt).
  """
  if not path:
    return None
  kind = prefix = None
  step = None
  if tf.io.gfile.isdir(path):
    if export_layout.is_export(path):
      return None
    latest = tf.train.latest_checkpoint(path)
    if latest:
      kind, prefix = TRAINING_CHECKPOINT, latest
    else:
      saved_model = _saved_model_in(path)
      if saved_model:
        kind = SAVED_MODEL
        prefix = export_layout.variables_prefix(saved_model)
        base = os.path.basename(saved_model.rstrip("/"))
        step = int(base) if base.isdigit() else None
  elif tf.io.gfile.exists(path + ".index"):
    kind, prefix = TRAINING_CHECKPOINT, path
  if prefix is None:
    return None
  try:
    reader, graph = checkpoints._object_graph(prefix)  # pylint: disable=protected-access
    model_node = _child(graph, graph.nodes[0], _MODEL)
    if model_node is None or _child(graph, model_node, "resnet_model") is None:
      return None
    layout = _layout(graph, model_node, reader.get_variable_to_shape_map())
    if kind == TRAINING_CHECKPOINT:
      step = _global_step(reader, graph)
  # A truncated data file raises IndexError ("Read less bytes").
  except (tf.errors.OpError, ValueError, IndexError) as error:
    raise AuthorsCheckpointError(
        f"--checkpoint {path}: cannot read {prefix} (truncated or corrupt? "
        f"{_first_line(error)}). Download it again.") from error
  return AuthorsSource(path=path, kind=kind, prefix=prefix, layout=layout,
                       global_step=step)


def _first_line(error) -> str:
  text = getattr(error, "message", None) or str(error)
  return text.strip().splitlines()[0][:200] if text.strip() else repr(error)


def _child(graph, node, name):
  for child in node.children:
    if child.local_name == name:
      return graph.nodes[child.node_id]
  return None


def _layout(graph, model_node, shapes):
  """Each variable under `model` by attribute path, breadth first."""
  layout = {}
  seen = set()
  queue = [(model_node, "")]
  while queue:
    node, path = queue.pop(0)
    for child in node.children:
      if child.local_name in _BOOKKEEPING or child.node_id in seen:
        continue
      seen.add(child.node_id)
      child_path = f"{path}/{child.local_name}" if path else child.local_name
      child_node = graph.nodes[child.node_id]
      keys = [a.checkpoint_key for a in child_node.attributes
              if a.name == "VARIABLE_VALUE"]
      if keys and keys[0] in shapes:
        layout[child_path] = (keys[0], tuple(shapes[keys[0]]))
      else:
        queue.append((child_node, child_path))
  return layout


def _global_step(reader, graph):
  node = _child(graph, graph.nodes[0], "global_step")
  keys = [a.checkpoint_key for a in node.attributes] if node else []
  if not keys:
    return None
  return int(reader.get_tensor(keys[0]))


# --- reading the architecture ---------------------------------------------

def _indices(layout, prefix) -> List[int]:
  """The list positions under `prefix` that hold variables."""
  found = set()
  start = prefix + "/"
  for path in layout:
    if path.startswith(start):
      head = path[len(start):].split("/", 1)[0]
      if head.isdigit():
        found.add(int(head))
  return sorted(found)


def _shape(layout, path):
  entry = layout.get(path)
  return entry[1] if entry else None


def _under(layout, prefix, suffix) -> List[str]:
  return sorted(p for p in layout if p.startswith(prefix + "/") and
                p.endswith(suffix))


def _infer_ratio(widths_and_sizes, size_of, preferred=None):
  """A ratio r with size_of(width, r) == size for every (width, size)."""
  candidates = [] if preferred is None else [preferred]
  for width, size in sorted(widths_and_sizes, reverse=True):
    candidates += [round(size / width, 6), (size + 0.5) / width]
  for ratio in candidates:
    if all(size_of(w, ratio) == s for w, s in widths_and_sizes):
      return ratio
  return None


def read_architecture(layout, source="the checkpoint") -> Architecture:
  """Reads depth, widths, SK, SE and heads from an authors' layout.

  Args:
    layout: attribute path -> (key, shape), as in `AuthorsSource.layout`
      (the key is not used here).
    source: what to name in errors.

  Returns:
    The `Architecture`.

  Raises:
    AuthorsCheckpointError: for a layout the authors' code does not write.
  """
  def fail(detail):
    raise AuthorsCheckpointError(
        f"{source}: not a SimCLR model of the authors' tf2/ code that this "
        f"project can build ({detail}).")

  if _indices(layout, _GROUPS) != [0, 1, 2, 3]:
    fail("it needs 4 block groups under resnet_model/block_groups")
  first_block = f"{_GROUPS}/0/layers/0"
  if _under(layout, first_block + "/conv_relu_dropblock_layers", "kernel"):
    block_type = "bottleneck"
  elif _under(layout, first_block + "/conv2d_bn_layers", "kernel"):
    block_type = "residual"
  else:
    fail("its blocks are neither residual nor bottleneck blocks")
  blocks = tuple(len(_indices(layout, f"{_GROUPS}/{g}/layers"))
                 for g in range(4))
  depths = [depth for depth, spec in resnet_lib.RESNET_SPECS.items()
            if spec == (block_type, blocks)]
  if not depths:
    fail(f"{block_type} blocks {blocks} per group match no ResNet depth")
  expansion = 4 if block_type == "bottleneck" else 1

  stem_convs = [i for i in _indices(layout, _STEM)
                if f"{_STEM}/{i}/conv2d/kernel" in layout]
  if len(stem_convs) not in (1, 3):
    fail(f"its stem has {len(stem_convs)} convolutions, not 1 or 3")
  stem_kernel = _shape(layout, f"{_STEM}/{stem_convs[-1]}/conv2d/kernel")
  width = stem_kernel[-1] / 64
  cifar_stem = len(stem_convs) == 1 and stem_kernel[0] == 3
  if len(stem_convs) == 1 and stem_kernel[0] not in (3, 7):
    fail(f"its stem kernel is {stem_kernel[0]}x{stem_kernel[0]}")
  # Selective kernels come with ResNet-D: a 3-convolution stem (not with
  # the CIFAR stem, which stays) and shortcuts that pool before their
  # convolution, so the first shortcut's convolution is not at position 0.
  shortcut = f"{first_block}/" + ("projection_layers"
                                  if block_type == "bottleneck"
                                  else "shortcut_layers")
  resnet_d = len(stem_convs) == 3 or _indices(layout, shortcut)[:1] != [0]

  group_widths = [int(64 * 2**g * width) for g in range(4)]
  sk_mixing = [(f, _shape(layout, path)[-1])
               for g, f in enumerate(group_widths)
               for path in _under(layout, f"{_GROUPS}/{g}/layers",
                                  "/conv2d_0/kernel")]
  if sk_mixing and not resnet_d:
    fail("selective kernels without ResNet-D shortcuts")
  sk_ratio = 0.0
  if resnet_d:
    sk_ratio = AUTHORS_SK_RATIO
    if sk_mixing:
      sk_ratio = _infer_ratio(
          sk_mixing, lambda f, r: max(int(f * r), _SK_MIN_DIM),
          preferred=AUTHORS_SK_RATIO)
      if sk_ratio is None:
        fail("its selective-kernel widths fit no single sk_ratio")

  se_sizes = [(f, _shape(layout, path)[-1])
              for g, f in enumerate(group_widths)
              for path in _under(layout, f"{_GROUPS}/{g}/layers",
                                 "/se_reduce/kernel")]
  se_ratio = 0.0
  if se_sizes:
    se_ratio = _infer_ratio(se_sizes, lambda f, r: max(1, int(f * r)))
    if se_ratio is None:
      fail("its squeeze-excite widths fit no single se_ratio")

  feature_dim = int(512 * width) * expansion
  head_layers = _indices(layout, _HEAD_LAYERS)
  if head_layers != list(range(len(head_layers))):
    fail(f"projection head layers {head_layers} are not 0..n-1")
  if not head_layers:
    mode, out_dim = "none", 0
  else:
    last = _shape(layout, f"{_HEAD_LAYERS}/{head_layers[-1]}/dense/kernel")
    if last is None:
      fail("its projection head has no dense kernel")
    out_dim = last[-1]
    # One layer is the authors' "linear" head, or a 1-layer "nonlinear"
    # one: the same layer either way.
    mode = "linear" if len(head_layers) == 1 else "nonlinear"
  kernel = _shape(layout, _SUPERVISED_KERNEL)
  return Architecture(
      resnet_depth=depths[0], width_multiplier=width, sk_ratio=sk_ratio,
      se_ratio=se_ratio, cifar_stem=cifar_stem, proj_head_mode=mode,
      proj_out_dim=out_dim, num_proj_layers=len(head_layers),
      num_classes=kernel[-1] if kernel else None,
      supervised_input_dim=kernel[0] if kernel else None,
      feature_dim=feature_dim)


def _head_widths(architecture):
  """Width of each projection-head output, 0 being the encoder's."""
  widths = [architecture.feature_dim]
  for j in range(architecture.num_proj_layers):
    last = j == architecture.num_proj_layers - 1
    widths.append(architecture.proj_out_dim if last
                  else architecture.feature_dim)
  return widths


# --- fitting a config to the checkpoint -----------------------------------

def differences(architecture, model_config, names=ARCHITECTURE_SETTINGS):
  """"name: checkpoint X, this run Y" for settings that disagree.

  Args:
    architecture: an `Architecture`.
    model_config: a `ModelConfig`.
    names: the settings to compare.

  Returns:
    A list of strings, empty if all agree.
  """
  settings = architecture.model_settings()
  found = []
  for name in names:
    if name not in settings:
      continue
    ours = getattr(model_config, name)
    if name == "cifar_stem" and ours is None:
      continue
    theirs = settings[name]
    if ours != theirs and not (isinstance(theirs, float) and
                               abs(float(ours) - theirs) < 1e-9):
      found.append(f"{name}: checkpoint {theirs}, this run {ours}")
  return found


def adopt_architecture(config, given: Optional[Iterable[str]] = None):
  """Takes the architecture of an authors' `--checkpoint` into `config`.

  Settings in `given` (those the user set on purpose) must agree with the
  checkpoint; the others are replaced by the checkpoint's. A config whose
  `run.checkpoint` is not an authors' checkpoint is returned unchanged.

  Args:
    config: an `ExperimentConfig`.
    given: names of `ModelConfig` settings set explicitly (command-line
      flags given); None means none were.

  Returns:
    The validated config.

  Raises:
    AuthorsCheckpointError: a given setting contradicts the checkpoint, or
      the checkpoint cannot be read.
  """
  source = open_source(config.run.checkpoint)
  if source is None:
    return config
  architecture = source.architecture
  given = set(given or ())
  contradictions = differences(architecture, config.model,
                               [n for n in ARCHITECTURE_SETTINGS
                                if n in given])
  settings = architecture.model_settings()
  if architecture.supervised_input_dim is not None:
    widths = _head_widths(architecture)
    fits = [j for j, w in enumerate(widths)
            if w == architecture.supervised_input_dim]
    chosen = config.model.ft_proj_selector
    if chosen >= len(widths) or widths[chosen] != (
        architecture.supervised_input_dim):
      if "ft_proj_selector" in given or not fits:
        contradictions.append(
            f"ft_proj_selector: the checkpoint's supervised head takes "
            f"{architecture.supervised_input_dim} features, layer {chosen} "
            "gives another width")
      else:
        settings["ft_proj_selector"] = fits[0]
  if contradictions:
    raise AuthorsCheckpointError(
        f"--checkpoint {source.path} is {architecture.describe()}; flags "
        f"contradict it: {'; '.join(contradictions)}. Drop them: the "
        "architecture is read from the checkpoint.")
  if "proj_head_mode" in settings and settings["proj_head_mode"] == "none":
    settings.setdefault("ft_proj_selector", 0)
  model = dataclasses.replace(config.model, **settings)
  return dataclasses.replace(config, model=model).validate()


def experiment_config(source: AuthorsSource):
  """A config of our own for an authors' checkpoint (export and embed tools).

  The image size is the authors' for the stem: 32 for the CIFAR stem, 224
  otherwise. Everything else keeps our defaults.

  Args:
    source: an `AuthorsSource`.

  Returns:
    A validated `ExperimentConfig`.
  """
  from simclr_tf import config as config_lib  # pylint: disable=g-import-not-at-top
  architecture = source.architecture
  base = config_lib.ExperimentConfig(
      data=config_lib.DataConfig(
          image_size=32 if architecture.cifar_stem else 224),
      model=config_lib.ModelConfig(global_bn=False),
      run=config_lib.RunConfig(checkpoint=source.path))
  return adopt_architecture(base)


# --- pairing our variables with theirs ------------------------------------

def _leaf_pairs(layer, prefix):
  return [(weight, f"{prefix}/{weight.name}") for weight in layer.weights]


def _layer_pairs(layer, prefix):
  """Our variables of one layer and the authors' paths they come from."""
  if isinstance(layer, layers_lib.Conv2DFixedPadding):
    return _leaf_pairs(layer.conv, f"{prefix}/conv2d")
  if isinstance(layer, layers_lib.BatchNormRelu):
    return _leaf_pairs(layer.batch_norm, f"{prefix}/bn")
  if isinstance(layer, layers_lib.SelectiveKernelConv2D):
    return (_layer_pairs(layer.streams_conv, f"{prefix}/conv2d_fixed_padding")
            + _layer_pairs(layer.streams_bn, f"{prefix}/batch_norm_relu")
            + _leaf_pairs(layer.squeeze_conv, f"{prefix}/conv2d_0")
            + _layer_pairs(layer.squeeze_bn, f"{prefix}/batch_norm_relu_1")
            + _leaf_pairs(layer.mixing_conv, f"{prefix}/conv2d_1"))
  if isinstance(layer, layers_lib.SqueezeExcite):
    return (_leaf_pairs(layer.reduce_conv, f"{prefix}/se_reduce") +
            _leaf_pairs(layer.expand_conv, f"{prefix}/se_expand"))
  if isinstance(layer, heads_lib.LinearLayer):
    pairs = _leaf_pairs(layer.dense, f"{prefix}/dense")
    if layer.batch_norm is not None:
      pairs += _layer_pairs(layer.batch_norm, f"{prefix}/bn_relu")
    return pairs
  raise TypeError(f"No authors' counterpart for layer {layer.name} "
                  f"({type(layer).__name__})")


class _Mismatch(ValueError):
  pass


def _list_pairs(ours, prefix, layout):
  """Pairs our weighted layers, in order, with the authors' list entries
  under `prefix` that hold variables."""
  ours = [layer for layer in ours if layer.weights]
  theirs = _indices(layout, prefix)
  if len(ours) != len(theirs):
    raise _Mismatch(f"{prefix} holds {len(theirs)} layers with weights, "
                    f"this model {len(ours)}")
  pairs = []
  for layer, index in zip(ours, theirs):
    pairs += _layer_pairs(layer, f"{prefix}/{index}")
  return pairs


def _block_pairs(block, prefix, layout):
  if isinstance(block, blocks_lib.BottleneckBlock):
    return (_list_pairs(block.shortcut_layers,
                        f"{prefix}/projection_layers", layout) +
            _list_pairs(block.residual_layers,
                        f"{prefix}/conv_relu_dropblock_layers", layout))
  # The authors' residual block keeps squeeze-excite outside its list.
  plain = [layer for layer in block.residual_layers
           if not isinstance(layer, layers_lib.SqueezeExcite)]
  pairs = (_list_pairs(block.shortcut_layers, f"{prefix}/shortcut_layers",
                       layout) +
           _list_pairs(plain, f"{prefix}/conv2d_bn_layers", layout))
  for layer in block.residual_layers:
    if isinstance(layer, layers_lib.SqueezeExcite):
      pairs += _layer_pairs(layer, f"{prefix}/se_layer")
  return pairs


def _part_pairs(name, layer, layout):
  if name == "encoder":
    stem = [l for l in layer.layers if l.name.startswith("stem_")]
    pairs = _list_pairs(stem, _STEM, layout)
    for g, group_name in enumerate(resnet_lib.BLOCK_GROUPS):
      group = layer.get_layer(group_name)
      found = len(_indices(layout, f"{_GROUPS}/{g}/layers"))
      if found != len(group.blocks):
        raise _Mismatch(f"{group_name} has {found} blocks in the "
                        f"checkpoint, {len(group.blocks)} in this model")
      for b, block in enumerate(group.blocks):
        pairs += _block_pairs(block, f"{_GROUPS}/{g}/layers/{b}", layout)
    return pairs
  if name == "projection_head":
    return _list_pairs(layer.linear_layers, _HEAD_LAYERS, layout)
  if name == "supervised_head":
    if layer.feature_batch_norm is not None:
      raise _Mismatch("the authors' supervised head has no feature "
                      "normalisation: drop --supervised_head_feature_norm")
    return _layer_pairs(layer.linear_layer, "supervised_head/linear_layer")
  raise ValueError(f"Unknown part {name!r}")


def variable_pairs(parts, layout):
  """Each variable of our `parts` with the authors' attribute path for it.

  Args:
    parts: part name ("encoder", "projection_head", "supervised_head") to
      our built layer (as for `checkpoints.restore_parts`).
    layout: attribute path -> (key, shape), as in `AuthorsSource.layout`.

  Returns:
    A list of (variable, authors' path).

  Raises:
    ValueError: listing what does not match (missing or extra variables,
      other shapes).
  """
  pairs = []
  for name, layer in parts.items():
    pairs += _part_pairs(name, layer, layout)
  problems = []
  for variable, path in pairs:
    shape = _shape(layout, path)
    if shape is None:
      problems.append(f"{path} missing")
    elif tuple(shape) != tuple(variable.shape):
      problems.append(f"{path} is {list(shape)}, this model's "
                      f"{variable.path} {list(variable.shape)}")
  used = {path for _, path in pairs}
  for name in parts:
    root = _PART_ROOTS[name] + "/"
    problems += [f"{path} not used" for path in sorted(layout)
                 if path.startswith(root) and path not in used]
  if problems:
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    raise _Mismatch("; ".join(problems[:3]) + more)
  return pairs


# --- loading ----------------------------------------------------------------

def load_parts(source: AuthorsSource, parts) -> None:
  """Fills our `parts` with the authors' values.

  Args:
    source: an `AuthorsSource`.
    parts: part name to built layer (see `variable_pairs`).

  Raises:
    AuthorsCheckpointError: the parts do not match, or values cannot be
      read.
  """
  missing = [name for name in parts
             if name != "encoder" and not _has_part(source.layout, name)
             and parts[name].weights]
  if missing:
    raise AuthorsCheckpointError(
        f"{source.name()} has no {' or '.join(missing).replace('_', ' ')}.")
  try:
    pairs = variable_pairs(parts, source.layout)
  except _Mismatch as error:
    raise AuthorsCheckpointError(
        f"{source.name()} does not fit this model: {error}.") from error
  try:
    reader = tf.train.load_checkpoint(source.prefix)
    values = [reader.get_tensor(source.layout[path][0]) for _, path in pairs]
  except (tf.errors.OpError, IndexError) as error:
    raise AuthorsCheckpointError(
        f"{source.name()}: cannot read its values (truncated or corrupt? "
        f"{_first_line(error)}). Download it again.") from error
  for (variable, _), value in zip(pairs, values):
    variable.assign(value)


def _has_part(layout, name):
  root = _PART_ROOTS[name] + "/"
  return any(path.startswith(root) for path in layout)


def _mismatch_error(source, model_config):
  architecture = source.architecture
  found = differences(architecture, model_config)
  return AuthorsCheckpointError(
      f"--checkpoint {source.path} is {architecture.describe()}; this model "
      f"differs: {'; '.join(found)}. Drop those flags: the architecture is "
      "read from the checkpoint.")


def load_pretrained(model, source: AuthorsSource, model_config,
                    log: Optional[Callable[[str], None]] = None) -> str:
  """Loads the encoder and projection head for fine-tuning or linear eval.

  As for our checkpoints, the supervised head is restored as
  `checkpoints.supervised_head_start` says (the authors' rule) and the
  optimizer starts fresh.

  Args:
    model: a built `SimCLRModel`.
    source: an `AuthorsSource`.
    model_config: the model's `ModelConfig`, to explain mismatches.
    log: where the one-line summary goes.

  Returns:
    The checkpoint prefix read.
  """
  if differences(source.architecture, model_config):
    raise _mismatch_error(source, model_config)
  parts = dict(encoder=model.encoder)
  if _has_part(source.layout, "projection_head"):
    parts["projection_head"] = model.projection_head
  fresh = ["optimizer"]
  head = model.supervised_head
  if head is not None:
    saved = sorted(shape for path, (_, shape) in source.layout.items()
                   if path.startswith(_PART_ROOTS["supervised_head"] + "/"))
    # Ours with feature normalisation has variables theirs lacks, so the
    # shapes differ and the head starts fresh.
    head_start = checkpoints.supervised_head_start(
        head, model_config, model.train_mode, saved or None)
    if head_start is None:
      parts["supervised_head"] = head
    else:
      fresh.insert(0, head_start)
  load_parts(source, parts)
  if "projection_head" not in parts and model.projection_head.weights:
    fresh.insert(0, "projection head")
  _log(log, source, parts, fresh)
  return source.prefix


def restore_for_eval(model, source: AuthorsSource,
                     log: Optional[Callable[[str], None]] = None) -> str:
  """Loads the whole model, supervised head included, for evaluation.

  Args:
    model: a built `SimCLRModel` with a supervised head.
    source: an `AuthorsSource`.
    log: where the one-line summary goes.

  Returns:
    The checkpoint prefix read.
  """
  parts = dict(encoder=model.encoder, supervised_head=model.supervised_head)
  if _has_part(source.layout, "projection_head"):
    parts["projection_head"] = model.projection_head
  load_parts(source, parts)
  if source.global_step is not None and getattr(model, "optimizer", None):
    model.optimizer.iterations.assign(source.global_step)
  _log(log, source, parts, [])
  return source.prefix


def _log(log, source, parts, fresh):
  if log is None:
    return
  loaded = ", ".join(name.replace("_", " ") for name in parts)
  log(f"Loaded {source.name()} (step {source.global_step}): "
      f"{source.architecture.describe()}. From it: {loaded}. Starting "
      f"fresh: {', '.join(fresh) if fresh else 'nothing'}.")


def convert_to_checkpoint(source: AuthorsSource, output: str,
                          overwrite: bool = False) -> str:
  """Writes an authors' checkpoint as a model_dir of ours.

  The model_dir holds `ckpt-<step>` and `config.json`, so `--checkpoint`
  takes it with any of our flags and `simclr_tf.export.load` opens it.

  Args:
    source: an `AuthorsSource`.
    output: the directory to write.
    overwrite: replace what is at `output`.

  Returns:
    The checkpoint prefix written.

  Raises:
    AuthorsCheckpointError: `output` is not empty, or the source does not
      load.
  """
  from simclr_tf.models import simclr  # pylint: disable=g-import-not-at-top
  if tf.io.gfile.exists(output) and tf.io.gfile.listdir(output):
    if not overwrite:
      raise AuthorsCheckpointError(
          f"--output {output} is not empty: give another directory, or "
          "--overwrite.")
    tf.io.gfile.rmtree(output)
  architecture = source.architecture
  config = experiment_config(source)
  model = simclr.build_simclr_model(
      config.model, image_size=config.data.image_size,
      num_classes=architecture.num_classes or 1, train_mode="pretrain",
      with_supervised_head=architecture.num_classes is not None)
  parts = {"encoder": model.encoder}
  if model.projection_head.weights:
    parts["projection_head"] = model.projection_head
  if model.supervised_head is not None:
    parts["supervised_head"] = model.supervised_head
  load_parts(source, parts)
  return checkpoints.write_model_checkpoint(model, config, output,
                                            source.global_step or 0)
