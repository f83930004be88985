"""A resumed run continues the data stream: it neither replays the head of
its epoch order nor redraws its first views.

The reference is an uninterrupted input read from its start: after a resume
at step k the training input must give that input's batches k, k+1, ...
bit for bit (same examples, same crop and distortion draws), and a run cut
into segments must see every example as often as the uninterrupted run.
Order is compared with `tf.data.Options.deterministic = True`; in
production tf.data may swap neighbouring parallel elements, as in any
rerun.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import AugmentConfig
from simclr_tf.config import DataConfig
from simclr_tf.data import build_input_fn
from simclr_tf.data import host_batches as host_data
from simclr_tf.data import registry
from simclr_tf.training import keras_trainer
from simclr_tf.training import tf_trainer
from tests import command_line

NUM_IMAGES = 24
NUM_CLASSES = 4
SIZE = 16
# Crops and flips only: a flat image stays flat, so its colour names it.
FLAT_SAFE = AugmentConfig(color_jitter_probability=0.0,
                          grayscale_probability=0.0, use_blur=False)
# The host's part with --augment_on_device: crops, still uint8.
CROPS_ONLY = AugmentConfig(on_device=True)
# The segments of a run of 15 steps interrupted 5 times.
CUTS = (0, 2, 5, 7, 11, 13, 15)


@pytest.fixture
def indexed_folder(tmp_path):
  """Image i has a flat red = 10 * i (its id) and green and blue ramps (so
  that two crop boxes give different views), of size 20 + i % 3 (the
  any-size path); its class is i % 4."""
  root = tmp_path / "indexed"
  for i in range(NUM_IMAGES):
    class_dir = root / "train" / f"c{i % NUM_CLASSES}"
    class_dir.mkdir(parents=True, exist_ok=True)
    tf.io.write_file(str(class_dir / f"{i:02d}.png"),
                     tf.io.encode_png(_indexed_image(i, 20 + i % 3)))
  registry.clear_caches()
  yield root
  registry.clear_caches()


def _indexed_image(index, height, width=20):
  rows, cols = np.mgrid[0:height, 0:width]
  return np.stack([np.full((height, width), 10 * index), 12 * cols,
                   12 * rows], axis=-1).astype(np.uint8)


def _folder_config(root, **kwargs):
  return DataConfig(dataset="image_folder", data_dir=str(root),
                    train_split="train", eval_split="train", image_size=SIZE,
                    shuffle_buffer=16, **kwargs)


def _batches(input_fn, count, context=None):
  """The first `count` batches, in order, as numpy (images, labels)."""
  options = tf.data.Options()
  options.deterministic = True
  ds = input_fn(context).with_options(options)
  return [(x.numpy(), y.numpy()) for x, y in ds.take(count)]


def _assert_same(got, expected):
  assert len(got) == len(expected)
  for (x, y), (x_ref, y_ref) in zip(got, expected):
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(y, y_ref)


def _indices(images):
  """Example ids of views: red = 10 * id (float [0, 1] or uint8)."""
  images = np.asarray(images, np.float32)
  if images.max() <= 1.0:
    images = images * 255
  red = images[..., 0].reshape(len(images), -1)
  assert (red.max(axis=1) - red.min(axis=1) < 0.5).all(), "not flat"
  return np.round(red[:, 0] / 10).astype(int)


@pytest.fixture
def global_seed_0():
  """The program sets TensorFlow's global seed from --seed (0 here)."""
  tf.random.set_seed(0)
  yield
  tf.random.set_seed(None)


def test_synthetic_resume_continues_the_stream(tmp_path, global_seed_0):
  # The TF trainer's input on the same-size path: cached decoded images,
  # whole-batch crops and the full colour distortion; 24 examples, 3
  # batches of 8 an epoch.
  config = command_line.config_of(command_line.tiny_flags(
      str(tmp_path / "data"), str(tmp_path / "run"), seed=3,
      synthetic_train_examples=NUM_IMAGES, synthetic_test_examples=8,
      train_batch_size=8))
  registry.clear_caches()

  def input_fn(start_step):
    return tf_trainer.training_input_fn(config, start_step=start_step,
                                        num_classes=NUM_CLASSES)

  reference = _batches(input_fn(0), 7)
  resumed = _batches(input_fn(4), 3)  # mid-epoch 1, into epoch 2
  _assert_same(resumed, reference[4:])
  # The defect: the resumed input replayed the fresh run's first batches.
  assert not np.array_equal(resumed[0][0], reference[0][0])
  registry.clear_caches()


