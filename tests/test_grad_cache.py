"""Cached-gradient pretraining steps (`grad_cache_chunks`).

The step is checked against a reference written here: every chunk's
forward pass under one GradientTape (so its gradients are the full batch's
by construction), the loss from `losses` on the projections reassembled by
hand, the gradients applied by an identical fresh optimizer, and the moving
averages set to the mean of the chunks' statistics, recovered one chunk at a
time from the layers' own updates.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf import losses
from simclr_tf import optimizers
from simclr_tf.models import grad_cache
from simclr_tf.models import simclr
from simclr_tf.training import stages

SIZE = 16
CLASSES = 4
TEMPERATURE = 0.5
WEIGHT_DECAY = 1e-3
LEARNING_RATE = 0.5


# 1. No chunk holds both views of an image; every view is in one chunk.

@pytest.mark.parametrize("batch, chunks", [
    (8, 1), (8, 2), (8, 4), (8, 8), (12, 3), (6, 6)])
def test_chunks_hold_every_view_once_and_never_both_views(batch, chunks):
  rows = grad_cache.chunk_rows(batch, chunks)
  assert rows.shape == (chunks, 2 * batch // chunks)
  assert sorted(rows.reshape(-1).tolist()) == list(range(2 * batch))
  for chunk in rows:
    images = chunk % batch
    # Each chunk holds as many first views as second views.
    assert np.sum(chunk < batch) == np.sum(chunk >= batch)
    if chunks >= 2:
      assert len(set(images.tolist())) == len(chunk), chunk
  order = grad_cache.reassembly_order(batch, chunks)
  np.testing.assert_array_equal(rows.reshape(-1)[order],
                                np.arange(2 * batch))


# 3. The loss' logits (its anchors, positives and negatives) are the same.

def test_reassembled_projections_give_the_unchunked_logits():
  batch, chunks = 8, 4
  rng = np.random.default_rng(0)
  projections = tf.constant(rng.normal(size=(2 * batch, 16)), tf.float32)
  rows = grad_cache.chunk_rows(batch, chunks)
  # What the chunks' outputs are, concatenated in chunk order.
  chunk_outputs = tf.concat([tf.gather(projections, r) for r in rows], 0)
  assert not np.allclose(chunk_outputs, projections)
  reassembled = tf.gather(chunk_outputs,
                          grad_cache.reassembly_order(batch, chunks))
  loss_1, logits_1, labels_1 = losses.pretraining_loss(
      projections, temperature=TEMPERATURE)
  loss_k, logits_k, labels_k = losses.pretraining_loss(
      reassembled, temperature=TEMPERATURE)
  np.testing.assert_array_equal(logits_k, logits_1)
  np.testing.assert_array_equal(labels_k, labels_1)
  assert float(loss_k) == float(loss_1)


# 2. One step equals the reference step.

def _model(chunks, global_bn=True):
  model_config = config_lib.ModelConfig(
      resnet_depth=18, width_multiplier=0.125, proj_out_dim=16,
      proj_head_mode="nonlinear", global_bn=global_bn)
  return simclr.build_simclr_model(
      model_config, image_size=SIZE, num_classes=CLASSES,
      train_mode="pretrain", with_supervised_head=True,
      temperature=TEMPERATURE, weight_decay=WEIGHT_DECAY,
      optimizer_name="momentum", grad_cache_chunks=chunks)


def _optimizer():
  return keras.optimizers.SGD(LEARNING_RATE, momentum=0.9)


def _batch(batch, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(batch, SIZE, SIZE, 6)).astype("float32")
  labels = np.eye(CLASSES, dtype="float32")[
      rng.integers(0, CLASSES, batch)]
  return images, labels


def _moving_pairs(model):
  variables = {v.path: v for v in model.non_trainable_variables}
  return [(variables[path], variables[path[:-len("moving_mean")]
                                      + "moving_variance"])
          for path in variables if path.endswith("moving_mean")]


def _reference_step(model, optimizer, images, labels, chunks):
  """One step, written out: BatchNorm batches are `chunks`' view lists.

  Args:
    model: a SimCLRModel (its chunk count is not used).
    optimizer: a fresh optimizer.
    images: (B, H, W, 6) numpy images.
    labels: (B, C) one-hot labels.
    chunks: for each chunk, a list of (image index, view) pairs.

  Returns:
    (the total loss, for each chunk the (moving mean, moving variance) of
    every BatchNorm layer after one update from that chunk alone, the
    gradients' global norm); the model's moving averages are set to their
    means over the chunks.
  """
  batch = len(images)
  views = [images[..., :3], images[..., 3:]]
  pairs = _moving_pairs(model)
  start = [(m.numpy(), v.numpy()) for m, v in pairs]
  seen = []
  projections = [[None] * batch, [None] * batch]
  logits = [[None] * batch, [None] * batch]
  with tf.GradientTape() as tape:
    for chunk in chunks:
      for (mean, variance), (mean_0, variance_0) in zip(pairs, start):
        mean.assign(mean_0)
        variance.assign(variance_0)
      inputs = np.stack([views[view][index] for index, view in chunk])
      outputs = model(inputs, training=True)
      for row, (index, view) in enumerate(chunk):
        projections[view][index] = outputs[simclr.PROJ_HEAD_OUTPUT][row]
        logits[view][index] = outputs[simclr.LOGITS_SUP][row]
      seen.append([(m.numpy(), v.numpy()) for m, v in pairs])
    hidden = tf.stack(projections[0] + projections[1])
    contrast, _, _ = losses.pretraining_loss(hidden, temperature=TEMPERATURE)
    supervised = losses.supervised_loss(
        np.concatenate([labels, labels]), tf.stack(logits[0] + logits[1]))
    decay = optimizers.l2_weight_decay(model.trainable_variables,
                                       WEIGHT_DECAY, "momentum")
    total = contrast + supervised + decay
  variables = model.trainable_variables
  gradients = tape.gradient(total, variables)
  optimizer.apply_gradients(zip(gradients, variables))
  for index, (mean, variance) in enumerate(pairs):
    mean.assign(np.mean([each[index][0] for each in seen], axis=0))
    variance.assign(np.mean([each[index][1] for each in seen], axis=0))
  return float(total), seen, float(tf.linalg.global_norm(gradients))


def _chunks_of(indices, chunks):
  """The test's own statement of the chunking, over image `indices`."""
  group = len(indices) // chunks
  return [[(i, 0) for i in indices[k * group:(k + 1) * group]] +
          [(i, 1) for i in indices[((k + 1) % chunks) * group:
                                   ((k + 1) % chunks + 1) * group]]
          for k in range(chunks)]


def _fit_one_step(model, dataset, strategy=None, loss_scale=None):
  with (strategy or tf.distribute.get_strategy()).scope():
    optimizer = _optimizer()
    if loss_scale is not None:
      optimizer = keras.optimizers.LossScaleOptimizer(
          optimizer, initial_scale=loss_scale)
    model.compile(optimizer=optimizer)
    model.build_optimizer_slots()
  history = model.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)
  return {name: values[-1] for name, values in history.history.items()}


