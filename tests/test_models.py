"""ResNet, heads and SimCLRModel: sizes, shapes, freezing, distribution."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf import optimizers
from simclr_tf.models import heads
from simclr_tf.models import layers as layers_lib
from simclr_tf.models import resnet_encoder as resnet_lib
from simclr_tf.models import simclr


def count_trainable(model):
  return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


# The table in DESIGN.md, from the authors' code.
@pytest.mark.parametrize("kwargs, expected", [
    (dict(depth=18, cifar_stem=True), 11_173_056),
    (dict(depth=50, cifar_stem=True), 23_500_352),
    (dict(depth=50), 23_508_032),
    (dict(depth=50, sk_ratio=0.0625), 35_215_584),
    (dict(depth=101), 42_500_160),
])
def test_resnet_trainable_parameter_counts_match_the_table(kwargs, expected):
  assert count_trainable(resnet_lib.resnet(**kwargs)) == expected


def test_resnet50_with_v2_head_and_1000_classes_matches_the_table():
  model_config = config_lib.ModelConfig(resnet_depth=50, global_bn=False)
  model = simclr.build_simclr_model(
      model_config, image_size=64, num_classes=1000, train_mode="pretrain",
      with_supervised_head=True)
  assert count_trainable(model) == 34_216_104


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152, 200])
def test_every_depth_builds_and_exposes_named_endpoints(depth):
  encoder = resnet_lib.resnet(depth, width_multiplier=0.0625, sk_ratio=0.0625,
                              se_ratio=0.25)
  features = keras.Model(
      encoder.input,
      {name: encoder.get_layer(name).output
       for name in resnet_lib.ENDPOINTS})(np.zeros((2, 64, 64, 3), "float32"))
  expansion = 1 if depth < 50 else 4
  # Stride 2 stem + max-pool, then strides 1, 2, 2, 2.
  assert features["initial_conv"].shape == (2, 32, 32, 4)
  assert features["initial_max_pool"].shape == (2, 16, 16, 4)
  for index, side in enumerate((16, 8, 4, 2)):
    assert features[f"block_group{index + 1}"].shape == (
        2, side, side, 4 * 2**index * expansion)
  assert features["final_avg_pool"].shape == (2, 32 * expansion)
  np.testing.assert_allclose(
      features["final_avg_pool"],
      np.mean(features["block_group4"], axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_cifar_stem_keeps_resolution_and_odd_sizes_work():
  encoder = resnet_lib.resnet(18, width_multiplier=0.25, cifar_stem=True)
  probe = keras.Model(encoder.input,
                      [encoder.get_layer("initial_max_pool").output,
                       encoder.output])
  stem, pooled = probe(np.zeros((3, 33, 33, 3), "float32"))
  assert stem.shape == (3, 33, 33, 16)
  assert pooled.shape == (3, 128)


def test_last_batch_norm_of_each_block_starts_at_zero_gamma():
  encoder = resnet_lib.resnet(50, width_multiplier=0.125)
  gammas = {v.path: v.numpy() for v in encoder.weights
            if v.path.endswith("gamma")}
  last = [p for p in gammas if "/bn_3/" in p]
  assert len(last) == 16  # 3 + 4 + 6 + 3 blocks
  assert all(np.all(gammas[p] == 0) for p in last)
  assert all(np.all(gammas[p] == 1) for p in gammas if "/bn_1/" in p)
  # With zero-gamma residual branches a block starts as relu(shortcut): the
  # branch convolutions cannot change the output at initialisation, in
  # either BatchNorm mode, while the shortcut's can.
  x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")

  def outputs():
    # Training mode updates the moving statistics: put them back after.
    saved = [v.numpy() for v in encoder.non_trainable_weights]
    result = [encoder(x, training=t).numpy() for t in (False, True)]
    for variable, value in zip(encoder.non_trainable_weights, saved):
      variable.assign(value)
    return result

  before = outputs()
  rng = np.random.default_rng(1)

  def perturb(pattern):
    for v in encoder.weights:
      if re.search(pattern, v.path):
        v.assign(v.numpy() + rng.normal(size=v.shape).astype("float32"))

  perturb(r"block_\d+/conv_\d/conv2d/kernel$")
  for got, expected in zip(outputs(), before):
    np.testing.assert_array_equal(got, expected)
  perturb(r"block_0/shortcut_conv/conv2d/kernel$")
  assert not np.allclose(outputs()[0], before[0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(depth=19), "resnet_depth=19"),
    (dict(depth=50, width_multiplier=0.01), "width_multiplier=0.01"),
    (dict(depth=50, sk_ratio=-1.0), "sk_ratio=-1.0"),
    (dict(depth=50, se_ratio=2.0), "se_ratio=2.0"),
])
def test_resnet_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    resnet_lib.resnet(**kwargs)


@pytest.mark.parametrize("mode, layers, selector, out_dim, selected_dim", [
    ("none", 3, 0, 32, 32),
    ("linear", 3, 0, 16, 32),
    ("linear", 3, 1, 16, 16),
    ("nonlinear", 3, 0, 16, 32),
    ("nonlinear", 3, 2, 16, 32),
    ("nonlinear", 2, 2, 16, 16),
])
def test_projection_head_output_shapes(mode, layers, selector, out_dim,
                                       selected_dim):
  head = heads.ProjectionHead(mode, proj_out_dim=16, num_proj_layers=layers,
                              ft_proj_selector=selector)
  projection, selected = head(np.ones((4, 32), "float32"), training=True)
  assert projection.shape == (4, out_dim)
  assert selected.shape == (4, selected_dim)
  expected_layers = {"none": 0, "linear": 1, "nonlinear": layers}[mode]
  assert len(head.linear_layers) == expected_layers


def test_nonlinear_head_structure_matches_v2():
  head = heads.ProjectionHead("nonlinear", proj_out_dim=8, num_proj_layers=3)
  head.build((None, 32))
  paths = sorted(v.path.split("/", 1)[1] for v in head.trainable_weights)
  # Middle layers: dense without bias, BN with gamma and beta. Last: BN
  # without beta.
  assert paths == sorted([
      "nl_0/dense/kernel", "nl_0/bn/batch_normalization/gamma",
      "nl_0/bn/batch_normalization/beta",
      "nl_1/dense/kernel", "nl_1/bn/batch_normalization/gamma",
      "nl_1/bn/batch_normalization/beta",
      "nl_2/dense/kernel", "nl_2/bn/batch_normalization/gamma",
  ])
  # The middle layers end in ReLU, the last does not.
  x = np.random.default_rng(0).normal(size=(64, 32)).astype("float32")
  projection, _ = head(x, training=True)
  assert np.min(projection) < 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(proj_head_mode="mlp"), "proj_head_mode='mlp'"),
    (dict(proj_head_mode="nonlinear", num_proj_layers=2, ft_proj_selector=3),
     "ft_proj_selector=3"),
    (dict(proj_out_dim=0), "proj_out_dim=0"),
])
def test_projection_head_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    heads.ProjectionHead(**kwargs)


def test_supervised_head_zero_init_and_shape():
  head = heads.SupervisedHead(7, zero_init=True)
  logits = head(np.ones((3, 5), "float32"))
  assert logits.shape == (3, 7)
  assert np.all(logits.numpy() == 0)
  assert all("head_supervised" in v.path for v in head.weights)


def tiny_config(**overrides):
  values = dict(resnet_depth=18, width_multiplier=0.125, proj_out_dim=16,
                global_bn=True)
  values.update(overrides)
  return config_lib.ModelConfig(**values)


def tiny_model(train_mode="pretrain", with_head=False, model_config=None,
               optimizer_name="lars", weight_decay=1e-4):
  return simclr.build_simclr_model(
      model_config or tiny_config(), image_size=16, num_classes=4,
      train_mode=train_mode, with_supervised_head=with_head,
      temperature=0.5, weight_decay=weight_decay,
      optimizer_name=optimizer_name)


def fixed_batch(batch=8, views=2, size=16, classes=4, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(batch, size, size, 3 * views)).astype("float32")
  labels = np.eye(classes, dtype="float32")[rng.integers(0, classes, batch)]
  return images, labels


def test_model_splits_views_onto_the_batch_axis():
  model = tiny_model(with_head=True)
  images, _ = fixed_batch()
  outputs = model(images, training=False)
  assert outputs[simclr.PROJ_HEAD_OUTPUT].shape == (16, 16)
  assert outputs[simclr.LOGITS_SUP].shape == (16, 4)
  # The first half of the batch axis is view 1.
  view1 = model.encoder(images[..., :3], training=False)
  np.testing.assert_allclose(outputs[simclr.FINAL_AVG_POOL][:8], view1,
                             rtol=1e-5, atol=1e-6)


def test_pretraining_rejects_a_single_view_batch():
  model = tiny_model()
  model.compile(optimizer=optimizers.LARS(0.1))
  images, labels = fixed_batch(views=1)
  with pytest.raises(ValueError, match="two views"):
    model.train_on_batch(images, labels)


def test_contrastive_loss_falls_over_30_fit_steps_on_a_fixed_batch():
  model = tiny_model(with_head=True)
  model.compile(optimizer=optimizers.LARS(
      0.5, weight_decay=1e-4,
      exclude_from_weight_decay=list(
          optimizers.LARS_EXCLUDE_FROM_WEIGHT_DECAY)))
  images, labels = fixed_batch(batch=16)
  dataset = tf.data.Dataset.from_tensors((images, labels)).repeat(30)
  history = model.fit(dataset, epochs=1, verbose=0,
                      callbacks=[_PerBatchLoss()])
  losses = history.model.batch_losses
  assert len(losses) == 30
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
  for name in ("contrast_loss", "contrast_acc", "contrast_entropy",
               "supervised_loss", "supervised_acc", "weight_decay",
               "total_loss", "grad_norm"):
    assert name in history.history, sorted(history.history)
  # The logged total is the sum of its logged parts (nothing folded in).
  logged = {name: history.history[name][-1] for name in history.history}
  np.testing.assert_allclose(
      logged["total_loss"], logged["contrast_loss"] +
      logged["supervised_loss"] + logged["weight_decay"], rtol=1e-6)
  assert np.isfinite(logged["grad_norm"]) and logged["grad_norm"] > 0


class _PerBatchLoss(keras.callbacks.Callback):

  def on_train_begin(self, logs=None):
    self.model.batch_losses = []

  def on_train_batch_end(self, batch, logs=None):
    # Logs are running means over the epoch; recover each step's value.
    seen = len(self.model.batch_losses)
    running = float(logs["contrast_loss"])
    previous_sum = sum(self.model.batch_losses)
    self.model.batch_losses.append(running * (seen + 1) - previous_sum)


def _fit_one_step(model, images, labels):
  model.compile(optimizer=optimizers.LARS(
      1.0, weight_decay=1e-3,
      exclude_from_weight_decay=list(
          optimizers.LARS_EXCLUDE_FROM_WEIGHT_DECAY)))
  history = model.fit(tf.data.Dataset.from_tensors((images, labels)),
                      epochs=1, verbose=0)
  return history.history, [v.numpy() for v in model.weights]


@pytest.mark.parametrize("train_mode", ["pretrain", "finetune"])
def test_two_replica_fit_step_equals_one_replica(two_replica_strategy,
                                                 train_mode):
  images, labels = fixed_batch(batch=8, views=2 if train_mode == "pretrain"
                               else 1)
  single = tiny_model(train_mode, with_head=True)
  initial = [v.numpy() for v in single.weights]
  logs_1, weights_1 = _fit_one_step(single, images, labels)

  with two_replica_strategy.scope():
    mirrored = tiny_model(train_mode, with_head=True)
    for variable, value in zip(mirrored.weights, initial):
      variable.assign(value)
    logs_2, weights_2 = _fit_one_step(mirrored, images, labels)

  for name in logs_1:
    np.testing.assert_allclose(logs_2[name], logs_1[name], rtol=1e-4,
                               atol=1e-6, err_msg=name)
  moved = 0
  for variable, before, after_1, after_2 in zip(single.weights, initial,
                                                weights_1, weights_2):
    np.testing.assert_allclose(after_2, after_1, rtol=2e-4, atol=1e-6,
                               err_msg=variable.path)
    moved += not np.allclose(before, after_1)
  assert moved > len(initial) // 2  # the step really changed the model


def test_linear_eval_freezes_encoder_and_trains_only_the_head():
  model = tiny_model("linear_eval", with_head=True, optimizer_name="momentum",
                     model_config=tiny_config(ft_proj_selector=1))
  trainable = {v.path for v in model.trainable_variables}
  assert trainable == {"simclr/head_supervised/linear_layer/dense/kernel",
                       "simclr/head_supervised/linear_layer/dense/bias"}
  encoder_before = [v.numpy() for v in model.encoder.weights]
  model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
  images, labels = fixed_batch(views=1)
  model.fit(images, labels, batch_size=8, epochs=2, verbose=0)
  # BatchNorm ran in inference mode: moving statistics did not move either.
  for variable, before in zip(model.encoder.weights, encoder_before):
    np.testing.assert_array_equal(variable.numpy(), before,
                                  err_msg=variable.path)


@pytest.mark.parametrize("block, first_trainable", [
    (-1, "stem_conv"), (0, "block_group1"), (2, "block_group3"),
    (4, None)])
def test_fine_tune_after_block_freezes_through_that_block(block,
                                                          first_trainable):
  model = tiny_model("finetune", with_head=True,
                     model_config=tiny_config(fine_tune_after_block=block))
  trainable_layers = [layer.name for layer in model.encoder.layers
                      if layer.trainable_weights]
  if first_trainable is None:
    assert trainable_layers == []
  else:
    assert trainable_layers[0] == first_trainable
  assert model.supervised_head.trainable_weights


def test_evaluate_reports_top_1_and_top_5():
  model = tiny_model("finetune", with_head=True, optimizer_name="momentum",
                     model_config=tiny_config(zero_init_logits_layer=True))
  model.compile(optimizer=keras.optimizers.SGD(0.1))
  images, _ = fixed_batch(batch=12, views=1)
  labels = np.eye(4, dtype="float32")[[0, 1, 2, 3, 0, 0, 1, 2, 3, 3, 3, 3]]
  results = model.evaluate(images, labels, batch_size=4, verbose=0,
                           return_dict=True)
  # A zero-initialised head gives equal logits: argmax picks class 0 (3 of
  # 12 labels), and with 4 classes top-5 is always right.
  assert results["label_top_1_accuracy"] == pytest.approx(3 / 12)
  assert results["label_top_5_accuracy"] == pytest.approx(1.0)
  assert results["supervised_loss"] == pytest.approx(np.log(4), rel=1e-5)


def test_eval_metrics_leave_out_examples_of_weight_zero():
  # The JAX path's evaluation weighs stand-ins for unreadable files 0.
  model = tiny_model("finetune", with_head=True, optimizer_name="momentum")
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(6, 4)).astype("float32")
  labels = np.eye(4, dtype="float32")[[0, 1, 2, 3, 1, 2]]
  weights = np.array([1, 0, 1, 1, 0, 1], "float32")
  loss = model._update_eval_metrics(labels, logits, weights)
  kept = weights > 0
  shifted = logits - logits.max(1, keepdims=True)
  per_example = -(shifted - np.log(np.exp(shifted).sum(1, keepdims=True)))[
      np.arange(6), labels.argmax(1)]
  np.testing.assert_allclose(float(loss), per_example[kept].mean(),
                             rtol=1e-5)
  results = {m.name: float(m.result()) for m in (
      model._eval_loss, model._top_1, model._top_5)}
  assert results[simclr.EVAL_TOP_1] == pytest.approx(
      np.mean(logits.argmax(1)[kept] == labels.argmax(1)[kept]))
  assert results[simclr.SUPERVISED_LOSS] == pytest.approx(
      per_example[kept].mean(), rel=1e-5)


def test_model_config_round_trip():
  model = tiny_model(with_head=True)
  clone = simclr.SimCLRModel.from_config(model.get_config())
  clone(np.zeros((1, 16, 16, 6), "float32"))
  # Deserialised heads are built outside the model's name scope, so compare
  # paths without the model prefix.
  def strip(path):
    return path.removeprefix("simclr/")
  assert ([(strip(v.path), v.shape) for v in clone.weights] ==
          [(strip(v.path), v.shape) for v in model.weights])
  # Every constructor argument comes back, and the clone computes the same
  # function once given the same weights.
  for name in ("train_mode", "temperature", "hidden_norm", "weight_decay",
               "optimizer_name"):
    assert getattr(clone, name) == getattr(model, name), name
  assert clone.projection_head.get_config() == \
      model.projection_head.get_config()
  assert clone.supervised_head.get_config() == \
      model.supervised_head.get_config()
  for source, target in zip(model.weights, clone.weights):
    target.assign(source)
  images = np.random.default_rng(2).uniform(
      size=(3, 16, 16, 6)).astype("float32")
  got, expected = clone(images), model(images)
  for key in expected:
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-5,
                               atol=1e-6, err_msg=key)


def test_checkpoint_restores_the_encoder_through_the_model_graph(tmp_path):
  """Variables must be reachable through the model, not only through the
  optimizer's variable list, or loading a pretrained encoder (without the
  optimizer) silently keeps random weights."""
  model = tiny_model(with_head=True,
                     model_config=tiny_config(se_ratio=0.25, sk_ratio=0.0625))
  model.compile(optimizer=optimizers.LARS(0.5))
  images, labels = fixed_batch()
  model.fit(tf.data.Dataset.from_tensors((images, labels)), verbose=0)
  path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(
      str(tmp_path / "ckpt"))

  fresh = tiny_model("finetune", with_head=True,
                     model_config=tiny_config(se_ratio=0.25, sk_ratio=0.0625))
  status = tf.train.Checkpoint(model=tf.train.Checkpoint(
      encoder=fresh.encoder, projection_head=fresh.projection_head)).restore(
          path)
  status.expect_partial().assert_existing_objects_matched()
  pairs = list(zip(model.encoder.weights + model.projection_head.weights,
                   fresh.encoder.weights + fresh.projection_head.weights))
  assert len(pairs) == len(model.encoder.weights) + len(
      model.projection_head.weights)
  for trained, restored in pairs:
    np.testing.assert_array_equal(restored.numpy(), trained.numpy(),
                                  err_msg=trained.path)


def test_supervised_head_feature_norm_is_scale_invariant_and_linear():
  plain = heads.SupervisedHead(5)
  normed = heads.SupervisedHead(5, feature_norm=True)
  x = np.random.default_rng(2).normal(size=(64, 12)).astype("float32")
  plain.build(x.shape)
  normed.build(x.shape)
  assert len(normed.trainable_weights) == len(plain.trainable_weights) == 2
  # Training mode normalises with batch statistics: scale drops out.
  np.testing.assert_allclose(normed(20.0 * x, training=True),
                             normed(x, training=True), rtol=1e-4, atol=1e-5)
  # Inference is an affine map of the features: linear in them.
  a, b = x[:1], x[1:2]
  mid = normed(0.5 * (a + b), training=False)
  np.testing.assert_allclose(
      mid, 0.5 * (normed(a, training=False) + normed(b, training=False)),
      rtol=1e-5, atol=1e-6)


def test_ft_proj_selector_minus_one_is_the_last_layer():
  # The authors' flag: "-1 means the final layer", i.e. hiddens_list[-1],
  # the projection output itself.
  head = heads.ProjectionHead(proj_head_mode="nonlinear", proj_out_dim=8,
                              num_proj_layers=3, ft_proj_selector=-1)
  x = np.random.default_rng(0).normal(size=(4, 16)).astype("float32")
  projection, selected = head(x, training=False)
  np.testing.assert_array_equal(selected, projection)
  assert head.get_config()["ft_proj_selector"] == -1
  assert head.compute_output_shape((4, 16))[1] == (4, 8)


# Run in a child process: the kernel this guards against corrupts the heap,
# which would take the whole test session down rather than fail one test.
_FEW_CHANNEL_STRIDED_1X1_PROGRAM = r"""
import numpy as np
import tensorflow as tf
from simclr_tf.models import layers as layers_lib
from simclr_tf.models import resnet_encoder as resnet_lib

