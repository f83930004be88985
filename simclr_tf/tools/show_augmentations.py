r"""Writes a PNG grid of images and their SimCLR augmented views.

Each row is one image: the original (resized to --image_size), then
--num_views independent train-time views. This is what the model sees.

  python -m simclr_tf.tools.show_augmentations --dataset=synthetic_shapes \
      --image_size=32 --output=augmentations.png
  python -m simclr_tf.tools.show_augmentations --dataset=image_folder \
      --data_dir=/path/to/root --train_split=train --image_size=96

The dataset, image and augmentation flags are the program's own (same names,
defaults and checks), so a `simclr-tf` command line's settings show its
views here.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from simclr_tf import config as config_lib  # noqa: E402
from simclr_tf import settings  # noqa: E402
from simclr_tf.augment import host as augment  # noqa: E402
from simclr_tf.config import AugmentConfig  # noqa: E402
from simclr_tf.config import DataConfig  # noqa: E402
from simclr_tf.data import registry  # noqa: E402
from simclr_tf.data import source as source_lib  # noqa: E402
from simclr_tf.tools import cli  # noqa: E402
from simclr_tf.tools import setting_flags  # noqa: E402

TOOL = "show_augmentations"
# The program's settings that say which images are read, at what size, and
# how they are augmented (where the augmentation runs changes nothing here).
_SETTING_FLAGS = setting_flags.define_setting_flags(
    [("data", config_lib.DataConfig), ("augment", config_lib.AugmentConfig)],
    flags.FLAGS, only=settings.names_with(
        config_lib.DataConfig, settings.READS_IMAGES) + (
            "train_split", "image_size") + tuple(
                settings.flag_name(config_lib.AugmentConfig, field)
                for field in settings.fields(config_lib.AugmentConfig)
                if field.name != "augment_on_device"))
flags.adopt_module_key_flags(setting_flags)
_OUTPUT = flags.DEFINE_string("output", "augmentations.png",
                              "PNG file to write.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 8, "Rows (images).")
_NUM_VIEWS = flags.DEFINE_integer("num_views", 2, "Augmented views per image.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the augmentations.")
_MIN_TILE = flags.DEFINE_integer(
    "min_tile", 96, "Small views are enlarged (nearest) to at least this.")

_GAP = 2  # Pixels of white between tiles.


def _check_flags() -> None:
  for flag, low in ((_NUM_IMAGES, 1), (_NUM_VIEWS, 1), (_MIN_TILE, 1)):
    if flag.value < low:
      raise ValueError(f"--{flag.name} must be at least {low}. Received: "
                       f"--{flag.name}={flag.value}")
  if not _OUTPUT.value.lower().endswith(".png"):
    raise ValueError(f"--output must be a .png file. Received: "
                     f"--output={_OUTPUT.value}")


def make_grid(num_images: int, num_views: int, data_config: DataConfig,
              augment_config: AugmentConfig, split: str,
              seed: int) -> np.ndarray:
  """Rows of [original, view 1, ..., view N] as one uint8 image.

  Args:
    num_images: rows.
    num_views: augmented views per row.
    data_config: where the images come from.
    augment_config: the augmentation settings.
    split: split to read.
    seed: seed of the views.

  Returns:
    uint8 (rows * tile, (num_views + 1) * tile, 3) array, with gaps.
  """
  size = data_config.image_size
  source = registry.get_source(data_config)
  ds = source.read(split, input_context=None, shuffle_files=False, seed=None)
  ds = ds.take(num_images).map(source.decode)
  rows = []
  for index, example in enumerate(ds):
    image = example[source_lib.IMAGE_KEY]
    tiles = [tf.clip_by_value(tf.image.resize(
        augment.to_float_image(image), [size, size], method="bicubic"),
                              0.0, 1.0)]
    for view in range(num_views):
      tiles.append(augment.preprocess_for_train(
          image, size, augment_config, seed=[seed, index * 1000 + view]))
    rows.append([t.numpy() for t in tiles])
  if not rows:
    raise ValueError(f"Split {split!r} of {data_config.dataset} is empty.")
  scale = max(1, -(-_MIN_TILE.value // size))
  tile = size * scale
  height = len(rows) * (tile + _GAP) - _GAP
  width = (num_views + 1) * (tile + _GAP) - _GAP
  grid = np.ones((height, width, 3), np.float32)
  for r, tiles in enumerate(rows):
    for c, t in enumerate(tiles):
      big = np.repeat(np.repeat(t, scale, axis=0), scale, axis=1)
      y, x = r * (tile + _GAP), c * (tile + _GAP)
      grid[y:y + tile, x:x + tile] = big
  return np.round(grid * 255).astype(np.uint8)


def main(argv) -> int:
  del argv  # cli.run refuses positional arguments
  _check_flags()
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # tfds' info lines are noise here.
  values = setting_flags.section_values(_SETTING_FLAGS)
  data = values["data"]
  data_config = DataConfig(eval_split=data["train_split"], **data)
  augment_config = AugmentConfig(**values["augment"])
  data_config.validate()
  augment_config.validate()
  split = data_config.train_split
  grid = make_grid(_NUM_IMAGES.value, _NUM_VIEWS.value, data_config,
                   augment_config, split, _SEED.value)
  output = os.path.abspath(_OUTPUT.value)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  tf.io.write_file(output, tf.io.encode_png(grid))
  print(f"Wrote {output} ({grid.shape[1]}x{grid.shape[0]} px): "
        f"{_NUM_IMAGES.value} images of {data_config.dataset}/{split}, "
        f"original then {_NUM_VIEWS.value} views each.")
  return 0


def _user_errors():
  from simclr_tf.data.errors import DataError  # pylint: disable=g-import-not-at-top
  return (ValueError, OSError, tf.errors.OpError, config_lib.ConfigError,
          DataError)


def entry():
  """Console-script entry point."""
  cli.run(TOOL, main, _user_errors)


if __name__ == "__main__":
  entry()
