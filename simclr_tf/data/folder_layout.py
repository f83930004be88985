"""The image-folder layout on disk, listed without decoding (no TensorFlow).

    root/<split>/<class>/<image>    labeled split; class names sorted -> ids
    root/<split>/<image>            unlabeled split

Files ending in .jpg, .jpeg, .png, .bmp or .gif (any case) are images; other
files and hidden entries are ignored. Class ids come from the class folders
of every split, as tfds ImageFolder, so an unlabeled train split and a
labeled eval split, or a split that lacks a class, agree on the ids.

Both input paths read folders through this module: the `tf.data` source
(`image_folder.py`) and the TF-free one of the JAX backend (`host_data.py`).
"""

import os
from typing import Callable, List, Optional, Tuple

from simclr_tf.data.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Files whose headers are checked when a split is opened, spread over it.
SAMPLE_CHECKED = 16


def layout_help(root: str) -> str:
  """The sentence that describes the layout, for error messages."""
  return (f"Expected layout: {root}/<split>/<class>/<image> for a labeled "
          f"split or {root}/<split>/<image> for an unlabeled one, images "
          f"ending in {', '.join(IMAGE_EXTENSIONS)}.")


def is_image(name: str) -> bool:
  """Whether a file name is one the layout counts as an image."""
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def list_dir(path: str) -> Tuple[List[str], List[str]]:
  """Sorted (subfolder names, image file names) of `path`."""
  folders, images = [], []
  with os.scandir(path) as entries:
    for entry in entries:
      if entry.name.startswith("."):
        continue
      if entry.is_dir():
        folders.append(entry.name)
      elif entry.is_file() and is_image(entry.name):
        images.append(entry.name)
  return sorted(folders), sorted(images)


class FolderLayout:
  """The splits and classes of an image folder.

  Args:
    root: the folder holding one subfolder per split.

  Raises:
    DataError: `root` is missing or has no split folders.
  """

  def __init__(self, root: str):
    self.root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(self.root):
      raise DataError(f"Image folder data_dir={root} does not exist or is "
                      f"not a folder. {layout_help(root)}")
    self.splits, _ = list_dir(self.root)
    if not self.splits:
      raise DataError(f"Image folder {self.root} has no split subfolders. "
                      f"{layout_help(self.root)}")
    names = set()
    for split in self.splits:
      names.update(list_dir(os.path.join(self.root, split))[0])
    self.class_names = sorted(names)

  def scan(self, split: str) -> Tuple[List[str], Optional[List[int]]]:
    """The image files of a split and their class ids.

    Args:
      split: the split's folder name.

    Returns:
      (paths, labels): sorted by class, then file name; labels is None for
      an unlabeled split (images directly in the split folder).

    Raises:
      DataError: the split is missing or empty, or mixes loose images with
        class folders.
    """
    split_dir = os.path.join(self.root, split)
    if not os.path.isdir(split_dir):
      raise DataError(f"Image folder split {split!r} not found: {split_dir} "
                      f"does not exist. Splits in {self.root}: "
                      f"{', '.join(self.splits)}.")
    folders, loose = list_dir(split_dir)
    paths, labels = [], []
    class_folders = []
    for name in folders:
      files = list_dir(os.path.join(split_dir, name))[1]
      if files:
        class_folders.append(name)
      paths += [os.path.join(split_dir, name, f) for f in files]
      labels += [self.class_names.index(name)] * len(files)
    if class_folders and loose:
      raise DataError(f"Image folder split {split_dir} mixes images and "
                      f"class folders; use one or the other. "
                      f"{layout_help(self.root)}")
    if not class_folders:
      paths = [os.path.join(split_dir, f) for f in loose]
      labels = None
    if not paths:
      raise DataError(f"No images in image folder split {split_dir}. "
                      f"{layout_help(self.root)}")
    return paths, labels


def check_sample(split_dir: str, paths: List[str],
                 readable: Callable[[str], bool]) -> None:
  """Raises DataError when no file of a sample spread over `paths` is usable.

  A folder of nothing but bad files fails when it is opened, not after
  training on stand-ins; the sample is small, so opening costs the same
  whatever the folder's size.

  Args:
    split_dir: the split's folder, for the message.
    paths: its image files.
    readable: whether a file's header says it is an image to use (each
      input path reads headers its own way; neither decodes).

  Raises:
    DataError: none of the sample is readable.
  """
  step = max(1, len(paths) // SAMPLE_CHECKED)
  sample = paths[::step][:SAMPLE_CHECKED]
  if not any(readable(path) for path in sample):
    raise DataError(f"None of {len(sample)} image files checked in "
                    f"{split_dir} is a readable image, e.g. {sample[0]}. "
                    "Check the folder holds JPEG, PNG, GIF or BMP files.")
