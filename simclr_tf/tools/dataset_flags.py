"""The dataset flags that the embedding and probe tools share, and the
`DataConfig` they describe.

The flags are the program's own: derived from `DataConfig`'s declarations
(name, default, help, choices), and bounds-checked by `DataConfig.validate`
when `data_config` builds the section.
"""

from absl import flags

from simclr_tf import config as config_lib
from simclr_tf import settings
from simclr_tf.tools import setting_flags

# The settings a tool reads its images with; the splits and the image size
# are each tool's own flags (or come from the model).
NAMES = settings.names_with(config_lib.DataConfig, settings.READS_IMAGES)

SETTING_FLAGS = setting_flags.define_setting_flags(
    [("data", config_lib.DataConfig)], flags.FLAGS, only=NAMES)

# How the tools feed a model: not settings of a run.
IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", 0, "Side images are transformed to; 0 uses the model's "
    "training size.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Images per batch.")


def data_config(*, train_split: str, eval_split: str, image_size: int):
  """The `DataConfig` these flags and the given splits and size describe.

  Raises:
    ConfigError: a setting out of its declared bounds, in the program's
      words (e.g. "`synthetic_train_examples` must be >= 1. Received: ...").
  """
  values = setting_flags.section_values(SETTING_FLAGS).get("data", {})
  config = config_lib.DataConfig(
      train_split=train_split, eval_split=eval_split, image_size=image_size,
      **values)
  config.validate()
  return config
