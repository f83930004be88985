"""The per-replica tf.data pipeline: element format, sharding, caching."""

import os

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import AugmentConfig
from simclr_tf.config import DataConfig
from simclr_tf.data import DataError
from simclr_tf.data import build_input_fn
from simclr_tf.data import get_dataset_info
from simclr_tf.data import registry

NUM_IMAGES = 24
NUM_CLASSES = 4
SIZE = 16
# Augmentations that keep a flat image flat, so its colour names it.
FLAT_SAFE = AugmentConfig(color_jitter_probability=0.0,
                          grayscale_probability=0.0, use_blur=False)


@pytest.fixture
def indexed_folder(tmp_path):
  """Image i is flat with red = 10 * i; its class is i % 4."""
  root = tmp_path / "indexed"
  for i in range(NUM_IMAGES):
    class_dir = root / "train" / f"c{i % NUM_CLASSES}"
    class_dir.mkdir(parents=True, exist_ok=True)
    image = np.zeros((20, 20, 3), np.uint8)
    image[..., 0] = 10 * i
    tf.io.write_file(str(class_dir / f"{i:02d}.png"), tf.io.encode_png(image))
  registry.clear_caches()
  return root


def _config(root, **kwargs):
  return DataConfig(dataset="image_folder", data_dir=str(root),
                    train_split="train", eval_split="train", image_size=SIZE,
                    shuffle_buffer=64, **kwargs)


def _indices(images):
  red = np.asarray(images)[..., 0].reshape(len(images), -1)
  assert (red.max(axis=1) - red.min(axis=1) < 1e-3).all(), "not flat"
  return np.round(red[:, 0] * 255 / 10).astype(int)


def _context(pipeline_id, pipelines=2):
  return tf.distribute.InputContext(num_input_pipelines=pipelines,
                                    input_pipeline_id=pipeline_id,
                                    num_replicas_in_sync=pipelines)


def test_training_elements(indexed_folder):
  ds = build_input_fn(_config(indexed_folder), FLAT_SAFE, training=True,
                      num_views=2, global_batch_size=8)(None)
  assert ds.options().deterministic is False
  assert ds.element_spec[0].shape == (8, SIZE, SIZE, 6)
  assert ds.element_spec[1].shape == (8, NUM_CLASSES)
  seen = []
  for images, labels in ds.take(9):  # 72 images: the data repeats.
    assert images.dtype == tf.float32
    view1, view2 = images[..., :3], images[..., 3:]
    index = _indices(view1)
    np.testing.assert_array_equal(index, _indices(view2))
    np.testing.assert_array_equal(labels, tf.one_hot(index % NUM_CLASSES,
                                                     NUM_CLASSES))
    seen.extend(index)
  assert sorted(set(seen)) == list(range(NUM_IMAGES))


def test_eval_is_one_ordered_pass(indexed_folder):
  input_fn = build_input_fn(_config(indexed_folder), AugmentConfig(),
                            training=False, num_views=1, global_batch_size=5)
  ds = input_fn(None)
  assert ds.options().deterministic is True
  passes = []
  for _ in range(2):
    batches = [(x.numpy(), y.numpy()) for x, y in ds]
    assert [len(x) for x, _ in batches] == [5, 5, 5, 5, 4]
    passes.append(np.concatenate([_indices(x) for x, _ in batches]))
  # Folder order: class folders sorted, files sorted within each.
  expected = sorted(range(NUM_IMAGES), key=lambda i: (i % NUM_CLASSES, i))
  np.testing.assert_array_equal(passes[0], expected)
  np.testing.assert_array_equal(passes[0], passes[1])


def test_replica_shards_are_disjoint(indexed_folder):
  config = _config(indexed_folder)
  eval_fn = build_input_fn(config, AugmentConfig(), training=False,
                           num_views=1, global_batch_size=4)
  train_fn = build_input_fn(config, FLAT_SAFE, training=True, num_views=2,
                            global_batch_size=4)
  eval_sets, train_sets = [], []
  for pipeline in (0, 1):
    ds = eval_fn(_context(pipeline))
    ids = np.concatenate([_indices(x) for x, _ in ds])
    assert len(ids) == len(set(ids))
    eval_sets.append(set(ids))
    ds = train_fn(_context(pipeline))
    assert ds.element_spec[0].shape[0] == 2  # Per-replica batch.
    train_sets.append(set(np.concatenate(
        [_indices(x[..., :3]) for x, _ in ds.take(24)])))
  assert not eval_sets[0] & eval_sets[1]
  assert eval_sets[0] | eval_sets[1] == set(range(NUM_IMAGES))
  assert not train_sets[0] & train_sets[1]
  assert train_sets[0] | train_sets[1] == set(range(NUM_IMAGES))


