"""`synthetic_shapes`: the built-in offline dataset, as a tfds builder.

Generated locally and deterministically from a seed (see `shapes_render`),
with no network. Each (image size, split sizes, seed) is its own builder
config, so different settings never collide on disk:
`<data_dir>/synthetic_shapes/size32_train10000_test2000_seed0/1.0.0/`.
"""

import dataclasses
from typing import Optional

import tensorflow_datasets as tfds

from simclr_tf.data import shapes_render
from simclr_tf.data import tfds_prepare

NAME = "synthetic_shapes"
TRAIN_SPLIT = "train"
TEST_SPLIT = "test"
# Random streams of the two splits, so they share no images.
_STREAMS = {TRAIN_SPLIT: 0, TEST_SPLIT: 1}


def config_name(image_size: int, train_examples: int, test_examples: int,
                seed: int) -> str:
  """The builder-config name that encodes a generation setting."""
  return (f"size{image_size}_train{train_examples}_test{test_examples}"
          f"_seed{seed}")


@dataclasses.dataclass(eq=False)
class SyntheticShapesConfig(tfds.core.BuilderConfig):
  """A generation setting of `synthetic_shapes`."""
  image_size: int = 32
  train_examples: int = 10000
  test_examples: int = 2000
  seed: int = 0


def make_config(image_size: int = 32, train_examples: int = 10000,
                test_examples: int = 2000,
                seed: int = 0) -> SyntheticShapesConfig:
  """Builds the config for a setting, named by `config_name`.

  Args:
    image_size: side of the square images (>= 8).
    train_examples: images in the train split.
    test_examples: images in the test split.
    seed: generation seed.

  Returns:
    A `SyntheticShapesConfig`.
  """
  return SyntheticShapesConfig(
      name=config_name(image_size, train_examples, test_examples, seed),
      description=(f"{image_size}x{image_size} px, {train_examples} train and "
                   f"{test_examples} test images, seed {seed}."),
      image_size=image_size, train_examples=train_examples,
      test_examples=test_examples, seed=seed)


class SyntheticShapes(tfds.core.GeneratorBasedBuilder):
  """Shapes on random coloured, textured backgrounds; label = shape.

  Classes: circle, square, triangle, star, cross, ring, crescent, arrow,
  heart, bowtie. Foreground and background colours, background texture,
  position, scale, rotation, stretch and pixel noise are random nuisances.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [make_config()]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # Nothing is downloaded, so there is no checksums file to find next to
    # this module; looking for it needs `importlib_resources`, which tfds
    # does not install on Python >= 3.9.
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        description=("Synthetic shape classification built into simclr_tf; "
                     "shape is the only label signal."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3)),
            "label": tfds.features.ClassLabel(
                names=list(shapes_render.SHAPE_NAMES)),
        }),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    return {TRAIN_SPLIT: self._generate_examples(TRAIN_SPLIT,
                                                 cfg.train_examples),
            TEST_SPLIT: self._generate_examples(TEST_SPLIT,
                                                cfg.test_examples)}

  def _generate_examples(self, split: str, num_examples: int):
    cfg = self.builder_config
    images, labels = shapes_render.render_shapes(
        num_examples, cfg.image_size, cfg.seed, stream=_STREAMS[split])
    for index in range(num_examples):
      yield index, {"image": images[index], "label": int(labels[index])}


def prepare(image_size: int = 32, train_examples: int = 10000,
            test_examples: int = 2000, seed: int = 0,
            data_dir: Optional[str] = None) -> SyntheticShapes:
  """Returns the prepared builder, generating the data on first use.

  Args:
    image_size: image side.
    train_examples: train split size.
    test_examples: test split size.
    seed: generation seed.
    data_dir: tfds data directory; None uses tfds' default.

  Returns:
    A prepared `SyntheticShapes` builder.
  """
  config = make_config(image_size, train_examples, test_examples, seed)
  # tfds refuses a custom config object named like a predefined one.
  predefined = {c.name for c in SyntheticShapes.BUILDER_CONFIGS}
  def make_builder():
    return SyntheticShapes(
        config=config.name if config.name in predefined else config,
        data_dir=data_dir)

  return tfds_prepare.prepare_once(make_builder, NAME)
