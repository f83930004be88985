"""The training program end to end on tiny settings, in process.

Covers every train mode on one device and on the shared 2-replica strategy,
TensorBoard tags, checkpoints and resuming, and loading pretrained weights.
The command line itself is tested in test_run.py.
"""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from simclr_tf.checkpoints import ours as checkpoints

from simclr_tf.checkpoints import pretrained
from simclr_tf import config as config_lib
from simclr_tf.evaluation import health
from simclr_tf.training import tf_trainer as training
from simclr_tf.models import simclr

TRAIN_TAGS = {"train/contrast_loss", "train/contrast_acc",
              "train/contrast_entropy", "train/supervised_loss",
              "train/supervised_acc", "train/weight_decay",
              "train/total_loss", "learning_rate"}
EVAL_TAGS = {"eval/label_top_1_accuracy", "eval/label_top_5_accuracy"}
HEALTH_TAGS = {"health/alignment", "health/uniformity",
               "health/effective_rank"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def tiny_config(data_dir, model_dir, **run_overrides):
  run = dict(model_dir=str(model_dir), train_batch_size=32, train_steps=4,
             checkpoint_steps=2, steps_per_loop=2, eval_batch_size=32,
             keep_checkpoint_max=3)
  run.update(run_overrides)
  return config_lib.ExperimentConfig(
      data=config_lib.DataConfig(
          dataset="synthetic_shapes", image_size=16, data_dir=data_dir, synthetic_train_examples=128,
          synthetic_test_examples=48),
      augment=config_lib.AugmentConfig(use_blur=False,
                                       color_jitter_strength=0.5),
      model=config_lib.ModelConfig(resnet_depth=18, width_multiplier=0.125,
                                   proj_out_dim=16),
      loss=config_lib.LossConfig(temperature=0.5),
      optimizer=config_lib.OptimizerConfig(learning_rate=0.5,
                                           warmup_epochs=0),
      linear_eval=config_lib.LinearEvalConfig(train_steps=2,
                                              train_batch_size=32),
      run=config_lib.RunConfig(**run)).validate()


def event_tags(model_dir):
  tags = set()
  for name in tf.io.gfile.listdir(model_dir):
    if name.startswith("events.out.tfevents"):
      for event in tf.compat.v1.train.summary_iterator(
          os.path.join(model_dir, name)):
        tags.update(value.tag for value in event.summary.value)
  return tags


def view_pair_images(model_dir):
  """The `train/augmented_views` images TensorBoard shows, as uint8."""
  for path in tf.io.gfile.glob(os.path.join(model_dir, "events.out.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == "train/augmented_views":
          tensor = tf.make_ndarray(value.tensor)
          return np.stack([tf.io.decode_png(png).numpy()
                           for png in tensor[2:]])
  raise AssertionError("no train/augmented_views image")


def run(config, strategy=None):
  lines = []
  results = training.run_experiment(config, log=lines.append,
                                    strategy=strategy)
  return results, lines


def numpy_top_k_of_checkpoint(config, checkpoint_prefix):
  """top-1 and top-5 of a checkpoint's linear head on the eval split, by
  numpy from the logits: an independent reference for `evaluate`."""
  from simclr_tf import data as data_lib
  model = simclr.build_simclr_model(
      config.model, image_size=config.data.image_size, num_classes=10,
      train_mode=config.run.train_mode, with_supervised_head=True)
  tf.train.Checkpoint(model=model).restore(
      checkpoint_prefix).expect_partial()
  input_fn = data_lib.build_input_fn(
      config.data, config.augment, training=False, num_views=1,
      global_batch_size=config.run.eval_batch_size, seed=config.run.seed)
  logits, labels = [], []
  for images, one_hot in input_fn(tf.distribute.InputContext()):
    logits.append(model(images, training=False)[simclr.LOGITS_SUP].numpy())
    labels.append(np.argmax(one_hot.numpy(), axis=-1))
  logits, labels = np.concatenate(logits), np.concatenate(labels)
  top_5 = np.argsort(-logits, axis=-1)[:, :5]
  return (float(np.mean(np.argmax(logits, -1) == labels)),
          float(np.mean([label in row for label, row in zip(labels, top_5)])),
          len(labels))


@pytest.fixture(scope="module")
def pretrained_dir(data_dir, tmp_path_factory):
  """A finished 4-step pretraining run shared by the loading tests."""
  model_dir = tmp_path_factory.mktemp("pretrain")
  run(tiny_config(data_dir, model_dir))
  return str(model_dir)


def test_pretraining_writes_checkpoints_summaries_and_results(pretrained_dir):
  files = set(os.listdir(pretrained_dir))
  assert {"ckpt-2.index", "ckpt-4.index", "config.json", "result.json",
          "result_4.json"} <= files
  tags = event_tags(pretrained_dir)
  assert TRAIN_TAGS <= tags, TRAIN_TAGS - tags
  assert EVAL_TAGS <= tags
  assert "train/augmented_views" in tags
  with open(os.path.join(pretrained_dir, "result.json")) as f:
    result = json.load(f)
  assert result["global_step"] == 4
  assert result["num_eval_examples"] == 48
  # The health signals of the final encoder (tests/test_health.py checks
  # their formulas), within the bounds each can take (64-wide features).
  assert HEALTH_TAGS <= tags, HEALTH_TAGS - tags
  assert 0.0 <= result[health.ALIGNMENT] <= 4.0
  assert -4.0 <= result[health.UNIFORMITY] <= 0.0
  assert 1.0 <= result[health.EFFECTIVE_RANK] <= 64.0 + 1e-3
  stored = config_lib.ExperimentConfig.from_json(
      open(os.path.join(pretrained_dir, "config.json")).read())
  assert stored.run.train_steps == 4
  top_1, top_5, count = numpy_top_k_of_checkpoint(
      stored, os.path.join(pretrained_dir, "ckpt-4"))
  assert count == 48
  assert result["label_top_1_accuracy"] == pytest.approx(top_1, abs=1e-6)
  assert result["label_top_5_accuracy"] == pytest.approx(top_5, abs=1e-6)


def test_progress_lines_show_step_losses_throughput_and_eta(data_dir,
                                                          tmp_path):
  _, lines = run(tiny_config(data_dir, tmp_path, mode="train"))
  progress = [line for line in lines if line.startswith("[pretrain] step")]
  assert len(progress) == 2  # 4 steps, 2 per loop
  assert progress[-1].startswith("[pretrain] step 4/4 (100%)")
  for part in ("contrast_loss", "contrast_acc", "img/s", "ETA", "lr "):
    assert part in progress[-1]


def encoder_weights_of_checkpoint(model_dir, model_config):
  model = simclr.build_simclr_model(model_config, image_size=16,
                                    num_classes=10, train_mode="pretrain",
                                    with_supervised_head=True)
  tf.train.Checkpoint(model=model).restore(
      tf.train.latest_checkpoint(model_dir)).expect_partial()
  return {v.path: v.numpy() for v in model.encoder.weights}


def test_finetune_starts_from_the_pretrained_encoder(pretrained_dir, data_dir,
                                                     tmp_path):
  config = tiny_config(data_dir, tmp_path, train_mode="finetune",
                       checkpoint=pretrained_dir, mode="train")
  with tf.distribute.get_strategy().scope():
    model = simclr.build_simclr_model(
        config.model, image_size=16, num_classes=10, train_mode="finetune",
        with_supervised_head=True)
  pretrained.load_pretrained(model, pretrained_dir, config.model,
                              image_size=16)
  expected = encoder_weights_of_checkpoint(pretrained_dir, config.model)
  for variable in model.encoder.weights:
    np.testing.assert_array_equal(variable.numpy(), expected[variable.path])
  # And the program runs the whole fine-tuning.
  results, lines = run(config)
  assert results[0].global_step == 4
  assert any("Loaded the pretrained encoder" in line for line in lines)


def test_finetune_restores_the_pretraining_head_unless_zero_init(
    pretrained_dir, data_dir, tmp_path):
  # The authors restore the whole model, head included, then zero the head
  # only with zero_init_logits_layer. Expected values read by TensorFlow's
  # reader, following the checkpoint's object graph by hand (the values are
  # stored under the optimizer's keys), not through our model.
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(pretrained_dir))
  graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
      reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))

  def saved(*path):
    node = graph.nodes[0]
    for name in ("model", "supervised_head", "linear_layer", "dense") + path:
      node = graph.nodes[next(c.node_id for c in node.children
                              if c.local_name == name)]
    return reader.get_tensor(node.attributes[0].checkpoint_key)

  saved_kernel, saved_bias = saved("_kernel"), saved("bias")
  assert saved_kernel.shape[-1] == 10 and np.abs(saved_bias).max() > 0

  def load(num_classes, train_mode="finetune", **model_overrides):
    config = tiny_config(data_dir, tmp_path, train_mode=train_mode,
                         checkpoint=pretrained_dir)
    model_config = dataclasses.replace(config.model, **model_overrides)
    model = simclr.build_simclr_model(
        model_config, image_size=16, num_classes=num_classes,
        train_mode=train_mode, with_supervised_head=True)
    lines = []
    pretrained.load_pretrained(model, pretrained_dir, model_config,
                                log=lines.append, image_size=16)
    return model.supervised_head.linear_layer.dense, lines[0]

  dense, line = load(10)
  np.testing.assert_array_equal(dense.kernel.numpy(), saved_kernel)
  np.testing.assert_array_equal(dense.bias.numpy(), saved_bias)
  assert "supervised head" in line.split("Starting fresh")[0]
  dense, line = load(10, zero_init_logits_layer=True)
  assert not np.any(dense.kernel.numpy()) and not np.any(dense.bias.numpy())
  assert "supervised head at zero (--zero_init_logits_layer)" in line
  # Another class count: transfer still works, from a fresh head.
  dense, line = load(7)
  assert dense.kernel.shape[-1] == 7 and np.any(dense.kernel.numpy())
  assert "maps 64 features to 10 classes, this run's 64 to 7" in line
  # A head fitted to h does not fit projection layer 1's output, although
  # the shapes agree here: it starts fresh, saying why.
  dense, line = load(10, ft_proj_selector=1)
  assert dense.kernel.shape == saved_kernel.shape
  assert not np.array_equal(dense.kernel.numpy(), saved_kernel)
  assert ("supervised head (the checkpoint's read projection layer 0, this "
          "run's reads layer 1: --ft_proj_selector)") in line
  # A linear evaluation trains its own head, as its random-encoder baseline.
  dense, line = load(10, train_mode="linear_eval")
  assert not np.array_equal(dense.kernel.numpy(), saved_kernel)
  assert "supervised head (linear evaluation trains its own)" in line


