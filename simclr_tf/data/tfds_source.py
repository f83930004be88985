"""Any tfds image-classification dataset, read offline from `data_dir`.

Nothing here downloads: an unprepared dataset is a `DataError` that says how
to prepare it. Images are read encoded and decoded after any label-subset
filter, so skipped examples cost no decoding.
"""

import difflib
import functools
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_tf.data import source as source_lib
from simclr_tf.data.errors import DataError

_TFDS_ID = "tfds_id"
# Names the unknown-dataset message always offers.
BUILT_IN_CHOICES = ("synthetic_shapes", "sklearn_digits", "image_folder")
_EXAMPLE_TFDS_NAMES = ("cifar10", "cifar100", "stl10", "imagenet2012",
                       "imagenet2012_subset/1pct", "imagenet2012_subset/10pct")


@functools.lru_cache(maxsize=1)
def tfds_names() -> Tuple[str, ...]:
  """Names of the datasets tfds knows (without community datasets)."""
  return tuple(tfds.list_builders(with_community_datasets=False))


def check_tfds_name(name: str) -> None:
  """Raises `DataError` listing the choices if tfds has no such dataset.

  Args:
    name: "name", "name/config" or "name:version" as `tfds.builder` takes.
  """
  base = name.split("/")[0].split(":")[0]
  known = tfds_names()
  if base in known:
    return
  close = difflib.get_close_matches(base, list(known) + list(BUILT_IN_CHOICES),
                                    n=3)
  hint = f" Did you mean {' or '.join(close)}?" if close else ""
  raise DataError(
      f"Unknown dataset {name!r}. Choose synthetic_shapes or "
      f"sklearn_digits (built in), "
      f"image_folder (with data_dir=<root>/<split>/<class>/<image>) or a tfds "
      f"name such as {', '.join(_EXAMPLE_TFDS_NAMES)} (tfds.list_builders() "
      f"has all {len(known)}).{hint}")


def _prepare_hint(name: str, root: str) -> str:
  if name.startswith("imagenet2012"):
    return (f"ImageNet needs a manual download: put ILSVRC2012_img_train.tar "
            f"and ILSVRC2012_img_val.tar in {root}/downloads/manual/ and run "
            f"`tfds build {name} --data_dir={root}`")
  return (f"run `tfds build {name} --data_dir={root}` on a machine with "
          f"network access and copy {root}/{name.split('/')[0]} here")


def _load_builder(name: str, data_dir: Optional[str]):
  check_tfds_name(name)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises many types for bad names/configs.
    raise DataError(f"tfds cannot open dataset {name!r} in data_dir="
                    f"{data_dir}: {str(e).splitlines()[0]}") from e
  if not builder.is_prepared():
    root = str(builder.data_dir_root)
    raise DataError(f"Dataset {name!r} is not prepared in data_dir={root} "
                    f"(looked for {builder.data_dir}). No download is "
                    f"attempted; to prepare it, {_prepare_hint(name, root)}.")
  return builder


