"""The train function: on-device augmentation, XLA, several steps per call.

Correctness only; speed is measured by tools/benchmark.py.
"""

import dataclasses
import math
import types

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf.models import train_loop
from simclr_tf.training import tf_trainer as training
from simclr_tf.data import build_input_fn
from simclr_tf.data import registry

SIZE = 32
BATCH = 64
CALLS = 24  # 1536 images, 3072 views per path
SIGMAS = 5.0


class ViewRecorder:
  """Stands in for the model: its train step keeps the views it was given.

  `train_loop.make_train_function` needs only these attributes, so the views
  recorded are exactly what a `SimCLRModel.train_step` would see.
  """

  def __init__(self, augmentation, channels):
    self.distribute_strategy = tf.distribute.get_strategy()
    self.stop_at_step = None
    self.train_augmentation = augmentation
    self.views = tf.Variable(tf.zeros((BATCH, SIZE, SIZE, channels)))
    # The step the on-device draws are seeded with, counted as an
    # optimizer would.
    self.optimizer = types.SimpleNamespace(
        iterations=tf.Variable(0, dtype=tf.int64))

  def train_step(self, data):
    self.views.assign(data[0])
    self.optimizer.iterations.assign_add(1)
    return {}

  def metric_results(self):
    return {}


def _experiment(root, augment_config, train_mode="pretrain"):
  return config_lib.ExperimentConfig(
      data=config_lib.DataConfig(
          dataset="image_folder", data_dir=str(root), image_size=SIZE,
          shuffle_buffer=16, cache_dataset=False),
      augment=augment_config,
      run=config_lib.RunConfig(train_mode=train_mode))


def _tf_data_views(config, num_views=2):
  """Views from the tf.data path (per example: uncached variable sizes)."""
  dataset = build_input_fn(config.data, config.augment, training=True,
                           num_views=num_views, global_batch_size=BATCH)(None)
  return np.concatenate([images.numpy() for images, _ in
                         dataset.take(CALLS)])


def _on_device_views(config, jit_compile=False):
  """Views made inside the train step from the on-device pipeline."""
  augment_config = dataclasses.replace(config.augment, on_device=True)
  config = dataclasses.replace(config, augment=augment_config)
  dataset = build_input_fn(config.data, augment_config, training=True,
                           num_views=2, global_batch_size=BATCH)(None)
  assert dataset.element_spec[0].dtype == tf.uint8
  num_views = 2 if config.run.train_mode == "pretrain" else 1
  recorder = ViewRecorder(training.on_device_augmentation(config),
                          3 * num_views)
  train_function = train_loop.make_train_function(recorder, 1, jit_compile)
  iterator = iter(dataset)
  views = []
  for _ in range(CALLS):
    train_function(iterator)
    views.append(recorder.views.numpy())
  return np.concatenate(views)


def _write_image(root, image):
  path = root / "train" / "c0"
  path.mkdir(parents=True)
  tf.io.write_file(str(path / "image.png"), tf.io.encode_png(image))
  registry.clear_caches()


@pytest.fixture
def coordinate_folder(tmp_path):
  """One image: red grows along x, green along y, blue is constant."""
  ramp = np.round(np.linspace(0, 255, SIZE)).astype(np.uint8)
  image = np.zeros((SIZE, SIZE, 3), np.uint8)
  image[..., 0] = ramp[None, :]
  image[..., 1] = ramp[:, None]
  image[..., 2] = 128
  _write_image(tmp_path, image)
  return tmp_path


@pytest.fixture
def colorful_folder(tmp_path):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
  # Smooth it a little so crops change the colour statistics gradually.
  image = tf.cast(tf.nn.avg_pool2d(tf.cast(image[None], tf.float32), 3, 1,
                                   "SAME")[0], tf.uint8).numpy()
  _write_image(tmp_path, image)
  return tmp_path


def _split_views(views):
  return np.concatenate([views[..., :3], views[..., 3:]])