def test_image_folder_resume_continues_the_stream(indexed_folder):
  # Any-size path: per-image crops from the file (as uint8 for the device,
  # which keeps the test free of XLA compiles; the distortion's seeds are
  # shared with the same-size path above). One input pipeline feeding 2
  # replicas: 2 batches of 4 per step.
  config = _folder_config(indexed_folder)
  context = tf.distribute.InputContext(num_input_pipelines=1,
                                       input_pipeline_id=0,
                                       num_replicas_in_sync=2)

  def input_fn(start_step):
    return build_input_fn(config, CROPS_ONLY, training=True, num_views=2,
                          global_batch_size=8, seed=5, start_step=start_step)

  reference = _batches(input_fn(0), 14, context)
  resumed = _batches(input_fn(4), 6, context)  # epoch 1, example 8
  _assert_same(resumed, reference[8:])
  assert not np.array_equal(resumed[0][0], reference[0][0])
  # Epochs differ in order: epoch 1 is not epoch 0 again.
  first = np.concatenate([_indices(x[..., :3]) for x, _ in reference[:6]])
  second = np.concatenate([_indices(x[..., :3]) for x, _ in reference[6:12]])
  assert sorted(first) == sorted(second) == list(range(NUM_IMAGES))
  assert list(first) != list(second)


def test_interrupted_run_sees_each_example_as_often(indexed_folder):
  # 15 steps of 8 over 24 images: 5 epochs, each image exactly 5 times.
  # Crops only (as for --augment_on_device), which keep flat images flat.
  config = _folder_config(indexed_folder)

  def seen(start, stop):
    input_fn = build_input_fn(config, CROPS_ONLY, training=True,
                              num_views=2, global_batch_size=8, seed=1,
                              start_step=start)
    batches = _batches(input_fn, stop - start)
    return [(_indices(x[..., :3]), x) for x, _ in batches]

  uninterrupted = seen(0, 15)
  segments = [batch for start, stop in zip(CUTS, CUTS[1:])
              for batch in seen(start, stop)]
  expected = collections.Counter({i: 5 for i in range(NUM_IMAGES)})
  whole = collections.Counter(np.concatenate([i for i, _ in uninterrupted]))
  assert whole == expected
  cut = collections.Counter(np.concatenate([i for i, _ in segments]))
  assert cut == expected
  # And the same views (crops), in the same order.
  for (ids, views), (ids_ref, views_ref) in zip(segments, uninterrupted):
    np.testing.assert_array_equal(ids, ids_ref)
    np.testing.assert_array_equal(views, views_ref)
  # The views tell crop boxes apart: the two views of an image differ.
  views = np.concatenate([v for _, v in uninterrupted])
  assert (views[..., :3] != views[..., 3:]).any(axis=(1, 2, 3)).mean() > 0.5


def test_start_step_is_checked(indexed_folder):
  with pytest.raises(ValueError, match="start_step=-1"):
    build_input_fn(_folder_config(indexed_folder), FLAT_SAFE, training=True,
                   num_views=2, global_batch_size=8, start_step=-1)
  with pytest.raises(ValueError, match="start_step=3"):
    build_input_fn(_folder_config(indexed_folder), FLAT_SAFE,
                   training=False, num_views=1, global_batch_size=8,
                   start_step=3)


def _host_run(split, start, stop, steps_per_epoch, seed=2):
  """The JAX trainer's batches of steps [start, stop): the `Batches` of
  each `fit` segment, read as `fit` reads them."""
  out = []
  for first_epoch, epochs, first_batch, steps in (
      keras_trainer._fit_segments(start, stop, steps_per_epoch)):
    batches = host_data.Batches(
        split, 8, SIZE, FLAT_SAFE, training=True, num_views=2,
        num_classes=NUM_CLASSES, seed=seed, first_epoch=first_epoch,
        first_batch=first_batch, batches_per_epoch=steps)
    for _ in range(epochs):
      out.extend(batches[i] for i in range(len(batches)))
      batches.on_epoch_end()
  return out


@pytest.mark.parametrize("in_memory", [True, False])
def test_jax_host_batches_continue_the_stream(indexed_folder, in_memory):
  paths = sorted((indexed_folder / "train").glob("*/*.png"))
  ids = np.array([int(p.stem) for p in paths])
  labels = ids % NUM_CLASSES
  if in_memory:  # whole images; the device crops them
    images = np.stack([_indexed_image(i, 20) for i in ids])
    split = host_data.Split(labels, NUM_CLASSES, images=images)
  else:  # files: the host crops each view
    split = host_data.Split(labels, NUM_CLASSES,
                            paths=np.array([str(p) for p in paths]))
  uninterrupted = _host_run(split, 0, 15, 3)
  segments = [batch for start, stop in zip(CUTS, CUTS[1:])
              for batch in _host_run(split, start, stop, 3)]
  assert len(segments) == len(uninterrupted) == 15
  for (x, y), (x_ref, y_ref) in zip(segments, uninterrupted):
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(y, y_ref)
  counts = collections.Counter(
      np.concatenate([_indices(x[..., :3]) for x, _ in segments]))
  assert counts == collections.Counter({i: 5 for i in range(NUM_IMAGES)})
