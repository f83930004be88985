"""Images in folders, in the tfds ImageFolder layout, for `tf.data`.

    root/<split>/<class>/<image>    labeled split; class names sorted -> ids
    root/<split>/<image>            unlabeled split (labels are NO_LABEL)

`folder_layout` lists the files, for this module and for the JAX backend's
input (`host_data`); this module checks and reads them. Opening a split
only lists its files (remembered for the process), so a folder of any size
opens in seconds; a few files are checked so that a folder of nothing but
bad files fails at once. Files that turn out unreadable are skipped when
the pipeline reads them, counted and reported once per stage
(`simclr_tf.data.skipped_files`).
"""

import os
from typing import Dict, List

import numpy as np
import tensorflow as tf

from simclr_tf.data import encoded_image
from simclr_tf.data import folder_layout
from simclr_tf.data import source as source_lib

# Files whose sizes estimate the split's bytes (for the auto cache).
_SAMPLE_SIZED = 256


class _SplitScan:
  """The image files of one split, with labels."""

  def __init__(self, paths: np.ndarray, labels: np.ndarray, labeled: bool):
    self.paths = paths
    self.labels = labels
    self.labeled = labeled


def _header_is_usable(path: str) -> bool:
  try:
    encoded = tf.io.read_file(path)
    # Only the header: a decompression bomb stays undecoded.
    return int(encoded_image.inspect(encoded, 2 ** 62)[2]) == encoded_image.OK
  except tf.errors.OpError:
    return False


class ImageFolderSource(source_lib.Source):
  """Reads `root/<split>/...` image folders.

  Args:
    root: the folder holding one subfolder per split.

  Raises:
    DataError: `root` is missing or has no split folders.
  """

  def __init__(self, root: str):
    self.name = "image_folder"
    self._layout = folder_layout.FolderLayout(root)
    self._scans: Dict[str, _SplitScan] = {}
    self._sizes: Dict[str, float] = {}

  @property
  def class_names(self) -> List[str]:
    """Class folder names; index = label id."""
    return list(self._layout.class_names)

  @property
  def num_classes(self) -> int:
    return len(self._layout.class_names)

  @property
  def image_shape(self):
    """None: not known to be one shape (see `DatasetInfo.image_shape`).

    Proving that every file has one size would mean opening every file at
    start-up, which grows with the folder; a sample cannot prove it. Folders
    take the any-size path (each image cropped at its own resolution),
    which is right for one size too.
    """
    return None

  @property
  def encoded(self) -> bool:
    return True

  def _scan(self, split: str) -> _SplitScan:
    if split in self._scans:
      return self._scans[split]
    paths, labels = self._layout.scan(split)
    labeled = labels is not None
    if not labeled:
      labels = [source_lib.NO_LABEL] * len(paths)
    split_dir = os.path.join(self._layout.root, split)
    folder_layout.check_sample(split_dir, paths, _header_is_usable)
    self._scans[split] = _SplitScan(np.array(paths, dtype=object),
                                    np.array(labels, np.int64), labeled)
    return self._scans[split]

  def num_examples(self, split: str) -> int:
    return len(self._scan(split).paths)

  def paths(self, split: str) -> List[str]:
    """The image files of `split`, in key (label-subset) order."""
    return self._scan(split).paths.tolist()

  def encoded_bytes(self, split: str) -> float:
    """Estimated bytes of `split`'s files, from a sample of their sizes."""
    if split not in self._sizes:
      paths = self._scan(split).paths
      step = max(1, len(paths) // _SAMPLE_SIZED)
      sample = paths[::step][:_SAMPLE_SIZED]
      mean = np.mean([os.path.getsize(p) for p in sample])
      self._sizes[split] = float(mean * len(paths))
    return self._sizes[split]

  def has_labels(self, split: str) -> bool:
    return self._scan(split).labeled

  def keys_and_labels(self, split: str):
    scan = self._scan(split)
    return np.arange(len(scan.paths), dtype=np.int64), scan.labels.copy()

  def read(self, split, *, input_context, shuffle_files, seed,
           keep_keys=None, labeled_keys=None):
    scan = self._scan(split)
    paths, labels = scan.paths, scan.labels
    if labeled_keys is not None:
      kept = np.zeros(len(labels), bool)
      kept[labeled_keys] = True
      labels = np.where(kept, labels, source_lib.NO_LABEL)
    if keep_keys is not None:
      paths, labels = paths[keep_keys], labels[keep_keys]
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths.tolist(), tf.string), tf.constant(labels)))
    if input_context and input_context.num_input_pipelines > 1:
      ds = ds.shard(input_context.num_input_pipelines,
                    input_context.input_pipeline_id)
    if shuffle_files:
      # One seeded order for every pass: the pipeline reshuffles each
      # epoch by (seed, epoch), so a resumed run's epochs match.
      ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=False)

    return ds.map(lambda path, label: {source_lib.IMAGE_KEY: path,
                                       source_lib.NAME_KEY: path,
                                       source_lib.LABEL_KEY: label})

  def load(self, example):
    example = dict(example)
    example[source_lib.IMAGE_KEY] = tf.io.read_file(
        example[source_lib.IMAGE_KEY])
    return example

  def decode(self, example):
    example = self.load(example)
    example[source_lib.IMAGE_KEY] = encoded_image.decode_rgb(
        example[source_lib.IMAGE_KEY])
    return example