def _assert_same_weights(model, reference, initial, tolerance,
                         moving=True):
  """Each variable within `tolerance` of its update's size (at least 1e-3).

  `moving=False` leaves out the BatchNorm moving averages.
  """
  moved = checked = 0
  worst = 0.0
  for variable, expected, before in zip(model.weights, reference.weights,
                                        initial):
    if not moving and "moving_" in variable.path:
      continue
    checked += 1
    expected = expected.numpy()
    got = variable.numpy()
    scale = max(np.abs(expected - before).max(), 1e-3)
    worst = max(worst, np.abs(got - expected).max() / scale)
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance * scale,
                               err_msg=variable.path)
    moved += not np.allclose(before, expected)
  assert moved > checked // 2
  print(f"largest difference / update: {worst:.2e}")


# A loss scale (float16's) must cancel: the cached output gradients are of
# the scaled loss, and the optimizer unscales the weight gradients once.
@pytest.mark.parametrize("loss_scale", [None, 64.0])
def test_one_replica_step_equals_the_reference(loss_scale):
  batch, chunks = 8, 4
  images, labels = _batch(batch)
  model = _model(chunks)
  reference = _model(1)
  initial = [v.numpy() for v in model.weights]
  for variable, value in zip(reference.weights, initial):
    variable.assign(value)
  logs = _fit_one_step(
      model, tf.data.Dataset.from_tensors((images, labels)),
      loss_scale=loss_scale)
  total, _, norm = _reference_step(reference, _optimizer(), images, labels,
                                   _chunks_of(list(range(batch)), chunks))
  _assert_same_weights(model, reference, initial, 1e-5)
  np.testing.assert_allclose(logs["total_loss"], total, rtol=1e-5)
  np.testing.assert_allclose(logs["grad_norm"], norm, rtol=1e-5)
  if loss_scale is not None:
    return
  # The chunks matter: an unchunked step (one BatchNorm batch) differs.
  unchunked = _model(1)
  for variable, value in zip(unchunked.weights, initial):
    variable.assign(value)
  _fit_one_step(unchunked, tf.data.Dataset.from_tensors((images, labels)))
  assert max(np.abs(a.numpy() - b.numpy()).max() for a, b in
             zip(unchunked.weights, reference.weights)) > 1e-3


