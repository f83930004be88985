"""Training and evaluation batches without TensorFlow, for the JAX backend.

`tf.data` is TensorFlow's; on a host without it, batches come from here, as
`keras.utils.PyDataset`s that Keras' JAX trainer reads:

- `synthetic_shapes`: the built-in dataset, rendered in memory by the same
  generator and seeds as its tfds builder, so both backends train on the
  same images.
- `sklearn_digits`: the built-in 8x8 digits, in memory from the same arrays
  and fixed split as its tfds builder (`digits_data`).
- `image_folder`: root/<split>/<class>/<image> (or root/<split>/<image>,
  unlabeled), as the TensorFlow path reads it. Files are listed, not
  decoded, when the split opens. Pillow decodes each file when its batch is
  read, at full resolution (Pillow: the decoder tf-free hosts already have,
  with the same decompression-bomb guard). Unreadable files are skipped
  and counted.

Training batches for pretraining hold uint8 images; the train step makes
the views on the device (`device_augment`). Same-size images (the built-in
dataset) go whole, and the device also crops. Mixed-size photos are cropped
here, from the full-resolution image, with the same sampler, then resized
bicubically to `image_size` (the resampling of `tf.image.resize`); the device
does the rest. Evaluation images
get the authors' centre crop (`eval_crop_fraction` of the short side, above
32 px) and a bicubic resize.
"""

import math
import os
from typing import List, Optional

import keras
import numpy as np

from simclr_tf.augment import batched as device_augment
from simclr_tf.data import digits_data
from simclr_tf.data import folder_layout
from simclr_tf.data import shapes_render
from simclr_tf.data.errors import DataError

SYNTHETIC_SHAPES = "synthetic_shapes"
SKLEARN_DIGITS = digits_data.NAME
IMAGE_FOLDER = "image_folder"
DATASETS = (SYNTHETIC_SHAPES, SKLEARN_DIGITS, IMAGE_FOLDER)
# The built-in dataset's random streams, as its tfds builder's.
_SPLIT_STREAMS = {"train": 0, "test": 1}
# At or below this side the evaluation transform only resizes (the authors'
# `test_crop=False` for CIFAR-sized images).
EVAL_CENTER_CROP_MIN_SIZE = 33
# Worker threads decoding image files.
_DECODE_WORKERS = 4
# Files tried in place of an unreadable training file before a gray
# stand-in is used instead.
_REPLACEMENT_TRIES = 8


class Split:
  """The examples of one split: in-memory images, or files to decode.

  Attributes:
    images: uint8 (N, H, W, 3) for in-memory data, else None.
    paths: the N image files, else None.
    labels: int (N,) class ids, -1 for unlabeled.
    num_classes: classes (0 for an unlabeled split).
  """

  def __init__(self, labels, num_classes, images=None, paths=None):
    self.images = images
    self.paths = paths
    self.labels = np.asarray(labels, np.int64)
    self.num_classes = num_classes

  def __len__(self):
    return len(self.labels)

  def take(self, indices) -> "Split":
    """The examples at `indices`, as a `Split` of the same classes."""
    indices = np.asarray(indices, np.int64)
    return Split(self.labels[indices], self.num_classes,
                 images=None if self.images is None else self.images[indices],
                 paths=None if self.paths is None else self.paths[indices])


