"""The built-in synthetic_shapes dataset: offline, deterministic, fair."""

import numpy as np
import pytest

from simclr_tf.config import AugmentConfig
from simclr_tf.config import DataConfig
from simclr_tf.data import build_input_fn
from simclr_tf.data import get_dataset_info
from simclr_tf.data import registry
from simclr_tf.data import shapes_render
from simclr_tf.data import synthetic_shapes


def _config(data_dir, **kwargs):
  values = dict(dataset="synthetic_shapes", data_dir=str(data_dir),
                image_size=16, synthetic_train_examples=60,
                synthetic_test_examples=20, synthetic_seed=3)
  values.update(kwargs)
  return DataConfig(**values)


def _read_all(data_dir, split):
  # training=False reads eval_split; point it at the split wanted.
  config = _config(data_dir, eval_split=split)
  ds = build_input_fn(config, AugmentConfig(), training=False, num_views=1,
                      global_batch_size=100)(None)
  images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
  return np.concatenate(images), np.concatenate(labels)


def test_render_is_deterministic_and_balanced():
  a, la = shapes_render.render_shapes(300, 16, seed=5)
  b, lb = shapes_render.render_shapes(300, 16, seed=5)
  c, _ = shapes_render.render_shapes(300, 16, seed=6)
  assert a.dtype == np.uint8 and a.shape == (300, 16, 16, 3)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(la, lb)
  assert (a != c).mean() > 0.5
  counts = np.bincount(la, minlength=shapes_render.NUM_CLASSES)
  assert counts.max() - counts.min() <= 1 and counts.min() == 30
  assert shapes_render.NUM_CLASSES >= 10


def test_colour_carries_no_label_information():
  images, labels = shapes_render.render_shapes(3000, 16, seed=0)
  mean_rgb = images.reshape(len(images), -1, 3).mean(axis=1) / 255.0
  per_class = np.stack([mean_rgb[labels == c].mean(axis=0)
                        for c in range(shapes_render.NUM_CLASSES)])
  # 300 images per class; a class mean colour has a standard error of about
  # 0.2 / sqrt(300) ~ 0.012. Shapes differ in area, so allow a bit more.
  assert np.abs(per_class - mean_rgb.mean(axis=0)).max() < 0.06
  # The foreground covers a real part of the image (40-90% of the side).
  assert images.std(axis=(1, 2)).mean() > 20


def test_raw_pixels_are_a_poor_linear_feature():
  train, train_labels = shapes_render.render_shapes(3000, 16, seed=0)
  test, test_labels = shapes_render.render_shapes(1000, 16, seed=0, stream=1)
  def features(x):
    x = x.reshape(len(x), -1).astype(np.float64) / 255.0
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)
  x, y = features(train), np.eye(10)[train_labels]
  # Ridge regression to one-hot targets: a linear classifier in closed form.
  weights = np.linalg.solve(x.T @ x + 10.0 * np.eye(x.shape[1]), x.T @ y)
  accuracy = (np.argmax(features(test) @ weights, axis=1) ==
              test_labels).mean()
  assert accuracy < 0.25, accuracy  # Chance is 0.1.


def test_generates_offline_and_identically(tmp_path):
  first_dir, second_dir = tmp_path / "a", tmp_path / "b"
  registry.clear_caches()
  info = get_dataset_info(_config(first_dir))
  assert info.num_classes == 10
  assert info.num_train_examples == 60 and info.num_eval_examples == 20
  assert info.image_shape == (16, 16, 3) and info.train_has_labels
  name = synthetic_shapes.config_name(16, 60, 20, 3)
  assert (first_dir / "synthetic_shapes" / name / "1.0.0").is_dir()
  registry.clear_caches()
  get_dataset_info(_config(second_dir))
  for split in ("train", "test"):
    a_images, a_labels = _read_all(first_dir, split)
    registry.clear_caches()
    b_images, b_labels = _read_all(second_dir, split)
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_labels, b_labels)
  # The stored images are exactly the renderer's.
  rendered, labels = shapes_render.render_shapes(20, 16, seed=3, stream=1)
  images, one_hot = _read_all(first_dir, "test")
  order = np.lexsort(images.reshape(20, -1).T)
  ref_order = np.lexsort((rendered / 255.0).reshape(20, -1).T)
  np.testing.assert_allclose(images[order], rendered[ref_order] / 255.0,
                             atol=1e-6)
  np.testing.assert_array_equal(one_hot[order].argmax(1), labels[ref_order])


def test_other_settings_do_not_collide(tmp_path):
  registry.clear_caches()
  info = get_dataset_info(_config(tmp_path, synthetic_train_examples=30))
  assert info.num_train_examples == 30
  registry.clear_caches()
  assert get_dataset_info(_config(tmp_path)).num_train_examples == 60
  configs = [p.name for p in (tmp_path / "synthetic_shapes").iterdir()
             if p.name.startswith("size")]
  assert sorted(configs) == [synthetic_shapes.config_name(16, n, 20, 3)
                             for n in (30, 60)]


def test_a_worker_that_waited_on_another_reads_its_splits(tmp_path):
  # A worker's builder made while another worker was still generating, and
  # checked once that worker's data had landed: tfds reads the DatasetInfo
  # only when a builder is made, so that builder has no splits.
  from simclr_tf.data import tfds_prepare
  config = synthetic_shapes.make_config(8, 6, 4, 0)
  def make_builder():
    return synthetic_shapes.SyntheticShapes(config=config,
                                            data_dir=str(tmp_path))
  made = []
  def make_builder_while_another_worker_generates():
    made.append(make_builder())
    if len(made) == 1:
      make_builder().download_and_prepare()  # The other worker.
    return made[-1]
  builder = tfds_prepare.prepare_once(
      make_builder_while_another_worker_generates, synthetic_shapes.NAME)
  assert made[0].is_prepared() and not made[0].info.splits  # The race.
  assert builder.info.splits["train"].num_examples == 6
  assert builder.info.splits["test"].num_examples == 4


def test_pretraining_batches(tmp_path):
  registry.clear_caches()
  config = _config(tmp_path)
  ds = build_input_fn(config, AugmentConfig(color_jitter_strength=0.5,
                                            use_blur=False),
                      training=True, num_views=2, global_batch_size=16)(None)
  images, labels = next(iter(ds))
  assert images.shape == (16, 16, 16, 6) and labels.shape == (16, 10)
  assert float(np.abs(images[..., :3] - images[..., 3:]).mean()) > 0.02


def test_bad_size_is_rejected():
  with pytest.raises(ValueError, match="Received: size=4"):
    shapes_render.render_shapes(10, 4, seed=0)