@pytest.fixture
def bfloat16_policy():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_a_bfloat16_step_equals_the_reference_under_the_same_policy(
    bfloat16_policy):  # pylint: disable=unused-argument,redefined-outer-name
  batch, chunks = 8, 4
  images, labels = _batch(batch, seed=3)
  model = _model(chunks)
  reference = _model(1)
  assert model.encoder.compute_dtype == "bfloat16"
  initial = [v.numpy() for v in model.weights]
  for variable, value in zip(reference.weights, initial):
    variable.assign(value)
  logs = _fit_one_step(model, tf.data.Dataset.from_tensors((images, labels)))
  total, _, _ = _reference_step(reference, _optimizer(), images, labels,
                                _chunks_of(list(range(batch)), chunks))
  # The forward passes are the same bfloat16 ops on the same chunks; the
  # gradients add up in another order. Measured here: 8e-7 of the update;
  # the bound leaves room for other CPUs' bfloat16 kernels (emulated on
  # AVX2-only ones), not for a wrong chunk or a missed gradient.
  _assert_same_weights(model, reference, initial, 1e-2)
  np.testing.assert_allclose(logs["total_loss"], total, rtol=1e-2)


def test_a_jit_compiled_step_equals_the_reference():
  batch, chunks = 8, 2
  images, labels = _batch(batch, seed=4)
  model = _model(chunks)
  reference = _model(1)
  initial = [v.numpy() for v in model.weights]
  for variable, value in zip(reference.weights, initial):
    variable.assign(value)
  model.compile(optimizer=_optimizer(), jit_compile=True)
  model.build_optimizer_slots()
  logs = model.fit(tf.data.Dataset.from_tensors((images, labels)), epochs=1,
                   steps_per_epoch=1, verbose=0).history
  total, _, _ = _reference_step(reference, _optimizer(), images, labels,
                                _chunks_of(list(range(batch)), chunks))
  # XLA fuses and reorders float32 sums: measured 9e-5 of the update.
  _assert_same_weights(model, reference, initial, 1e-3)
  np.testing.assert_allclose(logs["total_loss"][-1], total, rtol=1e-5)


@pytest.mark.parametrize("global_bn", [True, False])
def test_two_replica_step_equals_the_reference(two_replica_strategy,
                                               global_bn):
  batch, chunks = 16, 2
  per_replica = batch // 2
  images, labels = _batch(batch, seed=1)
  with two_replica_strategy.scope():
    model = _model(chunks, global_bn=global_bn)
  reference = _model(1, global_bn=global_bn)
  initial = [v.numpy() for v in model.weights]
  for variable, value in zip(reference.weights, initial):
    variable.assign(value)

  # Replica r trains on images [r * 8, (r + 1) * 8).
  def replica_batches(context):
    del context
    return tf.data.Dataset.from_tensor_slices(
        (images.reshape(2, per_replica, SIZE, SIZE, 6),
         labels.reshape(2, per_replica, CLASSES)))

  dataset = two_replica_strategy.distribute_datasets_from_function(
      replica_batches)
  logs = _fit_one_step(model, dataset, two_replica_strategy)
  halves = [_chunks_of(list(range(r * per_replica, (r + 1) * per_replica)),
                       chunks) for r in range(2)]
  if global_bn:
    # Synchronised statistics: chunk k of both replicas is one BN batch.
    reference_chunks = [halves[0][k] + halves[1][k] for k in range(chunks)]
  else:
    reference_chunks = halves[0] + halves[1]
  total, seen, norm = _reference_step(reference, _optimizer(), images,
                                      labels, reference_chunks)
  # Replicas sum gradients and synchronised statistics in another order
  # than one device: float32 noise, measured 1.5e-5 of an update with
  # global_bn (2e-6 without); test_models' unchunked 2-replica test
  # allows 2e-4.
  _assert_same_weights(model, reference, initial, 1e-4, moving=global_bn)
  np.testing.assert_allclose(logs["total_loss"], total, rtol=1e-5)
  np.testing.assert_allclose(logs["grad_norm"], norm, rtol=1e-4)
  if not global_bn:
    # Unsynchronised, each replica keeps its own moving averages (the
    # layer's behaviour without chunks too): the mean of its own chunks.
    for index, pair in enumerate(_moving_pairs(model)):
      for position, variable in enumerate(pair):
        for replica, value in enumerate(variable.value.values):
          own = seen[replica * chunks:(replica + 1) * chunks]
          expected = np.mean([each[index][position] for each in own], 0)
          np.testing.assert_allclose(value.numpy(), expected, rtol=1e-4,
                                     atol=1e-6, err_msg=variable.path)


# 4. Bad input: one-line errors.

