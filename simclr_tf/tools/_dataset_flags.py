"""The dataset flags that the embedding and probe tools share, and the
`DataConfig` they describe."""

from absl import flags

DATASET = flags.DEFINE_string(
    "dataset", "synthetic_shapes", "A prepared tfds dataset name, "
    "synthetic_shapes (built in) or image_folder.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir, or the "
                               "image folder root.")
SYNTHETIC_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "synthetic_train_examples", 10000, "synthetic_shapes: train examples "
    "(as generated for the run).")
SYNTHETIC_TEST_EXAMPLES = flags.DEFINE_integer(
    "synthetic_test_examples", 2000, "synthetic_shapes: test examples.")
SYNTHETIC_SEED = flags.DEFINE_integer("synthetic_seed", 0,
                                      "synthetic_shapes: seed.")


def data_config(*, train_split: str, eval_split: str, image_size: int):
  """The `DataConfig` these flags and the given splits and size describe."""
  from simclr_tf.config import DataConfig
  return DataConfig(
      dataset=DATASET.value, data_dir=DATA_DIR.value,
      train_split=train_split, eval_split=eval_split, image_size=image_size,
      synthetic_train_examples=SYNTHETIC_TRAIN_EXAMPLES.value,
      synthetic_test_examples=SYNTHETIC_TEST_EXAMPLES.value,
      synthetic_seed=SYNTHETIC_SEED.value)