def load_split(data_config, split: str) -> Split:
  """Opens a split of a built-in dataset or of an image folder.

  Args:
    data_config: a `simclr_tf.config.DataConfig`.
    split: the split's name.

  Returns:
    A `Split`.

  Raises:
    DataError: another dataset (tfds needs TensorFlow), an unknown split,
      an empty or missing folder, or sklearn_digits without scikit-learn.
  """
  cfg = data_config
  if cfg.dataset == SYNTHETIC_SHAPES:
    if split not in _SPLIT_STREAMS:
      raise DataError(f"synthetic_shapes has splits train and test. "
                      f"Received: split={split!r}")
    count = (cfg.synthetic_train_examples if split == "train" else
             cfg.synthetic_test_examples)
    images, labels = shapes_render.render_shapes(
        count, cfg.image_size, cfg.synthetic_seed,
        stream=_SPLIT_STREAMS[split])
    return Split(labels, shapes_render.NUM_CLASSES, images=images)
  if cfg.dataset == SKLEARN_DIGITS:
    # 8x8 images: the device crops and resizes them to image_size, and
    # evaluation resizes them (`center_crop`), as tf.data does.
    images, labels = digits_data.load(split)
    return Split(labels, digits_data.NUM_CLASSES, images=images)
  if cfg.dataset == IMAGE_FOLDER:
    return _folder_split(cfg.data_dir, split)
  raise DataError(
      f"Without TensorFlow, datasets are {' or '.join(DATASETS)}: tfds "
      f"datasets need the TensorFlow backend (--backend=tensorflow). "
      f"Received: dataset={cfg.dataset!r}")


def _folder_split(root: str, split: str) -> Split:
  # The listing and class ids are the tf.data path's (`folder_layout`).
  layout = folder_layout.FolderLayout(root)
  paths, labels = layout.scan(split)
  folder_layout.check_sample(os.path.join(layout.root, split), paths,
                             _header_is_usable)
  if labels is None:
    return Split([-1] * len(paths), 0, paths=np.array(paths))
  return Split(labels, len(layout.class_names), paths=np.array(paths))


class SkippedFiles:
  """Files that could not be decoded, counted and named once per stage."""

  def __init__(self):
    self.paths: List[str] = []
    self.seen = set()

  def add(self, path: str) -> None:
    # Each epoch reads the file again: count it once.
    if path not in self.seen:
      self.seen.add(path)
      self.paths.append(path)

  def report(self) -> Optional[str]:
    if not self.paths:
      return None
    names = ", ".join(os.path.basename(p) for p in self.paths[:5])
    more = ", ..." if len(self.paths) > 5 else ""
    return f"skipped {len(self.paths)} unreadable files: {names}{more}"


def _decode(path: str, max_pixels: int):
  """A file's RGB pixels (H, W, 3) uint8, or None if it cannot be read."""
  from PIL import Image  # Only the image-folder path needs Pillow.
  try:
    with Image.open(path) as image:
      if image.width * image.height > max_pixels:
        return None
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError, Image.DecompressionBombError):
    return None


def _header_is_usable(path: str) -> bool:
  from PIL import Image
  try:
    with Image.open(path):  # Reads the header; decodes nothing.
      return True
  except (OSError, ValueError, Image.DecompressionBombError):
    return False


def _cubic(distance: np.ndarray) -> np.ndarray:
  d = np.abs(distance)
  a = device_augment.CUBIC_A
  near = ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
  far = ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
  return np.where(d <= 1.0, near, np.where(d < 2.0, far, 0.0))


def _resize_matrix(length: int, size: int) -> np.ndarray:
  """(size, length) rows of a bicubic resize, as `tf.image.resize` does it.

  Half-pixel centres, Keys' a = -0.5, no antialiasing, taps beyond the edge
  dropped and the rest renormalised: the same resampling as the device's
  `device_augment.crop_and_resize` and the authors' `tf.image.resize`
  (Pillow's resize antialiases when it shrinks, so it is not used here).
  """
  centre = (np.arange(size) + 0.5) * (length / size) - 0.5
  base = np.floor(centre)
  matrix = np.zeros((size, length))
  rows = np.arange(size)
  weights = []
  for k in range(-1, 3):
    tap = base + k
    weight = np.where((tap >= 0) & (tap < length), _cubic(centre - tap), 0.0)
    weights.append((tap, weight))
  total = sum(weight for _, weight in weights)
  for tap, weight in weights:
    index = np.clip(tap, 0, length - 1).astype(int)
    np.add.at(matrix, (rows, index), weight / total)
  return matrix.astype(np.float32)


