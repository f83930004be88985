"""SavedModel export: every loader, outputs, gradients, bytes, reuse, errors.

The export tools are run as a person would, in a subprocess; the rest runs
in process on tiny models (ResNet-18 at width 1/8, 16 px images).
"""

import dataclasses
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.augment import host as augment
from simclr_tf.checkpoints import ours as checkpoints
from simclr_tf.checkpoints import pretrained
from simclr_tf import config as config_lib
from simclr_tf import data as data_lib
from simclr_tf import export
from simclr_tf.storage import export_layout
from simclr_tf.training import tf_trainer as training
from simclr_tf.storage import write_errors
from simclr_tf.models import resnet_encoder
from simclr_tf.models import simclr

import command_line

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16
NUM_CLASSES = 10
ALL_OUTPUTS = {"initial_conv", "initial_max_pool", "block_group1",
               "block_group2", "block_group3", "block_group4",
               "final_avg_pool", "proj_head_input", "proj_head_output",
               "logits_sup"}


def tiny_config(data_dir, model_dir, **run_overrides):
  run = dict(model_dir=str(model_dir), mode="train", train_batch_size=32,
             train_steps=2, steps_per_loop=2, eval_batch_size=48)
  run.update(run_overrides)
  return config_lib.ExperimentConfig(
      data=config_lib.DataConfig(
          dataset="synthetic_shapes", image_size=SIZE, data_dir=str(data_dir),
          synthetic_train_examples=128, synthetic_test_examples=48),
      augment=config_lib.AugmentConfig(use_blur=False,
                                       color_jitter_strength=0.5),
      model=config_lib.ModelConfig(resnet_depth=18, width_multiplier=0.125,
                                   proj_out_dim=16),
      loss=config_lib.LossConfig(temperature=0.5),
      optimizer=config_lib.OptimizerConfig(learning_rate=0.5,
                                           warmup_epochs=0),
      run=config_lib.RunConfig(**run)).validate()


def images(count, seed=0):
  return np.random.default_rng(seed).random(
      (count, SIZE, SIZE, 3)).astype(np.float32)


def randomise_batch_norm(model, seed=0):
  """BN statistics and affine parameters away from their initial values, so
  inference and training modes differ and a wrongly copied one shows."""
  rng = np.random.default_rng(seed)
  for weight in model.weights:
    shape = tuple(weight.shape)
    if weight.name == "moving_variance":
      weight.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
    elif weight.name in ("moving_mean", "beta"):
      weight.assign(rng.normal(0.0, 0.1, shape).astype(np.float32))
    elif weight.name == "gamma":
      weight.assign(rng.normal(1.0, 0.1, shape).astype(np.float32))


def all_outputs(model, batch, training):
  """The in-memory model's outputs under the export's names.

  Computed in a tf.function, as `fit` and `predict` run the model: eager
  execution rounds differently (by up to 2e-5 here in training mode).
  """
  encoder = model.encoder
  endpoints = keras.Model(encoder.input, {
      name: encoder.get_layer(name).output for name in resnet_encoder.ENDPOINTS})

  @tf.function
  def run(images):
    outputs = dict(endpoints(images, training=training))
    heads = model(images, training=training)
    for name in (simclr.PROJ_HEAD_INPUT, simclr.PROJ_HEAD_OUTPUT,
                 simclr.LOGITS_SUP):
      outputs[name] = heads[name]
    return outputs

  return {k: v.numpy() for k, v in run(tf.constant(batch)).items()}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def exported(data_dir, tmp_path_factory):
  """An in-memory model, its export, and the model's outputs on a batch."""
  keras.utils.set_random_seed(7)
  config = tiny_config(data_dir, tmp_path_factory.mktemp("unused"))
  # The export's BatchNorm is unsynchronised: compare with the same model.
  config = dataclasses.replace(config, model=dataclasses.replace(
      config.model, global_bn=False))
  model = simclr.build_simclr_model(
      config.model, image_size=SIZE, num_classes=NUM_CLASSES,
      train_mode="pretrain", with_supervised_head=True)
  randomise_batch_norm(model)
  export_dir = str(tmp_path_factory.mktemp("export") / "model")
  export.export_model(model, config, export_dir, global_step=3)
  batch = images(6)
  # Inference first: a training-mode call updates the moving statistics.
  expected_inference = all_outputs(model, batch, training=False)
  expected_training = all_outputs(model, batch, training=True)
  return dict(path=export_dir, batch=batch,
              inference=expected_inference, training=expected_training,
              num_variables=len(model.weights),
              num_trainable=len(model.trainable_weights))