def test_global_batch_must_divide_over_replicas(indexed_folder):
  input_fn = build_input_fn(_config(indexed_folder), AugmentConfig(),
                            training=True, num_views=2, global_batch_size=8)
  context = tf.distribute.InputContext(num_input_pipelines=1,
                                       input_pipeline_id=0,
                                       num_replicas_in_sync=3)
  with pytest.raises(DataError, match="batch size 8 .* 3 replicas"):
    input_fn(context)
  with pytest.raises(DataError, match="num_views=0"):
    build_input_fn(_config(indexed_folder), AugmentConfig(), training=True,
                   num_views=0, global_batch_size=8)


def test_with_mirrored_strategy(indexed_folder, two_replica_strategy):
  input_fn = build_input_fn(_config(indexed_folder), FLAT_SAFE, training=True,
                            num_views=2, global_batch_size=8)
  dist = two_replica_strategy.distribute_datasets_from_function(input_fn)
  images, labels = next(iter(dist))
  per_replica = two_replica_strategy.experimental_local_results(images)
  assert [tuple(x.shape) for x in per_replica] == [(4, SIZE, SIZE, 6)] * 2


@pytest.mark.parametrize("cache", [None, False])
def test_cache_keeps_decoded_images(indexed_folder, cache):
  # Auto caching keeps the decoded images: once an epoch has been read the
  # files are no longer needed. Without the cache they are read every epoch.
  ds = build_input_fn(_config(indexed_folder, cache_dataset=cache), FLAT_SAFE,
                      training=True, num_views=1, global_batch_size=8)(None)
  iterator = iter(ds)
  for _ in range(6):
    next(iterator)
  for path in indexed_folder.glob("train/*/*.png"):
    os.remove(path)
  if cache is None:
    for _ in range(12):
      images, _ = next(iterator)
      assert set(_indices(images[..., :3])) <= set(range(NUM_IMAGES))
  else:
    with pytest.raises(tf.errors.NotFoundError):
      for _ in range(12):
        next(iterator)


def test_on_device_gives_uint8_crops_per_view(indexed_folder):
  config = _config(indexed_folder)
  aug = AugmentConfig(on_device=True)
  ds = build_input_fn(config, aug, training=True, num_views=2,
                      global_batch_size=8)(None)
  images, labels = next(iter(ds))
  assert images.dtype == tf.uint8 and images.shape == (8, SIZE, SIZE, 6)
  index = np.round(images.numpy()[..., 0].mean(axis=(1, 2)) / 10).astype(int)
  assert (images.numpy()[..., 0] == (10 * index)[:, None, None]).all()
  np.testing.assert_array_equal(labels, tf.one_hot(index % NUM_CLASSES,
                                                   NUM_CLASSES))
  # Evaluation is not on device.
  x, _ = next(iter(build_input_fn(config, aug, training=False, num_views=1,
                                  global_batch_size=8)(None)))
  assert x.dtype == tf.float32


def test_label_fraction_in_the_pipeline(indexed_folder):
  config = _config(indexed_folder, label_fraction=0.5, label_seed=1)
  info = get_dataset_info(config)
  assert info.num_train_examples == 12
  ds = build_input_fn(config, FLAT_SAFE, training=True, num_views=1,
                      global_batch_size=4)(None)
  seen = set(np.concatenate([_indices(x) for x, _ in ds.take(30)]))
  assert len(seen) == 12
  np.testing.assert_array_equal(
      np.bincount([i % NUM_CLASSES for i in seen]), [3, 3, 3, 3])
  # The same seed picks the same subset in a new process-level state.
  registry.clear_caches()
  again = set(np.concatenate([_indices(x) for x, _ in build_input_fn(
      config, FLAT_SAFE, training=True, num_views=1,
      global_batch_size=4)(None).take(30)]))
  assert again == seen
  # Evaluation reads the whole eval split.
  eval_ds = build_input_fn(config, FLAT_SAFE, training=False, num_views=1,
                           global_batch_size=4)(None)
  assert sum(len(x) for x, _ in eval_ds) == NUM_IMAGES


def test_uncached_variable_size_uses_per_example_path(indexed_folder):
  odd = np.zeros((30, 18, 3), np.uint8)
  odd[..., 0] = 10 * 5
  tf.io.write_file(str(indexed_folder / "train/c1/odd.png"),
                   tf.io.encode_png(odd))
  config = _config(indexed_folder, cache_dataset=False)
  info = get_dataset_info(config)
  assert info.image_shape is None and info.num_train_examples == 25
  ds = build_input_fn(config, FLAT_SAFE, training=True, num_views=2,
                      global_batch_size=5)(None)
  for images, _ in ds.take(6):
    assert images.shape == (5, SIZE, SIZE, 6)
    _indices(images[..., :3])