def test_linear_eval_on_two_replicas_keeps_the_encoder_frozen(
    pretrained_dir, data_dir, tmp_path, two_replica_strategy):
  config = tiny_config(data_dir, tmp_path, train_mode="linear_eval",
                       checkpoint=pretrained_dir)
  results, _ = run(config, strategy=two_replica_strategy)
  result = results[0]
  assert result.stage == "linear_eval" and not result.random_init
  assert result.global_step == 2  # from the linear_eval section
  assert result.eval_results["num_eval_examples"] == 48
  trained = encoder_weights_of_checkpoint(str(tmp_path), config.model)
  pretrained = encoder_weights_of_checkpoint(pretrained_dir, config.model)
  for path, value in pretrained.items():
    np.testing.assert_array_equal(trained[path], value, err_msg=path)
  assert EVAL_TAGS <= event_tags(str(tmp_path))


def test_pretraining_on_two_replicas_then_linear_eval(data_dir, tmp_path,
                                                      two_replica_strategy):
  config = tiny_config(data_dir, tmp_path)
  config = dataclasses.replace(
      config, linear_eval=dataclasses.replace(config.linear_eval,
                                              after_pretraining=True))
  results, _ = run(config, strategy=two_replica_strategy)
  assert [r.stage for r in results] == ["pretrain", "linear_eval"]
  # Measured under the strategy (features gathered from both replicas);
  # linear evaluation does not pretrain, so it has none.
  assert set(results[0].health) == {health.ALIGNMENT, health.UNIFORMITY,
                                    health.EFFECTIVE_RANK}
  assert all(np.isfinite(v) for v in results[0].health.values())
  assert results[1].health is None
  assert results[1].model_dir == os.path.join(str(tmp_path), "linear_eval")
  assert os.path.exists(os.path.join(str(tmp_path), "linear_eval",
                                     "result.json"))