@pytest.fixture(scope="module")
def pretrained_dir(data_dir, tmp_path_factory):
  """A 2-step pretraining run; it exports itself at the end."""
  model_dir = tmp_path_factory.mktemp("pretrain")
  training.run_experiment(tiny_config(data_dir, model_dir), log=lambda _: 0)
  return str(model_dir)


def max_difference(got, expected):
  return max(float(np.max(np.abs(np.asarray(got[k]) - expected[k])))
             for k in expected)


def test_reloaded_outputs_equal_the_model_in_both_modes(exported):
  module = tf.saved_model.load(exported["path"])
  batch = exported["batch"]
  inference = module(batch, training=False)
  assert set(inference) == ALL_OUTPUTS
  assert max_difference(inference, exported["inference"]) <= 1e-5
  # The authors' keyword, and the default, are inference too.
  assert max_difference(module(batch, trainable=False),
                        exported["inference"]) <= 1e-5
  assert max_difference(module(batch), exported["inference"]) <= 1e-5
  serving = module.signatures[export.SERVING_SIGNATURE](images=batch)
  assert max_difference(serving, exported["inference"]) <= 1e-5
  # Training mode normalises with the batch's statistics: other outputs.
  assert max_difference(inference, exported["training"]) > 1e-2
  assert max_difference(module(batch, training=True),
                        exported["training"]) <= 1e-5
  assert max_difference(module(batch, trainable=True),
                        exported["training"]) <= 1e-5


def test_training_mode_updates_the_moving_statistics(exported):
  module = tf.saved_model.load(exported["path"])
  moving = [v for v in module.variables if "moving_mean" in v.name]
  assert moving
  before = [v.numpy() for v in moving]
  module(exported["batch"], training=False)
  assert all(np.array_equal(v.numpy(), b) for v, b in zip(moving, before))
  module(exported["batch"], training=True)
  assert not any(np.array_equal(v.numpy(), b) for v, b in zip(moving, before))


def test_loaded_module_exposes_and_trains_its_variables(exported):
  module = tf.saved_model.load(exported["path"])
  # Saved lists, not tf.Module's computed properties (authors' issue #116).
  assert len(module.variables) == exported["num_variables"]
  assert len(module.trainable_variables) == exported["num_trainable"]
  assert len(module.non_trainable_variables) == (
      exported["num_variables"] - exported["num_trainable"]) > 0  # BN stats
  assert list(module.regularization_losses) == []
  batch = exported["batch"]
  with tf.GradientTape() as tape:
    outputs = module(batch, training=True)
    loss = (tf.reduce_sum(outputs["proj_head_output"] ** 2) +
            tf.reduce_sum(outputs["logits_sup"] ** 2))
  gradients = tape.gradient(loss, module.trainable_variables)
  assert all(g is not None for g in gradients)
  nonzero = [float(tf.norm(g)) > 0 for g in gradients]
  assert sum(nonzero) >= 0.9 * len(nonzero), sum(nonzero)
  before = module(batch)["final_avg_pool"].numpy()
  for variable, gradient in zip(module.trainable_variables, gradients):
    variable.assign_sub(0.01 * gradient)
  assert np.abs(module(batch)["final_avg_pool"].numpy() - before).max() > 0


def test_hub_keras_layer_sees_the_trainable_weights(exported):
  hub = pytest.importorskip(
      "tensorflow_hub", reason="tensorflow-hub and tf-keras are test-only "
      "dependencies (requirements-test.txt)")
  module = hub.load(exported["path"])
  assert len(module.trainable_variables) == exported["num_trainable"]
  layer = hub.KerasLayer(exported["path"], trainable=True)
  assert len(layer.trainable_weights) == exported["num_trainable"]
  assert len(layer.weights) == exported["num_variables"]
  batch = exported["batch"]
  assert max_difference(layer(batch, training=False),
                        exported["inference"]) <= 1e-5
  # The layer passes `training` through: batch statistics in training mode.
  assert max_difference(layer(batch, training=True),
                        exported["training"]) <= 1e-5
  frozen = hub.KerasLayer(exported["path"], trainable=False,
                          output_key="final_avg_pool",
                          signature=export.SERVING_SIGNATURE)
  np.testing.assert_allclose(frozen(batch), exported["inference"][
      "final_avg_pool"], atol=1e-5)