def _resize(pixels: np.ndarray, size: int) -> np.ndarray:
  """uint8 (h, w, 3) to uint8 (size, size, 3), bicubic, rounded."""
  rows = _resize_matrix(pixels.shape[0], size)
  cols = _resize_matrix(pixels.shape[1], size)
  out = np.einsum("ih,hwc,jw->ijc", rows, pixels.astype(np.float32), cols,
                  optimize=True)
  return np.round(np.clip(out, 0.0, 255.0)).astype(np.uint8)


def center_crop(pixels: np.ndarray, size: int,
                crop_fraction: float) -> np.ndarray:
  """The authors' evaluation view: centre crop of the short side, resize.

  Args:
    pixels: uint8 (H, W, 3).
    size: output side.
    crop_fraction: the crop's side as a fraction of the short side (their
      0.875), applied above 32 px; at or below, the image is only resized.

  Returns:
    uint8 (size, size, 3).
  """
  height, width = pixels.shape[:2]
  if size >= EVAL_CENTER_CROP_MIN_SIZE:
    # Their side: rint(fraction * short side), in float32 as they compute.
    side = max(1, int(np.rint(np.float32(crop_fraction) *
                              np.float32(min(height, width)))))
    top = (height - side + 1) // 2
    left = (width - side + 1) // 2
    pixels = pixels[top:top + side, left:left + side]
  if pixels.shape[:2] == (size, size):
    return pixels
  return _resize(pixels, size)