def _mean_difference_ok(a, b):
  """Two sample means agree within SIGMAS standard errors (CLT)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  tolerance = SIGMAS * math.sqrt(a.var() / len(a) + b.var() / len(b))
  return abs(a.mean() - b.mean()) <= tolerance + 1e-9


def _ks_statistic(a, b):
  """Two-sample Kolmogorov-Smirnov statistic: the largest CDF gap."""
  points = np.concatenate([a, b])
  cdf_a = np.searchsorted(np.sort(a), points, side="right") / len(a)
  cdf_b = np.searchsorted(np.sort(b), points, side="right") / len(b)
  return np.abs(cdf_a - cdf_b).max()


def _same_distribution(a, b, alpha=1e-6):
  """KS test: the samples could come from one distribution (at alpha)."""
  critical = math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt(
      (len(a) + len(b)) / (len(a) * len(b)))
  return _ks_statistic(a, b) < critical


def _geometry(views):
  """Crop area fraction, aspect ratio and flip of coordinate-image views."""
  red, green = views[..., 0], views[..., 1]
  width = (red.max(axis=(1, 2)) - red.min(axis=(1, 2))) * (SIZE - 1) + 1
  height = (green.max(axis=(1, 2)) - green.min(axis=(1, 2))) * (SIZE - 1) + 1
  flipped = red[:, :, 0].mean(axis=1) > red[:, :, -1].mean(axis=1)
  return {"area": width * height / SIZE ** 2, "aspect": width / height,
          "flipped": flipped}


def _authors_crop_views(image, num):
  """The reference: crops as the authors' data_util.py takes them.

  `tf.image.sample_distorted_bounding_box` with their arguments (the whole
  image as the box), the crop, then a bicubic resize, all TensorFlow's own
  ops: nothing of ours, so the views' geometry is measured the same way.
  """
  image = tf.image.convert_image_dtype(image, tf.float32)

  def crop(index):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0., 0., 1., 1.]]]),
        seed=tf.stack([index, tf.constant(7, tf.int64)]),
        min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0), max_attempts=100,
        use_image_if_no_bounding_boxes=True)
    window = tf.slice(image, begin, size)
    return tf.clip_by_value(tf.image.resize(window, (SIZE, SIZE),
                                            method="bicubic"), 0.0, 1.0)

  return np.stack(list(tf.data.Dataset.range(num).map(crop).as_numpy_iterator()))


def test_crops_on_both_paths_match_the_authors_op_and_flip_half(
    coordinate_folder):
  augment_config = config_lib.AugmentConfig(
      color_jitter_probability=0.0, grayscale_probability=0.0,
      use_blur=False)
  config = _experiment(coordinate_folder, augment_config)
  paths = {"per_example": _split_views(_tf_data_views(config)),
           "on_device": _split_views(_on_device_views(config))}
  stats = [_geometry(views) for views in paths.values()]
  assert len(stats[0]["area"]) == len(stats[1]["area"]) == 2 * BATCH * CALLS
  image = tf.io.decode_png(tf.io.read_file(str(
      coordinate_folder / "train" / "c0" / "image.png")))
  reference = _geometry(_authors_crop_views(image, 2 * BATCH * CALLS))
  for path in stats:
    for name in ("area", "aspect"):
      assert _same_distribution(path[name], reference[name]), name
  assert _mean_difference_ok(stats[0]["flipped"], stats[1]["flipped"])
  for path in stats:
    flipped = path["flipped"]
    assert abs(flipped.mean() - 0.5) < SIGMAS * math.sqrt(0.25 / len(flipped))
  # The two views of an image are drawn independently.
  views = paths["on_device"]
  half = len(views) // 2
  assert np.abs(views[:half] - views[half:]).max(axis=(1, 2, 3)).min() > 0


def _colour_statistics(views, original):
  """Per view: brightness, contrast, saturation, sharpness; changed; gray."""
  channel_range = views.max(axis=-1) - views.min(axis=-1)
  return {
      "brightness": views.mean(axis=(1, 2, 3)),
      "contrast": views.std(axis=(1, 2, 3)),
      "saturation": channel_range.mean(axis=(1, 2)),
      "sharpness": np.abs(np.diff(views, axis=2)).mean(axis=(1, 2, 3)),
      "changed": np.abs(views - original).max(axis=(1, 2, 3)) > 1e-3,
      "gray": channel_range.max(axis=(1, 2)) < 1e-6,
  }


def test_on_device_colour_and_blur_match_the_per_example_path(
    colorful_folder):
  # The crop keeps the whole image, so views differ from it by colour
  # jitter, grayscale and blur only, and each shows in the statistics.
  augment_config = config_lib.AugmentConfig(
      crop_area_range=(1.0, 1.0), crop_aspect_ratio_range=(1.0, 1.0),
      flip_probability=0.0, color_jitter_strength=0.5, use_blur=True,
      blur_kernel_fraction=0.2)
  config = _experiment(colorful_folder, augment_config)
  original = tf.io.decode_png(tf.io.read_file(str(
      colorful_folder / "train" / "c0" / "image.png"))).numpy() / 255
  stats = [_colour_statistics(_split_views(views), original)
           for views in (_tf_data_views(config), _on_device_views(config))]
  for name in ("brightness", "contrast", "saturation", "sharpness"):
    assert _same_distribution(stats[0][name], stats[1][name]), name
  # Unchanged only without jitter, grayscale and blur: 0.2 * 0.8 * 0.5.
  for name, rate in (("changed", 0.92), ("gray", 0.2)):
    for path in stats:
      flags = path[name]
      tolerance = SIGMAS * math.sqrt(rate * (1 - rate) / len(flags))
      assert abs(flags.mean() - rate) < tolerance, name
    assert _mean_difference_ok(stats[0][name], stats[1][name]), name


def test_fine_tuning_on_device_crops_and_flips_only(colorful_folder):
  augment_config = config_lib.AugmentConfig(color_jitter_strength=0.5)
  config = _experiment(colorful_folder, augment_config, train_mode="finetune")
  augmentation = training.on_device_augmentation(config)
  image = tf.io.decode_png(tf.io.read_file(str(
      colorful_folder / "train" / "c0" / "image.png")))
  views = augmentation(tf.repeat(image[None], 256, axis=0)).numpy()
  assert views.shape == (256, SIZE, SIZE, 3)
  # No colour distortion: the mean colour of a view stays near the image's
  # (a crop moves it a little), and nothing is gray.
  colour = image.numpy().reshape(-1, 3).mean(axis=0) / 255
  assert np.abs(views.mean(axis=(1, 2)) - colour).max() < 0.15
  assert not np.any(np.abs(views[..., 0] - views[..., 1]).max(axis=(1, 2))
                    < 1e-6)


class ReplicaViewRecorder(ViewRecorder):
  """A `ViewRecorder` keeping each replica's views apart (sync-on-read)."""

  def __init__(self, augmentation, channels, batch):
    super().__init__(augmentation, channels)
    self.views = tf.Variable(
        tf.zeros((batch, SIZE, SIZE, channels)),
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.SUM)
    self.optimizer = types.SimpleNamespace(iterations=tf.Variable(
        0, dtype=tf.int64, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA))

  def train_step(self, data):
    # The test advances the step from the host between calls.
    self.views.assign(data[0])
    return {}