def test_tfsm_layer_in_a_new_keras_model_fits_a_linear_head(exported):
  batch = np.concatenate([images(32, seed=1), exported["batch"]])
  labels = np.random.default_rng(2).integers(0, 3, len(batch))
  inputs = keras.Input((SIZE, SIZE, 3))
  features = keras.layers.TFSMLayer(
      exported["path"], call_endpoint=export.SERVING_SIGNATURE,
      trainable=False)(inputs)["final_avg_pool"]
  logits = keras.layers.Dense(3)(features)
  model = keras.Model(inputs, logits)
  model.compile(keras.optimizers.Adam(0.05),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  before = model.evaluate(batch, labels, verbose=0)
  model.fit(batch, labels, epochs=10, batch_size=len(batch), verbose=0)
  after = model.evaluate(batch, labels, verbose=0)
  assert after < before - 0.05, (before, after)

  trainable = keras.layers.TFSMLayer(
      exported["path"], call_endpoint=export.SERVING_SIGNATURE,
      call_training_endpoint=export.TRAINING_ENDPOINT)
  assert len(trainable.trainable_weights) == exported["num_trainable"]
  assert max_difference(trainable(exported["batch"], training=True),
                        exported["training"]) <= 1e-5


def test_bytes_signature_equals_the_float_path_after_the_eval_transform(
    exported):
  rng = np.random.default_rng(3)
  pictures = [rng.integers(0, 256, shape, dtype=np.uint8)
              for shape in ((20, 24, 3), (16, 16, 3), (40, 30, 3))]
  encoded = [tf.io.encode_png(p).numpy() for p in pictures[:2]]
  encoded.append(tf.io.encode_jpeg(pictures[2]).numpy())
  module = tf.saved_model.load(exported["path"])
  from_bytes = module.signatures[export.IMAGE_BYTES_SIGNATURE](
      image_bytes=tf.constant(encoded))
  transformed = tf.stack([
      augment.preprocess_for_eval(tf.io.decode_image(e, channels=3), SIZE,
                                  config_lib.AugmentConfig())
      for e in encoded])
  from_floats = module.signatures[export.SERVING_SIGNATURE](
      images=transformed)
  assert set(from_bytes) == ALL_OUTPUTS
  for name in ALL_OUTPUTS:
    np.testing.assert_allclose(from_bytes[name], from_floats[name],
                               atol=1e-6, err_msg=name)
  assert np.abs(from_floats["final_avg_pool"][0] -
                from_floats["final_avg_pool"][1]).max() > 1e-3


def test_training_exports_automatically_and_atomically(pretrained_dir):
  exports_dir = os.path.join(pretrained_dir, export.EXPORTS_DIR)
  assert os.listdir(exports_dir) == ["2"]  # no temporary directory left
  export_dir = os.path.join(exports_dir, "2")
  assert export_layout.is_export(export_dir)
  meta = export_layout.read_metadata(export_dir)
  assert meta["global_step"] == 2 and meta["image_size"] == SIZE
  assert meta["num_classes"] == NUM_CLASSES
  assert set(meta["outputs"]) == ALL_OUTPUTS
  # It holds the checkpoint's weights: the trained model (with synchronised
  # BatchNorm, the default) gives the same inference outputs.
  config = config_lib.ExperimentConfig.from_dict(meta["config"])
  assert config.model.global_bn
  model = simclr.build_simclr_model(
      config.model, image_size=SIZE, num_classes=NUM_CLASSES,
      train_mode="pretrain", with_supervised_head=True)
  tf.train.Checkpoint(model=model).read(
      os.path.join(pretrained_dir, "ckpt-2")).expect_partial()
  batch = images(4)
  assert max_difference(export.load(export_dir)(batch),
                        all_outputs(model, batch, training=False)) <= 1e-5


def test_a_failed_export_leaves_the_previous_one_in_place(
    pretrained_dir, tmp_path, monkeypatch):
  target = str(tmp_path / "7")
  shutil.copytree(os.path.join(pretrained_dir, export.EXPORTS_DIR, "2"),
                  target)
  module, meta = export.module_from_checkpoint(pretrained_dir)

  def crash(obj, path, **kwargs):
    tf.io.gfile.makedirs(os.path.join(path, "variables"))
    raise OSError("disk full")

  monkeypatch.setattr(tf.saved_model, "save", crash)
  with pytest.raises(write_errors.WriteFailedError,
                     match=r"could not write the export .* \(disk full\)"):
    export.write_saved_model(module, target, meta, overwrite=True)
  assert export_layout.is_export(target)
  assert export_layout.read_metadata(target)["global_step"] == 2
  assert os.listdir(tmp_path) == ["7"]  # the half-written copy is gone


def test_only_the_latest_exports_are_kept(tmp_path):
  finished = subprocess.Popen(["true"])
  finished.wait()  # its pid now names no process
  # A dead writer's temporary and set-aside copies go, and so does a
  # temporary name without a pid (no writer can finish it); a live writer's
  # work in progress and foreign entries stay.
  for name in ("1", "2", "10", f".tmp-3-{finished.pid}",
               f".old-3-{finished.pid}", ".tmp-half", f".tmp-4-{os.getpid()}",
               "notes"):
    (tmp_path / name).mkdir()
  export.prune_exports(str(tmp_path), keep=2)
  assert sorted(os.listdir(tmp_path)) == sorted(
      ["2", "10", f".tmp-4-{os.getpid()}", "notes"])


def test_finetuning_from_an_export_starts_from_its_weights(
    pretrained_dir, data_dir, tmp_path):
  export_dir = os.path.join(pretrained_dir, export.EXPORTS_DIR, "2")
  config = tiny_config(data_dir, tmp_path, train_mode="finetune",
                       checkpoint=export_dir)

  def loaded_weights(path):
    model = simclr.build_simclr_model(
        config.model, image_size=SIZE, num_classes=NUM_CLASSES,
        train_mode="finetune", with_supervised_head=True)
    prefix = pretrained.load_pretrained(model, path, config.model,
                                         image_size=SIZE)
    # The supervised head too: fine-tuning keeps the pretraining head.
    return prefix, [w.numpy() for w in model.encoder.weights +
                    model.projection_head.weights +
                    model.supervised_head.weights]

  prefix, from_export = loaded_weights(export_dir)
  assert prefix == os.path.join(export_dir, "variables", "variables")
  _, from_checkpoint = loaded_weights(pretrained_dir)
  assert len(from_export) == len(from_checkpoint) > 100
  for got, expected in zip(from_export, from_checkpoint):
    np.testing.assert_array_equal(got, expected)

  lines = []
  results = training.run_experiment(config, log=lines.append)
  assert results[0].global_step == 2
  assert any(f"Loaded the pretrained encoder from {prefix}" in line
             for line in lines)
  # The fine-tuned model exports too (the authors' export failed here).
  meta = export_layout.read_metadata(
      os.path.join(str(tmp_path), export.EXPORTS_DIR, "2"))
  assert "logits_sup" in meta["outputs"]
  assert meta["config"]["run"]["train_mode"] == "finetune"


def test_eval_mode_evaluates_an_export(pretrained_dir, data_dir, tmp_path):
  export_dir = os.path.join(pretrained_dir, export.EXPORTS_DIR, "2")
  config = tiny_config(data_dir, tmp_path, mode="eval", checkpoint=export_dir)
  results = training.run_experiment(config, log=lambda _: 0)
  got = results[0].eval_results
  assert got["global_step"] == 2  # the step recorded in the export
  # The same loss and top-1 as the export's own logits on the split.
  dataset = data_lib.build_input_fn(
      config.data, config.augment, training=False, num_views=1,
      global_batch_size=48)(None)
  batch, one_hot = next(iter(dataset))
  logits = export.load(export_dir)(batch)["logits_sup"]
  loss = keras.losses.categorical_crossentropy(one_hot, logits,
                                               from_logits=True)
  assert got[simclr.SUPERVISED_LOSS] == pytest.approx(
      float(np.mean(loss)), rel=1e-5)
  assert got[simclr.EVAL_TOP_1] == pytest.approx(np.mean(
      logits.numpy().argmax(-1) == one_hot.numpy().argmax(-1)))


def test_an_export_of_another_architecture_is_refused(pretrained_dir,
                                                       data_dir, tmp_path):
  export_dir = os.path.join(pretrained_dir, export.EXPORTS_DIR, "2")
  config = tiny_config(data_dir, tmp_path, train_mode="finetune",
                       checkpoint=export_dir)
  model_config = dataclasses.replace(config.model, width_multiplier=0.25)
  model = simclr.build_simclr_model(
      model_config, image_size=SIZE, num_classes=NUM_CLASSES,
      train_mode="finetune", with_supervised_head=True)
  with pytest.raises(checkpoints.CheckpointError,
                     match="width_multiplier: checkpoint 0.125, this run "
                     "0.25"):
    pretrained.load_pretrained(model, export_dir, model_config,
                                image_size=SIZE)


def test_bad_paths_and_images_get_one_clear_line(exported, tmp_path):
  missing = str(tmp_path / "missing")
  with pytest.raises(checkpoints.CheckpointError,
                     match=re.escape(f"{missing}: no such file or directory")):
    export.load(missing)
  (tmp_path / "neither").mkdir()
  (tmp_path / "neither" / "notes.txt").write_text("x")
  with pytest.raises(checkpoints.CheckpointError,
                     match="holds no checkpoint and is not an export"):
    export.load(str(tmp_path / "neither"))
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "saved_model.pb").write_bytes(b"")
  with pytest.raises(checkpoints.CheckpointError,
                     match="not one written by simclr_tf"):
    pretrained.resolve(str(foreign))

  model = export.load(exported["path"])
  for bad, shown in ((images(2)[0], r"\(16, 16, 3\)"),
                     (images(2)[..., :1], r"\(2, 16, 16, 1\)"),
                     (np.zeros((2, 16, 16, 4), np.float32),
                      r"\(2, 16, 16, 4\)")):
    with pytest.raises(export.ExportError,
                       match=f"Received: images.shape={shown}"):
      model(bad)
  with pytest.raises(export.ExportError, match="images.dtype=uint8"):
    model(np.zeros((2, 16, 16, 3), np.uint8))