def test_linear_eval_without_checkpoint_is_flagged_as_random_init(
    data_dir, tmp_path):
  results, lines = run(tiny_config(data_dir, tmp_path,
                                   train_mode="linear_eval"))
  assert results[0].random_init
  assert any("RANDOM initialisation" in line for line in lines)


def test_from_scratch_trains_the_supervised_baseline(data_dir, tmp_path):
  results, lines = run(tiny_config(data_dir, tmp_path, train_mode="finetune",
                                   from_scratch=True))
  assert results[0].global_step == 4 and results[0].random_init
  assert any("from scratch" in line for line in lines)


def test_a_different_architecture_is_refused_with_the_differences(
    pretrained_dir, data_dir, tmp_path):
  config = tiny_config(data_dir, tmp_path, train_mode="finetune",
                       checkpoint=pretrained_dir)
  config = dataclasses.replace(config, model=dataclasses.replace(
      config.model, width_multiplier=0.25))
  with pytest.raises(checkpoints.CheckpointError,
                     match="width_multiplier: checkpoint 0.125, this run 0.25"):
    run(config)


def test_eval_mode_evaluates_the_latest_checkpoint(pretrained_dir, data_dir,
                                                   tmp_path):
  config = tiny_config(data_dir, tmp_path, mode="eval",
                       checkpoint=pretrained_dir)
  top_1, top_5, _ = numpy_top_k_of_checkpoint(
      config, os.path.join(pretrained_dir, "ckpt-4"))
  results, _ = run(config)
  got = results[0].eval_results
  assert got["global_step"] == 4
  assert got["label_top_1_accuracy"] == pytest.approx(top_1, abs=1e-6)
  assert got["label_top_5_accuracy"] == pytest.approx(top_5, abs=1e-6)


