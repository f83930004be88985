"""The tfds path, on a tiny dataset this test builds offline."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_tf.config import AugmentConfig
from simclr_tf.config import DataConfig
from simclr_tf.data import DataError
from simclr_tf.data import build_input_fn
from simclr_tf.data import get_dataset_info
from simclr_tf.data import registry
from simclr_tf.data import tfds_source

SPLIT_SIZES = {"train": 30, "unlabelled": 12, "test": 9}
NUM_CLASSES = 3
# Keeps flat images flat, so each image's red value names it.
FLAT_SAFE = AugmentConfig(color_jitter_probability=0.0,
                          grayscale_probability=0.0, use_blur=False)


class TinyPatches(tfds.core.GeneratorBasedBuilder):
  """Flat 8x8 images; red = 4 * global index; like stl10, an unlabelled split
  with label -1."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    # Not `dataset_info_from_configs`: that looks for metadata files in the
    # defining package, and a test module is not one.
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    start = 0
    splits = {}
    for name, size in SPLIT_SIZES.items():
      splits[name] = self._generate_examples(start, size, name != "unlabelled")
      start += size
    return splits

  def _generate_examples(self, start, size, labeled):
    for index in range(start, start + size):
      image = np.zeros((8, 8, 3), np.uint8)
      image[..., 0] = 4 * index
      yield index, {"image": image,
                    "label": index % NUM_CLASSES if labeled else -1}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  builder = TinyPatches(data_dir=str(data_dir))
  # Two files per split, so 2 input pipelines shard by file.
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, num_shards=2))
  assert len(builder.info.splits["train"].file_instructions) == 2
  tfds_source.tfds_names.cache_clear()
  registry.clear_caches()
  return str(data_dir)


def _config(data_dir, **kwargs):
  values = dict(dataset="tiny_patches", data_dir=data_dir, image_size=8,
                shuffle_buffer=64)
  values.update(kwargs)
  return DataConfig(**values)


def _indices(images):
  return np.round(np.asarray(images)[:, 0, 0, 0] * 255 / 4).astype(int)


def _collect(ds, batches=None):
  ds = ds if batches is None else ds.take(batches)
  out = [(_indices(x[..., :3]), y.numpy()) for x, y in ds]
  return np.concatenate([i for i, _ in out]), np.concatenate([y for _, y in out])


def test_info_and_elements(tiny_dir):
  info = get_dataset_info(_config(tiny_dir))
  assert info.num_classes == NUM_CLASSES
  assert info.num_train_examples == 30 and info.num_eval_examples == 9
  assert info.image_shape == (8, 8, 3) and info.train_has_labels
  ds = build_input_fn(_config(tiny_dir), FLAT_SAFE, training=True,
                      num_views=2, global_batch_size=6)(None)
  x, y = next(iter(ds))
  assert x.shape == (6, 8, 8, 6) and x.dtype == tf.float32
  np.testing.assert_array_equal(y, tf.one_hot(_indices(x) % 3, 3))
  eval_fn = build_input_fn(_config(tiny_dir), AugmentConfig(),
                           training=False, num_views=1, global_batch_size=4)
  ids, labels = _collect(eval_fn(None))
  # The test split holds examples 42..50 (after train and unlabelled), each
  # once, in the same (tfds file) order every pass.
  np.testing.assert_array_equal(sorted(ids), np.arange(42, 51))
  np.testing.assert_array_equal(ids, _collect(eval_fn(None))[0])
  np.testing.assert_array_equal(labels, tf.one_hot(ids % 3, 3))


def test_unlabelled_split_like_stl10(tiny_dir):
  config = _config(tiny_dir, train_split="unlabelled")
  info = get_dataset_info(config)
  assert not info.train_has_labels and info.num_train_examples == 12
  ids, labels = _collect(build_input_fn(config, FLAT_SAFE, training=True,
                                        num_views=2, global_batch_size=4)(None),
                         batches=6)
  assert set(ids) <= set(range(30, 42))
  np.testing.assert_array_equal(labels, np.zeros((24, 3)))


@pytest.mark.parametrize("pipelines", [2, 3])  # 2 by file, 3 by id hash.
def test_shards_are_disjoint(tiny_dir, pipelines):
  config = _config(tiny_dir, eval_split="train")
  eval_fn = build_input_fn(config, AugmentConfig(), training=False,
                           num_views=1, global_batch_size=pipelines)
  train_fn = build_input_fn(config, FLAT_SAFE, training=True, num_views=1,
                            global_batch_size=pipelines)
  eval_sets, train_sets = [], []
  for pipeline in range(pipelines):
    context = tf.distribute.InputContext(pipelines, pipeline, pipelines)
    ids, _ = _collect(eval_fn(context))
    assert len(ids) == len(set(ids))
    eval_sets.append(set(ids))
    train_sets.append(set(_collect(train_fn(context), batches=60)[0]))
  for a in range(pipelines):
    for b in range(a + 1, pipelines):
      assert not eval_sets[a] & eval_sets[b]
      assert not train_sets[a] & train_sets[b]
  assert set().union(*eval_sets) == set(range(30))
  assert set().union(*train_sets) == set(range(30))


def test_label_fraction_by_tfds_id(tiny_dir):
  config = _config(tiny_dir, label_fraction=1 / 3, label_seed=4)
  assert get_dataset_info(config).num_train_examples == 10
  ids, labels = _collect(build_input_fn(config, FLAT_SAFE, training=True,
                                        num_views=1, global_batch_size=5)(None),
                         batches=20)
  kept = sorted(set(ids))
  assert len(kept) == 10
  counts = np.bincount(np.array(kept) % 3, minlength=3)
  assert sorted(counts) == [3, 3, 4]
  registry.clear_caches()
  again, _ = _collect(build_input_fn(config, FLAT_SAFE, training=True,
                                     num_views=1, global_batch_size=5)(None),
                      batches=20)
  assert sorted(set(again)) == kept


def test_unknown_split(tiny_dir):
  with pytest.raises(DataError, match="no split 'validation'.*test, train"):
    get_dataset_info(_config(tiny_dir, eval_split="validation"))


def test_missing_dataset_message(tmp_path):
  with pytest.raises(DataError) as error:
    get_dataset_info(DataConfig(dataset="cifar10", data_dir=str(tmp_path)))
  message = str(error.value)
  assert "\n" not in message
  assert f"not prepared in data_dir={tmp_path}" in message
  assert f"tfds build cifar10 --data_dir={tmp_path}" in message
  with pytest.raises(DataError, match="manual download.*downloads/manual"):
    get_dataset_info(DataConfig(dataset="imagenet2012_subset/1pct",
                                data_dir=str(tmp_path)))
  assert not list(tmp_path.glob("**/*.tfrecord*"))  # Nothing downloaded.


def test_unknown_dataset_lists_choices():
  with pytest.raises(DataError) as error:
    get_dataset_info(DataConfig(dataset="cifar11"))
  message = str(error.value)
  for choice in ("synthetic_shapes", "image_folder", "cifar10", "stl10",
                 "imagenet2012_subset/1pct"):
    assert choice in message
  assert "Did you mean" in message