def _run_tool(args, cwd=REPO):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("PYTHONPATH", None)
  return subprocess.run([sys.executable] + args, cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def test_export_tool_exports_a_model_dir(pretrained_dir, tmp_path):
  export_dir = tmp_path / "exported"
  # As a script, from another directory.
  result = _run_tool([os.path.join(REPO, "tools", "export_saved_model.py"),
                      f"--checkpoint={pretrained_dir}",
                      f"--export_dir={export_dir}"], cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"Wrote {export_dir} (step 2" in result.stdout
  assert export_layout.is_export(str(export_dir))
  assert os.listdir(tmp_path) == ["exported"]  # nothing temporary left
  automatic = tf.saved_model.load(
      os.path.join(pretrained_dir, export.EXPORTS_DIR, "2"))
  tool = tf.saved_model.load(str(export_dir))
  assert len(tool.variables) == len(automatic.variables)
  for got, expected in zip(tool.variables, automatic.variables):
    np.testing.assert_array_equal(got.numpy(), expected.numpy())


def test_export_tool_reports_a_missing_checkpoint(tmp_path):
  result = _run_tool(["-m", "tools.export_saved_model",
                      f"--checkpoint={tmp_path / 'nope'}",
                      f"--export_dir={tmp_path / 'out'}"])
  line = command_line.one_error_line(result, "export_saved_model")
  assert f"{tmp_path / 'nope'}: no such file or directory" in line
  assert not (tmp_path / "out").exists()


def test_embed_tool_writes_embeddings_and_labels_of_the_split(
    pretrained_dir, data_dir, tmp_path):
  export_dir = os.path.join(pretrained_dir, export.EXPORTS_DIR, "2")
  output = tmp_path / "test.npz"
  result = _run_tool(["-m", "tools.embed", f"--checkpoint={export_dir}",
                      "--dataset=synthetic_shapes", f"--data_dir={data_dir}",
                      "--synthetic_train_examples=128",
                      "--synthetic_test_examples=48", "--split=test",
                      "--batch_size=20", "--log_every=1",
                      f"--output={output}"])
  assert result.returncode == 0, result.stderr[-2000:]
  progress = [line for line in result.stdout.splitlines()
              if line.startswith("embed: batch")]
  assert len(progress) == 3 and "48/48 images" in progress[-1]
  saved = np.load(output)
  assert saved["embeddings"].shape == (48, 64)  # 512 * 1/8 features
  assert str(saved["output_key"]) == "final_avg_pool"
  # Labels and embeddings in the split's order.
  config = tiny_config(data_dir, tmp_path)
  dataset = data_lib.build_input_fn(
      config.data, config.augment, training=False, num_views=1,
      global_batch_size=48)(None)
  batch, one_hot = next(iter(dataset))
  np.testing.assert_array_equal(saved["labels"],
                                np.argmax(one_hot.numpy(), axis=-1))
  expected = export.load(export_dir)(batch)["final_avg_pool"].numpy()
  np.testing.assert_allclose(saved["embeddings"], expected, atol=1e-5)


def test_embed_tool_reports_a_directory_that_is_no_model(tmp_path):
  result = _run_tool(["-m", "tools.embed", f"--checkpoint={tmp_path}",
                      f"--output={tmp_path / 'x.npz'}"])
  line = command_line.one_error_line(result, "embed")
  assert str(tmp_path) in line and "not an export" in line
  assert not (tmp_path / "x.npz").exists()