def test_on_device_draws_follow_seed_replica_and_step(colorful_folder,
                                                      two_replica_strategy):
  # Every replica gets the same crops at every step, so only the seeds can
  # tell their views apart.
  image = tf.io.decode_png(tf.io.read_file(str(
      colorful_folder / "train" / "c0" / "image.png")))
  crops = tf.tile(image[None], [8, 1, 1, 2])
  dataset = tf.data.Dataset.from_tensors((crops, tf.zeros((8, 1)))).repeat()
  config = _experiment(colorful_folder, config_lib.AugmentConfig(
      color_jitter_strength=1.0, use_blur=False))
  augmentation = training.on_device_augmentation(config)
  strategy = two_replica_strategy
  with strategy.scope():
    recorder = ReplicaViewRecorder(augmentation, 6, batch=4)
  train_function = train_loop.make_train_function(recorder, 1, False)
  iterator = iter(strategy.experimental_distribute_dataset(dataset))
  views = []  # [step][replica]
  for step in range(2):
    train_function(iterator)
    recorder.optimizer.iterations.assign_add(1)
    views.append([v.numpy() for v in
                  strategy.experimental_local_results(recorder.views)])
  assert not np.allclose(views[0][0], views[0][1])  # replicas
  assert not np.allclose(views[0][0], views[1][0])  # steps
  # Stateless: another process state (global seed) gives the same draws for
  # the same run seed, replica and step, as a restarted worker would.
  tf.random.set_seed(98765)
  for step in range(2):
    for replica in range(2):
      again = augmentation(crops[:4], replica, step).numpy()
      np.testing.assert_array_equal(again, views[step][replica])
  other_seed = training.on_device_augmentation(dataclasses.replace(
      config, run=dataclasses.replace(config.run, seed=1)))
  assert not np.allclose(other_seed(crops[:4], 0, 0).numpy(), views[0][0])


