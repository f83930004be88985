"""Images in folders, in the tfds ImageFolder layout.

    root/<split>/<class>/<image>    labeled split; class names sorted -> ids
    root/<split>/<image>            unlabeled split (labels are NO_LABEL)

Files ending in .jpg, .jpeg, .png, .bmp or .gif (any case) are images; other
files are ignored. The first scan of a split decodes every image once, in
parallel, so that corrupt files are found before training: they are skipped,
counted and reported in one warning. Scans are remembered for the process.
"""

import logging
import os
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf

from simclr_tf.data import source as source_lib
from simclr_tf.data.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Bad files named in the warning; the rest are only counted.
_MAX_LISTED_BAD_FILES = 5
# Scans by (root, split, file list): a split is decoded once per process.
_SCAN_CACHE: Dict[tuple, "_SplitScan"] = {}


def _layout_help(root: str) -> str:
  return (f"Expected layout: {root}/<split>/<class>/<image> for a labeled "
          f"split or {root}/<split>/<image> for an unlabeled one, images "
          f"ending in {', '.join(IMAGE_EXTENSIONS)}.")


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _list_dir(path: str) -> Tuple[List[str], List[str]]:
  """Sorted (subfolder names, image file names) of `path`."""
  folders, images = [], []
  with os.scandir(path) as entries:
    for entry in entries:
      if entry.name.startswith("."):
        continue
      if entry.is_dir():
        folders.append(entry.name)
      elif entry.is_file() and _is_image(entry.name):
        images.append(entry.name)
  return sorted(folders), sorted(images)


class _SplitScan:
  """The readable images of one split, with labels and shapes."""

  def __init__(self, paths: np.ndarray, labels: np.ndarray, labeled: bool,
               shapes: np.ndarray, bad_paths: List[str]):
    self.paths = paths
    self.labels = labels
    self.labeled = labeled
    self.shapes = shapes
    self.bad_paths = bad_paths