class TfdsSource(source_lib.Source):
  """Reads a prepared tfds dataset.

  Args:
    builder: a prepared `tfds.core.DatasetBuilder`.
    name: the name shown in messages.
  """

  def __init__(self, builder, name: str):
    self._builder = builder
    self.name = name
    info = builder.info
    keys = info.supervised_keys
    if keys and len(keys) == 2 and all(isinstance(k, str) for k in keys):
      self._image_key, self._label_key = keys
    else:
      self._image_key, self._label_key = self._guess_keys(info.features)
    label_feature = info.features[self._label_key]
    if not isinstance(label_feature, tfds.features.ClassLabel):
      raise DataError(f"Dataset {name!r}: feature {self._label_key!r} is not "
                      f"a class label; only image classification datasets "
                      f"are supported.")
    self._num_classes = label_feature.num_classes
    image_feature = info.features[self._image_key]
    self._encoded = isinstance(image_feature, tfds.features.Image)
    shape = tuple(image_feature.shape)
    self._image_shape = None
    if all(isinstance(d, int) for d in shape) and len(shape) == 3:
      self._image_shape = shape[:2] + (3,)
    self._has_labels = {}

  @classmethod
  def from_name(cls, name: str, data_dir: Optional[str]) -> "TfdsSource":
    """Opens tfds dataset `name` from `data_dir` (tfds' default if None).

    Raises:
      DataError: unknown name, or not prepared in `data_dir`.
    """
    return cls(_load_builder(name, data_dir), name)

  def _guess_keys(self, features):
    image = [k for k, f in features.items()
             if isinstance(f, tfds.features.Image)]
    label = [k for k, f in features.items()
             if isinstance(f, tfds.features.ClassLabel)]
    if not image or not label:
      raise DataError(f"Dataset {self.name!r} has no image and class-label "
                      f"features; only image classification is supported.")
    return image[0], label[0]

  @property
  def num_classes(self) -> int:
    return self._num_classes

  @property
  def image_shape(self):
    return self._image_shape

  def _split_info(self, split: str):
    try:
      return self._builder.info.splits[split]
    except Exception as e:  # KeyError / ValueError depending on the spec.
      splits = ", ".join(sorted(self._builder.info.splits.keys()))
      raise DataError(f"Dataset {self.name!r} has no split {split!r}. "
                      f"Available splits: {splits} (slices such as "
                      f"'train[:10%]' also work).") from e

  def num_examples(self, split: str) -> int:
    return int(self._split_info(split).num_examples)

  def _as_dataset(self, split, *, shuffle_files=False, seed=None,
                  input_context=None, with_ids=False):
    read_config = tfds.ReadConfig(
        try_autocache=False, add_tfds_id=with_ids, shuffle_seed=seed,
        # One seeded file order for every pass: the pipeline reshuffles the
        # examples each epoch by (seed, epoch), so a resumed run's epochs
        # match an uninterrupted run's.
        shuffle_reshuffle_each_iteration=False, input_context=input_context)
    decoders = None
    if self._encoded:
      decoders = {self._image_key: tfds.decode.SkipDecoding()}
    return self._builder.as_dataset(split=split, shuffle_files=shuffle_files,
                                    decoders=decoders, read_config=read_config)

  def has_labels(self, split: str) -> bool:
    if split not in self._has_labels:
      self._split_info(split)
      ds = self._as_dataset(split).take(1)
      labels = [int(ex[self._label_key]) for ex in ds.as_numpy_iterator()]
      self._has_labels[split] = bool(labels) and labels[0] >= 0
    return self._has_labels[split]

  def keys_and_labels(self, split: str):
    self._split_info(split)
    ds = self._as_dataset(split, with_ids=True).map(
        lambda ex: (ex[_TFDS_ID], ex[self._label_key])).batch(4096)
    keys, labels = [], []
    for k, l in ds.as_numpy_iterator():
      keys.append(k)
      labels.append(l)
    return np.concatenate(keys), np.concatenate(labels).astype(np.int64)

  @property
  def encoded(self) -> bool:
    return self._encoded

  def encoded_bytes(self, split: str):
    return float(self._split_info(split).num_bytes)

  def read(self, split, *, input_context, shuffle_files, seed,
           keep_keys=None, labeled_keys=None):
    split_info = self._split_info(split)
    pipelines = input_context.num_input_pipelines if input_context else 1
    # tfds shards by files when each pipeline can have at least one; else
    # every pipeline reads all files and keeps the examples whose id hashes
    # to it, which stays disjoint whatever order the files are read in.
    by_files = pipelines > 1 and len(split_info.file_instructions) >= pipelines
    by_hash = pipelines > 1 and not by_files
    ds = self._as_dataset(split, shuffle_files=shuffle_files, seed=seed,
                          input_context=input_context if by_files else None,
                          with_ids=True)
    if by_hash:
      pipeline_id = input_context.input_pipeline_id
      ds = ds.filter(lambda ex: tf.equal(
          tf.strings.to_hash_bucket_fast(ex[_TFDS_ID], pipelines),
          pipeline_id))
    if keep_keys is not None:
      table = tf.lookup.StaticHashTable(
          tf.lookup.KeyValueTensorInitializer(
              tf.constant(keep_keys, tf.string),
              tf.ones([len(keep_keys)], tf.int32)), default_value=0)
      ds = ds.filter(lambda ex: table.lookup(ex[_TFDS_ID]) > 0)
    labeled = None
    if labeled_keys is not None:
      labeled = tf.lookup.StaticHashTable(
          tf.lookup.KeyValueTensorInitializer(
              tf.constant(labeled_keys, tf.string),
              tf.ones([len(labeled_keys)], tf.int32)), default_value=0)

    image_key, label_key = self._image_key, self._label_key

    def to_example(ex):
      label = tf.cast(ex[label_key], tf.int64)
      if labeled is not None:
        label = tf.where(labeled.lookup(ex[_TFDS_ID]) > 0, label,
                         tf.constant(source_lib.NO_LABEL, tf.int64))
      return {source_lib.IMAGE_KEY: ex[image_key],
              source_lib.LABEL_KEY: label,
              source_lib.NAME_KEY: ex[_TFDS_ID]}
    return ds.map(to_example)

  def decode(self, example):
    image = example[source_lib.IMAGE_KEY]
    if self._encoded:
      image = source_lib.decode_image(image)
    elif image.shape[-1] == 1:
      image = tf.image.grayscale_to_rgb(image)
    return {source_lib.IMAGE_KEY: tf.cast(image, tf.uint8),
            source_lib.LABEL_KEY: example[source_lib.LABEL_KEY]}