def _experiment(**run):
  return config_lib.ExperimentConfig(run=config_lib.RunConfig(**run))


def test_grad_cache_outside_pretraining_is_refused():
  with pytest.raises(config_lib.ConfigError) as error:
    _experiment(train_mode="finetune", from_scratch=True,
                grad_cache_chunks=2).validate()
  assert str(error.value) == (
      "`grad_cache_chunks` applies to pretraining only: set "
      "grad_cache_chunks=1 for train_mode=finetune. Received: "
      "grad_cache_chunks=2")
  with pytest.raises(config_lib.ConfigError, match="must be >= 1"):
    _experiment(grad_cache_chunks=0).validate()


def test_chunks_must_divide_the_per_replica_batch():
  config = _experiment(train_batch_size=32, grad_cache_chunks=3).validate()
  with pytest.raises(config_lib.ConfigError) as error:
    stages.check_batches_split(config, 2)
  assert str(error.value) == (
      "`grad_cache_chunks` must divide the per-replica batch (32 over 2 "
      "replicas = 16). Received: grad_cache_chunks=3")
  assert "\n" not in str(error.value)
  # 16 per replica: 4 chunks divide it; 8 per replica: 16 chunks do not.
  stages.check_batches_split(
      _experiment(train_batch_size=32, grad_cache_chunks=4).validate(), 2)
  with pytest.raises(config_lib.ConfigError, match="= 8"):
    stages.check_batches_split(
        _experiment(train_batch_size=32, grad_cache_chunks=16).validate(), 4)
  with pytest.raises(ValueError, match="Received: grad_cache_chunks=3"):
    grad_cache.chunk_rows(8, 3)


def test_the_linear_eval_stage_after_pretraining_runs_unchunked():
  config = _experiment(grad_cache_chunks=4).validate()
  linear = config.for_linear_eval(model_dir="x", checkpoint=None)
  assert linear.run.grad_cache_chunks == 1


def test_the_model_refuses_chunks_outside_pretraining_and_keeps_its_k():
  with pytest.raises(ValueError, match="pretraining only"):
    simclr.build_simclr_model(
        config_lib.ModelConfig(resnet_depth=18, width_multiplier=0.125),
        image_size=SIZE, num_classes=CLASSES, train_mode="finetune",
        with_supervised_head=True, grad_cache_chunks=2)
  model = _model(4)
  assert model.get_config()["grad_cache_chunks"] == 4
  assert simclr.SimCLRModel.from_config(
      model.get_config()).grad_cache_chunks == 4


def test_the_keras_trainer_refuses_chunks():
  from simclr_tf.training import keras_trainer
  with pytest.raises(config_lib.ConfigError) as error:
    keras_trainer.run_experiment(_experiment(grad_cache_chunks=2))
  assert str(error.value).startswith(
      "grad_cache_chunks is a TensorFlow-backend feature")


# 5. A run saved with chunks continues without them.

def test_a_chunked_run_resumes_unchunked(tmp_path):
  from simclr_tf.training import tf_trainer

  def config(chunks, steps):
    return config_lib.ExperimentConfig(
        data=config_lib.DataConfig(
            dataset="synthetic_shapes", image_size=SIZE,
            data_dir=str(tmp_path / "data"), synthetic_train_examples=64,
            synthetic_test_examples=16),
        augment=config_lib.AugmentConfig(use_blur=False),
        model=config_lib.ModelConfig(resnet_depth=18, width_multiplier=0.125,
                                     proj_out_dim=16),
        optimizer=config_lib.OptimizerConfig(learning_rate=0.5,
                                             warmup_epochs=0),
        run=config_lib.RunConfig(
            mode="train", model_dir=str(tmp_path / "run"),
            train_batch_size=16, train_steps=steps, checkpoint_steps=2,
            steps_per_loop=2, keep_hub_module_max=0, health_examples=0,
            grad_cache_chunks=chunks)).validate()

  lines = []
  first = tf_trainer.run_experiment(config(2, 2), log=lines.append)
  assert first[0].global_step == 2
  assert any(line.startswith("NOTE: grad_cache_chunks=2: BatchNorm "
                             "normalises each chunk of 16 views")
             for line in lines), lines
  lines = []
  results = tf_trainer.run_experiment(config(1, 4), log=lines.append)
  assert any("Resumed from" in line and "ckpt-2 at step 2" in line
             for line in lines), lines
  assert results[0].global_step == 4
  # Resuming names the changed setting and goes on; no chunk NOTE now.
  assert any("with changed settings: run.grad_cache_chunks" in line
             for line in lines), lines
  assert not any(line.startswith("NOTE: grad_cache_chunks") for line in lines)
  assert [line.split()[2] for line in lines
          if line.startswith("[pretrain] step")] == ["4/4"]