def test_rerunning_resumes_from_the_last_checkpoint(data_dir, tmp_path):
  first, _ = run(tiny_config(data_dir, tmp_path, mode="train"))
  assert first[0].global_step == 4
  results, lines = run(tiny_config(data_dir, tmp_path, mode="train",
                                   train_steps=6))
  assert any(f"Resumed from {tmp_path}/ckpt-4 at step 4" in line
             for line in lines)
  assert results[0].global_step == 6
  progress = [line for line in lines if line.startswith("[pretrain] step")]
  assert [line.split()[2] for line in progress] == ["6/6"]


def test_float16_run_reaches_its_step_and_resumes_in_float32(data_dir,
                                                             tmp_path):
  # The first float16 steps overflow at the initial loss scale and are
  # skipped; the loop makes up for them, so the run still ends at step 4.
  results, lines = run(tiny_config(data_dir, tmp_path, mode="train",
                                   precision="mixed_float16"))
  assert results[0].global_step == 4
  assert [line.split()[2] for line in lines
          if line.startswith("[pretrain] step")] == ["2/4", "4/4"]
  # The optimizer state is saved the same way under every precision.
  results, lines = run(tiny_config(data_dir, tmp_path, mode="train",
                                   train_steps=6))
  assert any(f"Resumed from {tmp_path}/ckpt-4 at step 4" in line
             for line in lines)
  assert results[0].global_step == 6


def test_on_device_augmentation_trains_and_shows_its_views(data_dir,
                                                           tmp_path):
  config = tiny_config(data_dir, tmp_path, mode="train")
  config = dataclasses.replace(config, augment=dataclasses.replace(
      config.augment, on_device=True))
  # The pipeline hands the step uint8 crops of the final size, one per view
  # on the channel axis; flips and colours are made on the device.
  from simclr_tf import data as data_lib
  input_fn = data_lib.build_input_fn(
      config.data, training.train_augment_config(config), training=True,
      num_views=2, global_batch_size=32, seed=0)
  images, _ = next(iter(input_fn(tf.distribute.InputContext())))
  assert images.dtype == tf.uint8 and images.shape[1:] == (16, 16, 6)
  results, _ = run(config)
  assert results[0].global_step == 4
  # The views in TensorBoard come from the on-device transform: two views
  # of each image, side by side, that differ (random crops and jitter).
  pairs = view_pair_images(str(tmp_path))
  assert pairs.shape[-1] == 3 and pairs.shape[2] == 2 * pairs.shape[1]
  left, right = pairs[..., :16, :], pairs[..., 16:, :]
  assert np.mean(np.abs(left.astype(float) - right.astype(float))) > 5
