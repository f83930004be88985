"""The authors' TF2 formats: read, mapped, loaded, equal outputs, errors.

Fixture tests use `../shared/fixtures/authors_tf2/` (written by the authors'
own tf2/run.py; see its README) and skip without it. The other
architectures are checked against `authors_layout` below: the variable
paths and shapes the authors' tf2/resnet.py and model.py create, written
down here as data from reading that code.
"""

import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.checkpoints import authors as authors_checkpoint
from simclr_tf.checkpoints import pretrained
from simclr_tf import config as config_lib
from simclr_tf import export
from simclr_tf.storage import export_layout
from simclr_tf.training import tf_trainer as training
from simclr_tf.models import heads
from simclr_tf.models import resnet_encoder
from simclr_tf.models import simclr
from tests import command_line
from tests import test_export

REPO = command_line.REPO
FIXTURES = os.path.join(REPO, "..", "shared", "fixtures", "authors_tf2")
SAVED_MODEL = os.path.join(FIXTURES, "r18_cifar_pretrain", "saved_model",
                           "60")
TRAINING_DIR = os.path.join(FIXTURES, "r18_cifar_finetune")
REFERENCE = os.path.join(TRAINING_DIR, "reference_outputs.npz")
OUTPUTS = sorted(test_export.ALL_OUTPUTS)
TOLERANCE = 1e-4

needs_fixture = pytest.mark.skipif(
    not os.path.isdir(FIXTURES),
    reason=f"the authors' TF2 fixture is not here ({FIXTURES}): a clone "
    "without ../shared/fixtures")


# --- the authors' variable layout, as their code writes it ------------------

_SPECS = {18: (False, (2, 2, 2, 2)), 34: (False, (3, 4, 6, 3)),
          50: (True, (3, 4, 6, 3)), 101: (True, (3, 4, 23, 3)),
          152: (True, (3, 8, 36, 3))}