class Batches(keras.utils.PyDataset):
  """Batches of a split: (images, one-hot labels) for `fit`, and for
  `evaluate` (images, one-hot labels, weights). An unreadable training file
  is replaced by the next readable one of the epoch; in evaluation it is a
  gray stand-in of weight 0, so the metrics cover the readable images.

  Args:
    split: a `Split`.
    batch_size: images per batch.
    image_size: the network's input side.
    augment_config: a `simclr_tf.config.AugmentConfig` (crops, eval crop).
    training: shuffle each epoch and crop training views; False gives
      evaluation views in order.
    num_views: training views per image (2 for pretraining).
    num_classes: width of the one-hot labels.
    seed: the run's seed (shuffle order and host crops).
    max_pixels: files with more pixels are skipped.
    first_epoch: the epoch a resumed run starts at, so its order repeats.
    first_batch: the batch of `first_epoch` it starts at (resumed
      mid-epoch); later epochs start at 0.
    batches_per_epoch: at most this many training batches per epoch, so
      that a run can end mid-epoch: Keras' JAX trainer runs
      `steps_per_execution` steps per call unless the data end first.
    skipped: where unreadable files are counted; several `Batches` of one
      stage share one, so the stage reports them all once.
  """

  def __init__(self, split: Split, batch_size: int, image_size: int,
               augment_config, *, training: bool, num_views: int = 1,
               num_classes: int = 1, seed: int = 0,
               max_pixels: int = 89478485, first_epoch: int = 0,
               first_batch: int = 0, batches_per_epoch: Optional[int] = None,
               skipped: Optional[SkippedFiles] = None):
    super().__init__(workers=1, use_multiprocessing=False)
    if batch_size < 1:
      raise ValueError(f"`batch_size` must be positive. Received: "
                       f"batch_size={batch_size}")
    self.split = split
    self.batch_size = batch_size
    self.image_size = image_size
    self.augment_config = augment_config
    self.training = training
    self.num_views = num_views
    self.num_classes = max(num_classes, 1)
    self.seed = seed
    self.max_pixels = max_pixels
    self.skipped = skipped if skipped is not None else SkippedFiles()
    self._epoch = first_epoch
    self._first_batch = first_batch
    self._batches_per_epoch = batches_per_epoch
    self._order = self._epoch_order()

  @property
  def crops_on_device(self) -> bool:
    """Whether training batches hold whole images for the device to crop."""
    return self.split.images is not None

  def __len__(self):
    if self.training:
      whole = max(1, len(self.split) // self.batch_size) - self._first_batch
      return min(whole, self._batches_per_epoch or whole)
    return math.ceil(len(self.split) / self.batch_size)

  def _epoch_order(self):
    if not self.training:
      return np.arange(len(self.split))
    rng = np.random.default_rng([self.seed, self._epoch])
    return rng.permutation(len(self.split))

  def on_epoch_end(self):
    self._epoch += 1
    self._first_batch = 0
    self._order = self._epoch_order()

  def __getitem__(self, index):
    index += self._first_batch
    start = index * self.batch_size
    rows = self._order[start:start + self.batch_size]
    if self.training and len(rows) < self.batch_size:
      rows = self._order[:self.batch_size]
    images, rows, unreadable = self._images(rows, index, start)
    labels = self.split.labels[rows]
    one_hot = np.zeros((len(rows), self.num_classes), np.float32)
    labeled = labels >= 0
    one_hot[np.nonzero(labeled)[0], labels[labeled]] = 1.0
    if self.training:
      return images, one_hot
    # Evaluation weighs each example: 0 leaves a stand-in for an unreadable
    # file out of the metrics, as the TensorFlow path drops the file.
    return images, one_hot, (~unreadable).astype(np.float32)

  def _images(self, rows, index, start):
    """The batch's images, its rows (training replaces unreadable files),
    and which rows are stand-ins for unreadable files."""
    size = self.image_size
    if self.split.images is not None:
      pixels = self.split.images[rows]
      unreadable = np.zeros(len(rows), bool)
      if self.training:
        return pixels, rows, unreadable
    else:
      rows = np.array(rows)  # A copy: replacements must not edit the order.
      pixels = self._decode_rows(rows)
      if self.training:
        self._replace_unreadable(rows, pixels, start + self.batch_size)
      unreadable = np.array([p is None for p in pixels], bool)
      # A gray stand-in keeps the batch's shape; it is counted and named.
      pixels = [np.full((size, size, 3), 128, np.uint8) if p is None else p
                for p in pixels]
      if self.training:
        return self._host_crops(pixels, index), rows, unreadable
    images = np.stack([center_crop(p, size,
                                   self.augment_config.eval_crop_fraction)
                       for p in pixels])
    return images.astype(np.float32) / 255.0, rows, unreadable

  def _decode_rows(self, rows):
    """Each row's pixels, None for a file that cannot be read (counted)."""
    paths = [str(path) for path in self.split.paths[rows]]
    if len(paths) > 1:
      from concurrent import futures
      with futures.ThreadPoolExecutor(_DECODE_WORKERS) as pool:
        decoded = list(pool.map(lambda p: _decode(p, self.max_pixels),
                                paths))
    else:
      decoded = [_decode(path, self.max_pixels) for path in paths]
    for path, pixels in zip(paths, decoded):
      if pixels is None:
        self.skipped.add(path)
    return decoded

  def _replace_unreadable(self, rows, pixels, after):
    """Fills training rows of unreadable files with the next readable files
    of this epoch's order after the batch, as the TensorFlow path, which
    drops bad files, fills its batches from the files that follow."""
    candidate = after
    for slot in [i for i, p in enumerate(pixels) if p is None]:
      for _ in range(_REPLACEMENT_TRIES):
        row = self._order[candidate % len(self._order)]
        candidate += 1
        if str(self.split.paths[row]) in self.skipped.seen:
          continue
        replacement = self._decode_rows([row])[0]
        if replacement is not None:
          rows[slot], pixels[slot] = row, replacement
          break

  def _host_crops(self, decoded, index) -> np.ndarray:
    """Crops per view from each full-resolution image, resized to size."""
    heights = np.array([p.shape[0] for p in decoded], np.float32)
    widths = np.array([p.shape[1] for p in decoded], np.float32)
    views = []
    for view in range(self.num_views):
      rng = device_augment._Random(np.array(
          [(self.seed * 7919 + view) % 2**32,
           (self._epoch * 1_000_003 + index) % 2**32], np.uint32))
      boxes = device_augment.sample_crop_boxes(
          len(decoded), heights, widths, self.augment_config, rng)
      boxes = np.stack([np.asarray(b) for b in boxes], 1).astype(int)
      views.append(np.stack([
          _resize(p[y:y + h, x:x + w], self.image_size)
          for p, (y, x, h, w) in zip(decoded, boxes)]))
    return np.concatenate(views, axis=-1)
