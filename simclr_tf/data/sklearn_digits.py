"""`sklearn_digits`: scikit-learn's copy of the UCI handwritten digits, as a
tfds builder.

The second built-in offline dataset, of real (if tiny) images: 1797 gray
8x8 digits, as uint8 RGB, with a fixed stratified split of 1437 train and
360 test images (`digits_data` has the conversion and the split rule).
Nothing is downloaded: the images come from inside the scikit-learn
package. As `synthetic_shapes`, the builder writes its prepared copy into the
tfds data directory on first use (about 1 MB, a few seconds):
`<data_dir>/sklearn_digits/1.0.0/`. The images stay 8x8 there; the input
pipeline resizes its crops to `image_size`.
"""

from typing import Optional

import tensorflow_datasets as tfds

from simclr_tf.data import digits_data
from simclr_tf.data import tfds_prepare

NAME = digits_data.NAME


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """Handwritten digits 0-9, 8x8 px, from `sklearn.datasets.load_digits`."""

  # A new version whenever the images or the split could change, so that a
  # prepared copy of another definition is never read as this one.
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: levels v -> round(255 v / 16), "
                            "gray copied to RGB, 1437/360 stratified split."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # Nothing is downloaded, so there is no checksums file to look for
    # (see `synthetic_shapes.SyntheticShapes.code_path`).
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=("The UCI optical handwritten digits as scikit-learn "
                     "ships them (load_digits), built into simclr_tf."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=digits_data.IMAGE_SHAPE),
            "label": tfds.features.ClassLabel(
                names=list(digits_data.CLASS_NAMES)),
        }),
        supervised_keys=("image", "label"),
        homepage=("https://archive.ics.uci.edu/dataset/80/optical+"
                  "recognition+of+handwritten+digits"))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    # Reads scikit-learn's data now, so that a missing scikit-learn is our
    # one-line DataError before tfds starts writing anything.
    digits_data.indices(digits_data.TRAIN_SPLIT)
    return {split: self._generate_examples(split)
            for split in digits_data.SPLITS}

  def _generate_examples(self, split: str):
    images, labels = digits_data.load(split)
    # Keyed by the index in scikit-learn's data: stable example ids.
    for index, image, label in zip(digits_data.indices(split), images,
                                   labels):
      yield int(index), {"image": image, "label": int(label)}


def prepare(data_dir: Optional[str] = None) -> SklearnDigits:
  """Returns the prepared builder, writing the data on first use.

  Args:
    data_dir: tfds data directory; None uses tfds' default.

  Returns:
    A prepared `SklearnDigits` builder.

  Raises:
    DataError: scikit-learn is not installed.
  """
  return tfds_prepare.prepare_once(
      lambda: SklearnDigits(data_dir=data_dir), NAME)