def authors_layout(depth, width=1.0, sk_ratio=0.0, se_ratio=0.0,
                   cifar_stem=False, head_layers=3, out_dim=128,
                   num_classes=1000, head_input_layer=0):
  """Attribute path (from `model`) -> shape of the authors' tf2 variables.

  From tf2/resnet.py and tf2/model.py at commit 383d4143: list positions
  count every layer in the authors' lists, weightless ones (identity,
  padding, pooling, DropBlock) included.
  """
  layout = {}

  def conv(prefix, kernel, cin, cout):
    layout[f"{prefix}/conv2d/kernel"] = (kernel, kernel, cin, cout)

  def bn(prefix, channels, center=True):
    for name in ("gamma", "moving_mean", "moving_variance") + (
        ("beta",) if center else ()):
      layout[f"{prefix}/bn/{name}"] = (channels,)

  bottleneck, counts = _SPECS[depth]
  stem = "resnet_model/initial_conv_relu_max_pool"
  w64 = int(64 * width)
  if cifar_stem:  # conv, identity, bn, identity
    conv(f"{stem}/0", 3, 3, w64)
    bn(f"{stem}/2", w64)
  elif sk_ratio > 0:  # conv, bn, conv, bn, conv, identity, bn, pool, id
    conv(f"{stem}/0", 3, 3, w64 // 2)
    bn(f"{stem}/1", w64 // 2)
    conv(f"{stem}/2", 3, w64 // 2, w64 // 2)
    bn(f"{stem}/3", w64 // 2)
    conv(f"{stem}/4", 3, w64 // 2, w64)
    bn(f"{stem}/6", w64)
  else:  # conv, identity, bn, pool, identity
    conv(f"{stem}/0", 7, 3, w64)
    bn(f"{stem}/2", w64)
  cin = w64
  for g in range(4):
    filters = int(64 * 2**g * width)
    out = 4 * filters if bottleneck else filters
    for b in range(counts[g]):
      block = f"resnet_model/block_groups/{g}/layers/{b}"
      strides = (1 if g == 0 else 2) if b == 0 else 1
      if b == 0:
        shortcut = block + ("/projection_layers" if bottleneck
                            else "/shortcut_layers")
        # ResNet-D: [FixedPadding when strided], AveragePooling, conv, bn.
        first = (2 if strides > 1 else 1) if sk_ratio > 0 else 0
        conv(f"{shortcut}/{first}", 1, cin, out)
        bn(f"{shortcut}/{first + 1}", out)
      if bottleneck:
        chain = f"{block}/conv_relu_dropblock_layers"
        conv(f"{chain}/0", 1, cin, filters)
        bn(f"{chain}/1", filters)  # 2: DropBlock
        if sk_ratio > 0:
          sk = f"{chain}/3"
          mid = max(int(filters * sk_ratio), 32)
          conv(f"{sk}/conv2d_fixed_padding", 3, filters, 2 * filters)
          bn(f"{sk}/batch_norm_relu", 2 * filters)
          layout[f"{sk}/conv2d_0/kernel"] = (1, 1, filters, mid)
          bn(f"{sk}/batch_norm_relu_1", mid)
          layout[f"{sk}/conv2d_1/kernel"] = (1, 1, mid, 2 * filters)
          last = 5  # 4: DropBlock
        else:
          conv(f"{chain}/3", 3, filters, filters)
          bn(f"{chain}/4", filters)
          last = 6  # 5: DropBlock
        conv(f"{chain}/{last}", 1, filters, out)
        bn(f"{chain}/{last + 1}", out)  # then DropBlock
        se = f"{chain}/{last + 3}"
      else:
        chain = f"{block}/conv2d_bn_layers"
        conv(f"{chain}/0", 3, cin, filters)
        bn(f"{chain}/1", filters)
        conv(f"{chain}/2", 3, filters, filters)
        bn(f"{chain}/3", filters)
        se = f"{block}/se_layer"
      if se_ratio > 0:
        reduced = max(1, int(filters * se_ratio))
        layout[f"{se}/se_reduce/kernel"] = (1, 1, out, reduced)
        layout[f"{se}/se_reduce/bias"] = (reduced,)
        layout[f"{se}/se_expand/kernel"] = (1, 1, reduced, out)
        layout[f"{se}/se_expand/bias"] = (out,)
      cin = out
  widths = [cin]
  for j in range(head_layers):
    last = j == head_layers - 1
    units = out_dim if last else widths[-1]
    prefix = f"_projection_head/linear_layers/{j}"
    layout[f"{prefix}/dense/kernel"] = (widths[-1], units)
    bn(f"{prefix}/bn_relu", units, center=not last)
    widths.append(units)
  if num_classes:
    layout["supervised_head/linear_layer/dense/kernel"] = (
        widths[head_input_layer], num_classes)
    layout["supervised_head/linear_layer/dense/bias"] = (num_classes,)
  return layout


def _keyed(layout):
  return {path: (path, shape) for path, shape in layout.items()}


# name, layout arguments, expected architecture settings
CASES = [
    ("v2 R50 1x, 1% fine-tuned",
     dict(depth=50, width=1, num_classes=1000),
     dict(resnet_depth=50, width_multiplier=1.0, sk_ratio=0.0,
          cifar_stem=False, proj_head_mode="nonlinear", num_proj_layers=3)),
    ("v2 R50 2x SK",
     dict(depth=50, width=2, sk_ratio=0.0625),
     dict(resnet_depth=50, width_multiplier=2.0, sk_ratio=0.0625)),
    ("v2 R101 1x SK",
     dict(depth=101, width=1, sk_ratio=0.0625),
     dict(resnet_depth=101, sk_ratio=0.0625)),
    ("v2 R152 3x SK",
     dict(depth=152, width=3, sk_ratio=0.0625),
     dict(resnet_depth=152, width_multiplier=3.0, sk_ratio=0.0625)),
    ("v1 R50 4x, no projection head",
     dict(depth=50, width=4, head_layers=0),
     dict(resnet_depth=50, width_multiplier=4.0, proj_head_mode="none")),
    ("v1-style 2-layer head",
     dict(depth=50, head_layers=2, out_dim=128),
     dict(proj_head_mode="nonlinear", num_proj_layers=2, proj_out_dim=128)),
    ("R34 SE, linear head",
     dict(depth=34, se_ratio=0.25, head_layers=1, out_dim=64,
          num_classes=None),
     dict(resnet_depth=34, se_ratio=0.25, proj_head_mode="linear",
          proj_out_dim=64)),
    ("R18 CIFAR stem with SK shortcuts",
     dict(depth=18, cifar_stem=True, sk_ratio=0.0625),
     dict(resnet_depth=18, cifar_stem=True, sk_ratio=0.0625)),
]


@pytest.mark.parametrize("name,arguments,expected", CASES,
                         ids=[case[0] for case in CASES])
def test_the_architecture_is_read_from_the_authors_layout(name, arguments,
                                                          expected):
  del name
  architecture = authors_checkpoint.read_architecture(
      _keyed(authors_layout(**arguments)))
  settings = architecture.model_settings()
  for key, value in expected.items():
    assert settings[key] == value, (key, settings)
  assert architecture.num_classes == arguments.get("num_classes", 1000)


def _our_parts(architecture, num_classes):
  settings = architecture.model_settings()
  encoder = resnet_encoder.resnet(
      settings["resnet_depth"], settings["width_multiplier"],
      cifar_stem=settings["cifar_stem"], sk_ratio=settings["sk_ratio"],
      se_ratio=settings["se_ratio"])
  head = heads.ProjectionHead(
      settings["proj_head_mode"], settings.get("proj_out_dim", 128),
      settings.get("num_proj_layers", 3))
  head.build(encoder.output_shape)
  parts = dict(encoder=encoder, projection_head=head)
  if num_classes:
    supervised = heads.SupervisedHead(num_classes)
    supervised.build(encoder.output_shape)
    parts["supervised_head"] = supervised
  return parts


# Tiny widths: our model is built for each; the mapping and shapes are the
# same at any width.
MAPPING_CASES = [
    dict(depth=50, width=0.125, sk_ratio=0.0625, num_classes=10),
    dict(depth=101, width=0.0625, num_classes=10, head_layers=2),
    dict(depth=34, width=0.125, se_ratio=0.25, head_layers=1, out_dim=16),
    dict(depth=18, width=0.125, cifar_stem=True, sk_ratio=0.0625,
         head_layers=0, num_classes=5),
]


@pytest.mark.parametrize("arguments", MAPPING_CASES,
                         ids=lambda a: "-".join(f"{k}{v}" for k, v in
                                                a.items()))
def test_every_variable_maps_one_to_one_with_equal_shapes(arguments):
  layout = _keyed(authors_layout(**arguments))
  architecture = authors_checkpoint.read_architecture(layout)
  parts = _our_parts(architecture, architecture.num_classes)
  pairs = authors_checkpoint.variable_pairs(parts, layout)
  # Every variable of ours once, every one of theirs once.
  assert len(pairs) == sum(len(p.weights) for p in parts.values())
  assert sorted(path for _, path in pairs) == sorted(layout)
  for variable, path in pairs:
    assert tuple(variable.shape) == layout[path][1], path


def test_a_layout_of_another_model_is_refused_with_the_difference():
  layout = _keyed(authors_layout(depth=50, width=0.125, num_classes=10))
  architecture = authors_checkpoint.read_architecture(layout)
  parts = _our_parts(architecture, 10)
  kernel = ("resnet_model/block_groups/3/layers/2/"
            "conv_relu_dropblock_layers/3/conv2d/kernel")
  layout[kernel] = (kernel, (3, 3, 64, 32))
  with pytest.raises(ValueError, match=f"{kernel} is \\[3, 3, 64, 32\\], "
                     "this model's .* \\[3, 3, 64, 64\\]"):
    authors_checkpoint.variable_pairs(parts, layout)
  del layout[kernel]
  with pytest.raises(ValueError, match="conv_relu_dropblock_layers holds 5 "
                     "layers with weights, this model 6"):
    authors_checkpoint.variable_pairs(parts, layout)
  bad = _keyed(authors_layout(depth=50, width=0.125))
  for path in [p for p in bad if "block_groups/2/layers/5/" in p]:
    del bad[path]  # 5 blocks in group 3: no depth has (3, 4, 5, 3)
  with pytest.raises(authors_checkpoint.AuthorsCheckpointError,
                     match=r"bottleneck blocks \(3, 4, 5, 3\) per group "
                     "match no ResNet depth"):
    authors_checkpoint.read_architecture(bad)


# --- the fixture -------------------------------------------------------------

@needs_fixture
def test_the_layout_above_is_what_the_authors_code_wrote():
  # The training checkpoint keys variables by attribute path: a check of
  # `authors_layout` against the authors' own output, free of our reader.
  expected = authors_layout(depth=18, width=1, cifar_stem=True,
                            num_classes=10)
  found = {}
  for key, shape in tf.train.list_variables(
      os.path.join(TRAINING_DIR, "ckpt-20")):
    if key.startswith("model/") and "OPTIMIZER_SLOT" not in key:
      found[key[len("model/"):-len("/.ATTRIBUTES/VARIABLE_VALUE")]] = tuple(
          shape)
  assert found == expected


@needs_fixture
@pytest.mark.parametrize("path,kind,step", [
    (SAVED_MODEL, authors_checkpoint.SAVED_MODEL, 60),
    (os.path.dirname(os.path.dirname(SAVED_MODEL)),
     authors_checkpoint.SAVED_MODEL, 60),
    (TRAINING_DIR, authors_checkpoint.TRAINING_CHECKPOINT, 20),
    (os.path.join(TRAINING_DIR, "ckpt-20"),
     authors_checkpoint.TRAINING_CHECKPOINT, 20)])
def test_both_formats_are_detected_and_read(path, kind, step):
  source = authors_checkpoint.open_source(path)
  assert (source.kind, source.global_step) == (kind, step)
  assert source.architecture.describe() == (
      "ResNet-18 1x, CIFAR stem, no SK, 3-layer projection head to 128, "
      "supervised head of 10 classes")


def _authors_outputs(images):
  module = tf.saved_model.load(SAVED_MODEL)
  # Inference first: trainable=True updates the moving statistics.
  return {f"{mode}/{key}": value.numpy()
          for mode, trainable in (("inference", False), ("training", True))
          for key, value in module(tf.constant(images),
                                   trainable=trainable).items()}


def _our_model(path):
  """Our SimCLRModel as the run program builds it for `--checkpoint`."""
  config = config_lib.ExperimentConfig(
      run=config_lib.RunConfig(checkpoint=path, mode="eval"))
  config = authors_checkpoint.adopt_architecture(config)
  # Pretrain mode freezes nothing, so training mode reaches every BN.
  model = simclr.build_simclr_model(
      config.model, image_size=32, num_classes=10, train_mode="pretrain",
      with_supervised_head=True)
  lines = []
  pretrained.restore_for_eval(model, path, log=lines.append)
  assert len(lines) == 1 and "From it: encoder, supervised head, " \
      "projection head" in lines[0], lines
  return model


def _largest_differences(ours, reference, mode):
  """Per output, the largest |ours - theirs|, relative to the output's own
  scale where that exceeds 1: our fused BatchNorm kernel rounds batch
  statistics differently from the authors' unfused ops, which shows as up
  to ~1.4e-4 absolute (~3e-5 relative) on the training-mode projections and
  logits, whose values reach ~4."""
  result = {}
  for key in OUTPUTS:
    theirs = reference[f"{mode}/{key}"]
    scale = max(1.0, float(np.max(np.abs(theirs))))
    result[key] = float(np.max(np.abs(ours[key] - theirs))) / scale
  return result


@needs_fixture
@pytest.mark.parametrize("path", [SAVED_MODEL, TRAINING_DIR],
                         ids=["saved_model", "training_checkpoint"])
def test_our_model_gives_the_authors_outputs_in_both_modes(path):
  if path == SAVED_MODEL:
    images = np.random.default_rng(5).random((4, 32, 32, 3), np.float32)
    reference = _authors_outputs(images)
  else:
    # The authors' SavedModel of that same step, called by the fixture.
    reference = dict(np.load(REFERENCE))
    images = reference["images"]
  model = _our_model(path)
  for mode, training_mode in (("inference", False), ("training", True)):
    ours = test_export.all_outputs(model, images, training=training_mode)
    differences = _largest_differences(ours, reference, mode)
    assert max(differences.values()) <= TOLERANCE, (mode, differences)
  # A wrong pairing would show: the modes differ well beyond the tolerance.
  assert max(_largest_differences(
      {k: reference[f"training/{k}"] for k in OUTPUTS}, reference,
      "inference").values()) > 0.1


@needs_fixture
def test_the_export_tools_model_gives_the_authors_outputs():
  reference = dict(np.load(REFERENCE))
  loaded = export.load(TRAINING_DIR)
  assert loaded.metadata["global_step"] == 20
  inference = {k: v.numpy() for k, v in
               loaded(reference["images"], training=False).items()}
  assert max(_largest_differences(inference, reference,
                                  "inference").values()) <= TOLERANCE
  # The export's BatchNorm is unsynchronised by design (export.py); the
  # authors' checkpoint used sync BN, whose one-pass variance rounds
  # otherwise: up to 1.3e-4 on projections of magnitude 4 in batches of 4.
  training_mode = {k: v.numpy() for k, v in
                   loaded(reference["images"], training=True).items()}
  assert max(_largest_differences(training_mode, reference,
                                  "training").values()) <= 3e-4


@needs_fixture
def test_a_contradicting_flag_is_refused_in_one_line(tmp_path):
  result = command_line.run_program(
      ["--train_mode=finetune", f"--checkpoint={SAVED_MODEL}",
       "--resnet_depth=50", f"--model_dir={tmp_path / 'run'}"])
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  errors = [line for line in result.stderr.splitlines()
            if line.startswith("error:")]
  assert errors == [
      f"error: --checkpoint {SAVED_MODEL} is ResNet-18 1x, CIFAR stem, no "
      "SK, 3-layer projection head to 128, supervised head of 10 classes; "
      "flags contradict it: resnet_depth: checkpoint 18, this run 50. Drop "
      "them: the architecture is read from the checkpoint."]


@needs_fixture
def test_a_truncated_checkpoint_gets_one_clear_line(tmp_path):
  broken = tmp_path / "broken"
  broken.mkdir()
  for name in os.listdir(TRAINING_DIR):
    if name.startswith(("ckpt-", "checkpoint")):
      shutil.copy(os.path.join(TRAINING_DIR, name), broken / name)
  data = broken / "ckpt-20.data-00000-of-00001"
  with open(data, "r+b") as handle:
    handle.truncate(os.path.getsize(data) // 2)
  result = test_export._run_tool(  # pylint: disable=protected-access
      [os.path.join(REPO, "tools", "export_saved_model.py"),
       f"--checkpoint={broken}", f"--export_dir={tmp_path / 'out'}"])
  line = command_line.one_error_line(result, "export_saved_model")
  assert "truncated or corrupt?" in line, line
  assert not (tmp_path / "out").exists()


@needs_fixture
def test_a_foreign_checkpoint_gets_one_clear_line(tmp_path):
  # The authors' top-level names over something else.
  foreign = tf.train.Checkpoint(model=tf.train.Checkpoint(
      resnet_model=tf.train.Checkpoint(w=tf.Variable(tf.zeros((3, 3))))))
  prefix = foreign.write(str(tmp_path / "foreign" / "ckpt-1"))
  with pytest.raises(authors_checkpoint.AuthorsCheckpointError) as error:
    authors_checkpoint.open_source(prefix).architecture
  assert "\n" not in str(error.value)
  assert "not a SimCLR model of the authors' tf2/ code" in str(error.value)


@needs_fixture
def test_the_converted_checkpoint_loads_from_python_and_run(tmp_path):
  reference = dict(np.load(REFERENCE))
  output = str(tmp_path / "converted")
  authors_checkpoint.convert_to_checkpoint(
      authors_checkpoint.open_source(TRAINING_DIR), output)
  assert tf.train.latest_checkpoint(output).endswith("ckpt-20")
  loaded = export.load(output)  # Ours now: read through config.json.
  inference = {k: v.numpy() for k, v in
               loaded(reference["images"], training=False).items()}
  assert max(_largest_differences(inference, reference,
                                  "inference").values()) <= TOLERANCE


# --- fine-tuning from the fixture -------------------------------------------

def _losses(model_dir, tag="train/supervised_loss"):
  values = {}
  for path in tf.io.gfile.glob(os.path.join(model_dir, "events.*")):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag == tag:
          values[event.step] = float(tf.make_ndarray(value.tensor))
  return [values[step] for step in sorted(values)]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
  """A fine-tuning run from the authors' SavedModel on synthetic_shapes."""
  if not os.path.isdir(FIXTURES):
    pytest.skip(f"the authors' TF2 fixture is not here ({FIXTURES})")
  model_dir = str(tmp_path_factory.mktemp("finetune"))
  config = config_lib.ExperimentConfig(
      data=config_lib.DataConfig(
          dataset="synthetic_shapes", image_size=16,
          data_dir=str(tmp_path_factory.mktemp("tfds")),
          synthetic_train_examples=128, synthetic_test_examples=32),
      model=config_lib.ModelConfig(fine_tune_after_block=4),
      optimizer=config_lib.OptimizerConfig(optimizer="adam",
                                           learning_rate=0.08,
                                           warmup_epochs=0),
      run=config_lib.RunConfig(
          train_mode="finetune", mode="train", checkpoint=SAVED_MODEL,
          model_dir=model_dir, train_batch_size=32, train_steps=24,
          steps_per_loop=4, eval_batch_size=32))
  config = authors_checkpoint.adopt_architecture(config)
  lines = []
  keras.utils.set_random_seed(3)
  training.run_experiment(config, log=lines.append)
  return dict(model_dir=model_dir, lines=lines)


def test_finetuning_from_the_authors_model_trains(finetuned):
  assert any(line.startswith("Loaded the authors' TF2 SavedModel") and
             "From it: encoder, projection head, supervised head." in line
             for line in finetuned["lines"]), finetuned["lines"][:5]
  losses = _losses(finetuned["model_dir"])
  assert len(losses) == 6, losses  # one value per loop of 4 steps
  assert losses[-1] < losses[0] - 0.3, losses


def test_its_export_loads_in_every_client(finetuned):
  path = os.path.join(finetuned["model_dir"], export.EXPORTS_DIR, "24")
  assert export_layout.is_export(path)
  # The expected outputs: the same model built from the run's checkpoint.
  module, _ = export.module_from_checkpoint(finetuned["model_dir"])
  batch = test_export.images(6)
  # In a tf.function, as the loaded graph runs: eager rounds otherwise.
  inference = tf.function(lambda images: module(images, training=False))
  training_mode = tf.function(lambda images: module(images, training=True))
  expected = dict(
      path=path, batch=batch,
      inference={k: v.numpy() for k, v in inference(batch).items()},
      training={k: v.numpy() for k, v in training_mode(batch).items()},
      num_variables=len(module.variables),
      num_trainable=len(module.trainable_variables))
  test_export.test_reloaded_outputs_equal_the_model_in_both_modes(expected)
  test_export.test_loaded_module_exposes_and_trains_its_variables(expected)
  test_export.test_hub_keras_layer_sees_the_trainable_weights(expected)
  # Keras' TFSMLayer. test_export's own check bounds its training mode at
  # 1e-5, set for width-1/8 models; this width-1 ResNet-18 rounds by up to
  # 1.3e-5 there, so its bound here is the 1e-4.
  layer = keras.layers.TFSMLayer(
      path, call_endpoint=export.SERVING_SIGNATURE,
      call_training_endpoint=export.TRAINING_ENDPOINT)
  assert len(layer.trainable_weights) == expected["num_trainable"]
  assert test_export.max_difference(layer(batch), expected["inference"]) \
      <= 1e-5
  assert test_export.max_difference(layer(batch, training=True),
                                    expected["training"]) <= TOLERANCE
