"""The images, labels and fixed split of the built-in `sklearn_digits`.

TensorFlow-free (numpy, and scikit-learn's bundled copy of the UCI
handwritten digits), so both the tfds builder (`sklearn_digits`) and the JAX
host batches (`host_batches`) read the same arrays from here.

The data: `sklearn.datasets.load_digits()`, 1797 gray 8x8 images of the
digits 0-9 with 17 levels (0..16), shipped inside scikit-learn, so nothing
is downloaded. Each image becomes uint8 RGB: a level v becomes
round(v * 255 / 16) (exact integer rounding, (255 v + 8) // 16; v = 8, the
only tie, becomes 128), copied to the three channels. Images stay 8x8; the
input pipeline resizes them to `image_size`.

The split, fixed forever so that results compare across versions (it uses
no random generator, whose streams may change between numpy releases):
order the 1797 examples by (label, index in scikit-learn's data); the
example at position p (0-based) of that order is a test example when
floor((p + 1) * 360 / 1797) > floor(p * 360 / 1797), a train example
otherwise. That is every fifth example or so of each class: 360 test and
1437 train images (scikit-learn's 80/20 split sizes), and each class's test
count is within 1 of 360 * class size / 1797. `load` gives a split's
examples in scikit-learn's order; the tfds copy is keyed by the index in
scikit-learn's data (tfds stores them in its own hashed order).
"""

import functools
from typing import Tuple

import numpy as np

from simclr_tf.data.errors import DataError

NAME = "sklearn_digits"
TRAIN_SPLIT = "train"
TEST_SPLIT = "test"
SPLITS = (TRAIN_SPLIT, TEST_SPLIT)
NUM_EXAMPLES = 1797
NUM_TEST_EXAMPLES = 360
NUM_TRAIN_EXAMPLES = NUM_EXAMPLES - NUM_TEST_EXAMPLES
NUM_CLASSES = 10
CLASS_NAMES = tuple(str(digit) for digit in range(NUM_CLASSES))
IMAGE_SIDE = 8
IMAGE_SHAPE = (IMAGE_SIDE, IMAGE_SIDE, 3)
# The gray levels of the stored images: 0 (background) to 16 (ink).
MAX_LEVEL = 16


def check_split(split: str) -> None:
  """Raises `DataError` unless `split` is "train" or "test".

  Args:
    split: a split name.
  """
  if split not in SPLITS:
    raise DataError(f"{NAME} has splits {' and '.join(SPLITS)} (fixed: "
                    f"{NUM_TRAIN_EXAMPLES} train, {NUM_TEST_EXAMPLES} test "
                    f"images). Received: split={split!r}")


def num_examples(split: str) -> int:
  """Images in `split` ("train": 1437, "test": 360)."""
  check_split(split)
  return NUM_TRAIN_EXAMPLES if split == TRAIN_SPLIT else NUM_TEST_EXAMPLES


def in_test_split(labels: np.ndarray) -> np.ndarray:
  """Which examples the fixed rule puts in the test split.

  Args:
    labels: int (N,) class ids, in the data's order.

  Returns:
    bool (N,): True for test examples (the module docstring gives the rule).
  """
  count = len(labels)
  # A stable sort keeps the data's order within each class.
  order = np.argsort(labels, kind="stable")
  position = np.arange(count, dtype=np.int64)
  picked = ((position + 1) * NUM_TEST_EXAMPLES // count >
            position * NUM_TEST_EXAMPLES // count)
  mask = np.zeros(count, bool)
  mask[order[picked]] = True
  return mask


@functools.lru_cache(maxsize=1)
def _all_examples() -> Tuple[np.ndarray, np.ndarray]:
  """All 1797 images as uint8 (N, 8, 8, 3) and their int64 labels."""
  try:
    from sklearn import datasets  # The one module that needs scikit-learn.
  except ImportError as e:
    raise DataError(f"dataset={NAME} needs scikit-learn, which ships the "
                    f"digits: `pip install scikit-learn`, or choose another "
                    f"dataset. ({e})") from e
  digits = datasets.load_digits()
  levels = np.asarray(digits.data)
  labels = np.asarray(digits.target, np.int64)
  # The split and results assume scikit-learn's copy as it has long been.
  if (levels.shape != (NUM_EXAMPLES, IMAGE_SIDE * IMAGE_SIDE) or
      labels.shape != (NUM_EXAMPLES,) or levels.min() < 0 or
      levels.max() > MAX_LEVEL or np.any(levels != np.round(levels)) or
      set(np.unique(labels)) != set(range(NUM_CLASSES))):
    raise DataError(f"scikit-learn's load_digits() returned data of shape "
                    f"{levels.shape} (levels {levels.min()}..{levels.max()})"
                    f", not the {NUM_EXAMPLES} 8x8 images with levels 0..16 "
                    f"that dataset={NAME} is defined on.")
  levels = levels.astype(np.int64).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
  # round(v * 255 / 16) in integers: exact, no float tie questions.
  gray = ((levels * 255 + MAX_LEVEL // 2) // MAX_LEVEL).astype(np.uint8)
  images = np.repeat(gray[..., None], 3, axis=-1)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def load(split: str) -> Tuple[np.ndarray, np.ndarray]:
  """The images and labels of one split, in scikit-learn's order.

  Args:
    split: "train" or "test".

  Returns:
    (images, labels): uint8 (N, 8, 8, 3) RGB with equal channels, and
    int64 (N,) digits 0..9 (fresh copies).

  Raises:
    DataError: another split, or scikit-learn is not installed.
  """
  check_split(split)
  images, labels = _all_examples()
  in_test = in_test_split(labels)
  keep = in_test if split == TEST_SPLIT else ~in_test
  return images[keep], labels[keep]


def indices(split: str) -> np.ndarray:
  """Indices into scikit-learn's data of the examples of `split`."""
  check_split(split)
  _, labels = _all_examples()
  in_test = in_test_split(labels)
  return np.nonzero(in_test if split == TEST_SPLIT else ~in_test)[0]