def _tiny_model():
  """A SimCLRModel with a one-convolution encoder (then sync BN, ReLU).

  Everything but the encoder's depth is the real model: heads, NT-Xent with
  cross-replica negatives, the supervised head, LARS; a small graph keeps
  XLA's compile time on CPU to seconds.
  """
  from simclr_tf import optimizers
  from simclr_tf.models import heads
  from simclr_tf.models import layers as layers_lib
  from simclr_tf.models import simclr
  import keras
  inputs = keras.Input((None, None, 3))
  x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False)(inputs)
  x = layers_lib.BatchNormRelu(synchronized=True)(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  encoder = keras.Model(inputs, x, name="encoder")
  model = simclr.SimCLRModel(
      encoder, heads.ProjectionHead(proj_out_dim=8, synchronized=True),
      heads.SupervisedHead(4), temperature=0.5, weight_decay=1e-4)
  model(np.zeros((1, 16, 16, 6), "float32"))
  optimizer = optimizers.LARS(
      0.5, weight_decay=1e-3, exclude_from_weight_decay=list(
          optimizers.LARS_EXCLUDE_FROM_WEIGHT_DECAY))
  return model, optimizer


def _batches(num=4, batch=8):
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(num * batch, 16, 16, 6)).astype("float32")
  labels = np.eye(4, dtype="float32")[rng.integers(0, 4, num * batch)]
  return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)


def _train(initial, steps_per_loop, jit_compile, strategy=None):
  """Weights after the 4 batches, from `initial` weights."""
  strategy = strategy or tf.distribute.get_strategy()
  with strategy.scope():
    model, optimizer = _tiny_model()
    for variable, value in zip(model.weights, initial):
      variable.assign(value)
    model.compile(optimizer, steps_per_loop=steps_per_loop,
                  jit_compile=jit_compile, stop_at_step=4)
    model.build_optimizer_slots()
  model.fit(_batches(), epochs=1, verbose=0)
  assert int(model.optimizer.iterations.numpy()) == 4
  # Paths differ between builds (Keras numbers layer names); order does not.
  return [(v.path, v.numpy()) for v in model.weights]


def test_xla_scope_follows_the_strategy(two_replica_strategy):
  assert train_loop.xla_scope(tf.distribute.get_strategy()) == "step"
  one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
  assert train_loop.xla_scope(one_device) == "step"
  assert train_loop.xla_scope(two_replica_strategy) == "augmentation"


def test_steps_per_loop_and_jit_give_the_plain_weights(two_replica_strategy):
  model, _ = _tiny_model()
  initial = [v.numpy() for v in model.weights]
  plain = _train(initial, 1, False)
  assert any(not np.allclose(value, start) for (_, value), start in
             zip(plain, initial))
  # Each variant's weights against the plain ones, relative to how far the
  # 4 steps moved each variable: XLA reorders float32 sums, which moves the
  # weights by a few 1e-5 of the update here; a wrong update (a missed step,
  # a trust ratio off by a factor) moves them by a large part of it.
  variants = {
      "steps_per_loop": (_train(initial, 2, False), 1e-6),
      "jit": (_train(initial, 4, True), 1e-3),
      "one_device jit": (_train(initial, 2, True, tf.distribute.
                                OneDeviceStrategy("/cpu:0")), 1e-3),
      "2 replicas jit": (_train(initial, 2, True, two_replica_strategy),
                         1e-3),
  }
  for name, (weights, tolerance) in variants.items():
    for (path, value), (_, got), start in zip(plain, weights, initial):
      update = np.abs(value - start).max()
      np.testing.assert_allclose(
          got, value, rtol=0, atol=tolerance * update,
          err_msg=f"{name}: {path} (update {update:.3g})")


def test_jit_compiles_what_the_strategy_allows(two_replica_strategy):
  # tf.py_function cannot be compiled: where XLA compiles the augmentation,
  # an augmentation using it fails; where nothing is compiled, it runs.
  def uncompilable(images, replica_id, step):
    views = tf.py_function(lambda x: tf.cast(x, tf.float32) / 255.0,
                           [images], tf.float32)
    return tf.ensure_shape(tf.concat([views, views], -1), [None, 16, 16, 6])

  images = np.zeros((8, 16, 16, 3), np.uint8)
  labels = np.eye(4, dtype="float32")[np.zeros(8, int)]
  dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
  for strategy in (tf.distribute.get_strategy(), two_replica_strategy):
    for jit_compile in (False, True):
      with strategy.scope():
        model, optimizer = _tiny_model()
        model.compile(optimizer, jit_compile=jit_compile,
                      train_augmentation=uncompilable)
        model.build_optimizer_slots()
      if jit_compile:
        with pytest.raises(tf.errors.OpError):
          model.fit(dataset, steps_per_epoch=1, verbose=0)
      else:
        model.fit(dataset, steps_per_epoch=1, verbose=0)
        assert int(model.optimizer.iterations.numpy()) == 1