def _find_readable(paths: List[str]) -> Tuple[np.ndarray, np.ndarray]:
  """Indices and (H, W) of the files that decode, in order."""
  path_tensor = tf.constant(paths)

  def load(index):
    image = source_lib.decode_image(tf.io.read_file(path_tensor[index]))
    return index, tf.shape(image)[:2]

  ds = tf.data.Dataset.range(len(paths)).map(
      load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  ds = ds.ignore_errors().batch(1024)
  indices, shapes = [np.zeros([0], np.int64)], [np.zeros([0, 2], np.int32)]
  for index, shape in ds.as_numpy_iterator():
    indices.append(index)
    shapes.append(shape)
  indices, shapes = np.concatenate(indices), np.concatenate(shapes)
  order = np.argsort(indices)
  return indices[order], shapes[order]


class ImageFolderSource(source_lib.Source):
  """Reads `root/<split>/...` image folders.

  Args:
    root: the folder holding one subfolder per split.

  Raises:
    DataError: `root` is missing or has no split folders.
  """

  def __init__(self, root: str):
    self.name = "image_folder"
    self._root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(self._root):
      raise DataError(f"Image folder data_dir={root} does not exist or is "
                      f"not a folder. {_layout_help(root)}")
    self._splits, _ = _list_dir(self._root)
    if not self._splits:
      raise DataError(f"Image folder {self._root} has no split subfolders. "
                      f"{_layout_help(self._root)}")
    # Class ids come from every split's class folders, as tfds ImageFolder,
    # so an unlabeled train split and a labeled eval split agree.
    names = set()
    for split in self._splits:
      names.update(_list_dir(os.path.join(self._root, split))[0])
    self._class_names = sorted(names)
    self._scans: Dict[str, _SplitScan] = {}

  @property
  def class_names(self) -> List[str]:
    """Class folder names; index = label id."""
    return list(self._class_names)

  @property
  def num_classes(self) -> int:
    return len(self._class_names)

  @property
  def image_shape(self):
    shapes = [s.shapes for s in self._scans.values() if len(s.shapes)]
    if not shapes:
      return None
    shapes = np.concatenate(shapes)
    if (shapes == shapes[0]).all():
      return (int(shapes[0][0]), int(shapes[0][1]), 3)
    return None

  def _scan(self, split: str) -> _SplitScan:
    if split in self._scans:
      return self._scans[split]
    split_dir = os.path.join(self._root, split)
    if not os.path.isdir(split_dir):
      raise DataError(f"Image folder split {split!r} not found: {split_dir} "
                      f"does not exist. Splits in {self._root}: "
                      f"{', '.join(self._splits)}.")
    folders, loose = _list_dir(split_dir)
    paths, labels = [], []
    class_folders = []
    for name in folders:
      files = _list_dir(os.path.join(split_dir, name))[1]
      if files:
        class_folders.append(name)
      paths += [os.path.join(split_dir, name, f) for f in files]
      labels += [self._class_names.index(name)] * len(files)
    if class_folders and loose:
      raise DataError(f"Image folder split {split_dir} mixes images and "
                      f"class folders; use one or the other. "
                      f"{_layout_help(self._root)}")
    labeled = bool(class_folders)
    if not labeled:
      paths = [os.path.join(split_dir, f) for f in loose]
      labels = [source_lib.NO_LABEL] * len(paths)
    if not paths:
      raise DataError(f"No images in image folder split {split_dir}. "
                      f"{_layout_help(self._root)}")
    key = (self._root, split, tuple(paths))
    if key not in _SCAN_CACHE:
      _SCAN_CACHE[key] = self._check_files(split_dir, paths, labels, labeled)
    self._scans[split] = _SCAN_CACHE[key]
    return self._scans[split]

  def _check_files(self, split_dir, paths, labels, labeled) -> _SplitScan:
    good, shapes = _find_readable(paths)
    bad = sorted(set(range(len(paths))) - set(good.tolist()))
    bad_paths = [paths[i] for i in bad]
    if not len(good):
      raise DataError(f"None of the {len(paths)} image files in {split_dir} "
                      f"could be read, e.g. {bad_paths[0]}.")
    if bad_paths:
      listed = ", ".join(bad_paths[:_MAX_LISTED_BAD_FILES])
      more = len(bad_paths) - _MAX_LISTED_BAD_FILES
      logging.warning(
          "Skipping %d unreadable image file(s) of %d in %s: %s%s",
          len(bad_paths), len(paths), split_dir, listed,
          f" and {more} more" if more > 0 else "")
    return _SplitScan(np.array(paths, dtype=object)[good],
                      np.array(labels, np.int64)[good], labeled, shapes,
                      bad_paths)

  def num_examples(self, split: str) -> int:
    return len(self._scan(split).paths)

  def paths(self, split: str) -> List[str]:
    """The readable image files of `split`, in key (label-subset) order."""
    return self._scan(split).paths.tolist()

  def num_skipped(self, split: str) -> int:
    """Unreadable files skipped in `split`."""
    return len(self._scan(split).bad_paths)

  def has_labels(self, split: str) -> bool:
    return self._scan(split).labeled

  def keys_and_labels(self, split: str):
    scan = self._scan(split)
    return np.arange(len(scan.paths), dtype=np.int64), scan.labels.copy()

  def read(self, split, *, input_context, shuffle_files, seed,
           keep_keys=None):
    scan = self._scan(split)
    paths, labels = scan.paths, scan.labels
    if keep_keys is not None:
      paths, labels = paths[keep_keys], labels[keep_keys]
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths.tolist(), tf.string), tf.constant(labels)))
    if input_context and input_context.num_input_pipelines > 1:
      ds = ds.shard(input_context.num_input_pipelines,
                    input_context.input_pipeline_id)
    if shuffle_files:
      ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    return ds.map(lambda path, label: {source_lib.IMAGE_KEY: path,
                                       source_lib.LABEL_KEY: label})

  def decode(self, example):
    image = source_lib.decode_image(
        tf.io.read_file(example[source_lib.IMAGE_KEY]))
    return {source_lib.IMAGE_KEY: image,
            source_lib.LABEL_KEY: example[source_lib.LABEL_KEY]}