rng = np.random.default_rng(0)
x = rng.normal(size=(4, 56, 56, 8)).astype("float32")
dy = rng.normal(size=(4, 28, 28, 16)).astype("float32")
conv = layers_lib.Conv2DFixedPadding(16, 1, 2)
conv.build(x.shape)
assert conv.subsample
kernel = conv.conv.kernel.numpy()[0, 0]
with tf.GradientTape() as tape:
  y = conv(x)
  loss = tf.reduce_sum(y * dy)
(grad,) = tape.gradient(loss, conv.trainable_weights)
sampled = x[:, ::2, ::2, :]
np.testing.assert_allclose(y, sampled @ kernel, rtol=1e-4, atol=1e-4)
np.testing.assert_allclose(grad.numpy()[0, 0],
                           np.einsum("bhwc,bhwd->cd", sampled, dy),
                           rtol=1e-4, atol=1e-3)

encoder = resnet_lib.resnet(18, width_multiplier=0.125)
images = tf.random.uniform([2, 224, 224, 3])
@tf.function
def step(images):
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(encoder(images, training=True))
  return tape.gradient(loss, encoder.trainable_weights)
for _ in range(2):
  step(images)
print("trained")
"""


def test_a_strided_1x1_convolution_on_few_channels_is_exact_and_trains():
  # ResNet-18 at width 1/8 and 224 px used to die in its first step inside
  # oneDNN's filter gradient (see STRIDED_1X1_MIN_CHANNELS).
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1", TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
      [sys.executable, "-c", _FEW_CHANNEL_STRIDED_1X1_PROGRAM], env=env,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split()[-1] == "trained"


def test_a_strided_1x1_convolution_on_many_channels_keeps_the_strided_kernel():
  x = np.random.default_rng(1).normal(size=(2, 9, 9, 16)).astype("float32")
  conv = layers_lib.Conv2DFixedPadding(8, 1, 2)
  conv.build(x.shape)
  assert not conv.subsample
  np.testing.assert_allclose(
      conv(x), tf.nn.conv2d(x, conv.conv.kernel, 2, "VALID"),
      rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("side", [9, 10])
def test_a_subsampled_1x1_convolution_equals_tensorflows_strided_one(side):
  # Small enough for the strided kernel to be safe as the reference.
  x = np.random.default_rng(2).normal(size=(2, side, side, 8)).astype(
      "float32")
  conv = layers_lib.Conv2DFixedPadding(16, 1, 2)
  conv.build(x.shape)
  assert conv.subsample
  reference = tf.nn.conv2d(x, conv.conv.kernel, 2, "VALID")
  assert conv.compute_output_shape(x.shape) == tuple(reference.shape)
  np.testing.assert_allclose(conv(x), reference, rtol=1e-5, atol=1e-5)
