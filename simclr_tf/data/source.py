"""What every data source provides to the input pipeline."""

import abc
import dataclasses
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from simclr_tf.data import encoded_image

# Keys of the examples a source's dataset yields.
IMAGE_KEY = "image"
LABEL_KEY = "label"
# A name for messages about the example (a file path, a tfds id).
NAME_KEY = "name"
# Label of an example without one; becomes an all-zero one-hot row.
NO_LABEL = -1


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the training program needs to know about a dataset.

  Attributes:
    num_classes: classes of the labels (0 for a folder with no labeled split).
    num_train_examples: examples in the train split, after label subsetting.
    num_eval_examples: examples in the eval split.
    image_shape: (H, W, 3) when the source guarantees that every image has
      it (a tfds image feature of fixed shape, the built-in dataset). None
      when sizes may differ or cannot be known without opening every file:
      an image folder only lists its files at start-up (so that opening it
      does not grow with its size) and says None even if its files happen
      to agree. None is always safe: the pipeline then crops each image at
      its own full resolution; a fixed shape lets it crop whole batches
      and cache decoded images.
    train_has_labels: False when the train split carries no labels (e.g.
      stl10 "unlabelled", or an unlabeled image-folder split).
  """
  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  image_shape: Optional[Tuple[int, int, int]]
  train_has_labels: bool


class Source(abc.ABC):
  """A dataset's splits as decoded (image, label) examples.

  Subclasses read one backend (tfds, an image folder). Keys identify examples
  stably across runs, so a label subset picked once can be filtered anywhere
  in a sharded, shuffled pipeline.
  """

  name: str

  @property
  @abc.abstractmethod
  def num_classes(self) -> int:
    """Number of classes."""

  @property
  @abc.abstractmethod
  def image_shape(self) -> Optional[Tuple[int, int, int]]:
    """(H, W, 3) when every image is known to have it, else None.

    See `DatasetInfo.image_shape`: None means "not known to be one shape",
    never a claim that sizes differ.
    """

  @abc.abstractmethod
  def num_examples(self, split: str) -> int:
    """Examples in `split`."""

  @abc.abstractmethod
  def has_labels(self, split: str) -> bool:
    """Whether `split` carries labels."""

  @abc.abstractmethod
  def keys_and_labels(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Stable example keys and int labels (NO_LABEL if none) of `split`."""

  @abc.abstractmethod
  def read(self, split: str, *, input_context: Optional[
      tf.distribute.InputContext], shuffle_files: bool, seed: Optional[int],
           keep_keys: Optional[np.ndarray] = None,
           labeled_keys: Optional[np.ndarray] = None) -> tf.data.Dataset:
    """This pipeline's shard of `split`, images still encoded.

    Encoded examples are small, so pipelines that do not cache can shuffle
    them before `decode`.

    Args:
      split: split name.
      input_context: shard for this input pipeline; None reads everything.
      shuffle_files: shuffle the file order (training).
      seed: file-shuffle seed.
      keep_keys: keep only examples with these keys (label subsets, for
        supervised stages).
      labeled_keys: keep every example but only these keys' labels; the
        others get NO_LABEL (label subsets while pretraining).

    Returns:
      A dataset of dicts: IMAGE_KEY whatever `load` takes, LABEL_KEY an
      int64 scalar (NO_LABEL when unlabeled), NAME_KEY a string.
    """

  @property
  def encoded(self) -> bool:
    """Whether `load` gives encoded image bytes (else decoded arrays)."""
    return False

  def encoded_bytes(self, split: str) -> Optional[float]:
    """About how many bytes `split`'s loaded examples hold, if known."""
    del split
    return None

  def load(self, example: dict) -> dict:
    """The example of `read` with IMAGE_KEY as the bytes or array to decode.

    Cheap (reads a file at most), so the pipeline can cache its result.
    """
    return example

  @abc.abstractmethod
  def decode(self, example: dict) -> dict:
    """Decodes one example of `read` to a uint8 (H, W, 3) IMAGE_KEY."""


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """Decodes jpeg/png/bmp/gif bytes to uint8 (H, W, 3); gifs' first frame.

  Args:
    encoded: scalar string tensor.

  Returns:
    uint8 (H, W, 3) tensor.
  """
  return encoded_image.decode_rgb(encoded)
