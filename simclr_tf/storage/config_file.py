"""`config.json`: a run's whole configuration, beside its checkpoints.

This module owns the file: its name, reading and writing it, and which of
its settings fix the shape of a checkpoint's variables. The program writes it
into every `model_dir`; resuming, fine-tuning, evaluating and exporting read
it back to rebuild the model the checkpoints hold.
"""

import dataclasses
import json
import os
from typing import List, Optional

from simclr_tf import config as config_lib
from simclr_tf import settings
from simclr_tf.config import ConfigError
from simclr_tf.storage import files
from simclr_tf.config import ExperimentConfig

CONFIG_FILE = "config.json"
# Model settings that decide the encoder's and projection head's variables
# (`cifar_stem` as resolved for the image size).
ARCHITECTURE_SETTINGS = settings.names_with(config_lib.ModelConfig,
                                           settings.ARCHITECTURE)


def path_in(directory: str) -> str:
  """Where the config file of `directory` is."""
  return os.path.join(directory, CONFIG_FILE)


def read(directory: str, *, strict: bool = True) -> Optional[dict]:
  """The config file of `directory` as a dict, or None if there is none.

  Args:
    directory: a model_dir, or the directory of a checkpoint prefix.
    strict: raise for an unreadable file (a run directory must not resume
      under an unknown config); otherwise treat it as absent.

  Returns:
    The stored config, as plain JSON values.

  Raises:
    ConfigError: the file exists but cannot be read, when `strict`.
  """
  path = path_in(directory)
  if not files.exists(path):
    return None
  try:
    with files.open_file(path) as handle:
      return json.load(handle)
  except (ValueError,) + files.io_errors() as error:
    if not strict:
      return None
    raise ConfigError(f"{path} is unreadable ({error}); it describes the "
                      "checkpoints in that model_dir. Restore it, or use "
                      "another --model_dir.") from error


def write(directory: str, config: ExperimentConfig) -> str:
  """Writes `config` as the config file of `directory`, atomically.

  Returns:
    The file's path.

  Raises:
    write_errors.WriteFailedError: the file could not be written.
  """
  path = path_in(directory)
  files.atomic_write_text(path, config.to_json())
  return path


def comparable(config: ExperimentConfig) -> dict:
  """`config` as plain JSON values, with the stem choice resolved."""
  values = json.loads(config.to_json())
  values["model"]["cifar_stem"] = config.model.use_cifar_stem(
      config.data.image_size)
  return values


def comparable_stored(stored: dict) -> dict:
  """A stored config's values, with the stem choice resolved as the run
  that wrote it resolved it."""
  values = json.loads(json.dumps(stored))
  model = values.get("model", {})
  image_size = values.get("data", {}).get("image_size")
  if model.get("cifar_stem", "missing") is None and image_size is not None:
    model["cifar_stem"] = image_size <= 32
  return values


def head_feature_layer(stored: Optional[dict]) -> Optional[int]:
  """The projection layer a stored run's supervised head read, or None.

  `ModelConfig.proj_selector` of the run that wrote `stored`: 0 for the
  encoder output, which is what a pretraining run's side head reads unless
  it set `ft_proj_selector`.

  Args:
    stored: a stored config dict (or None).

  Returns:
    The layer index, or None when `stored` does not say.
  """
  model = (stored or {}).get("model", {})
  if "ft_proj_selector" not in model:
    return None
  fields = {field.name for field in dataclasses.fields(config_lib.ModelConfig)}
  try:
    return config_lib.ModelConfig(**{name: value for name, value in
                                     model.items() if name in fields}
                                  ).proj_selector
  except (TypeError, ValueError, KeyError):
    return None


def architecture_differences(stored: Optional[dict], model_config,
                             image_size: int) -> List[str]:
  """Architecture settings that differ between a stored config and ours.

  Args:
    stored: a stored config dict (or None).
    model_config: this run's `ModelConfig`.
    image_size: this run's image size (it decides an automatic stem).

  Returns:
    "name: checkpoint X, this run Y" strings; empty if unknown or equal.
  """
  if not stored:
    return []
  old = comparable_stored(stored).get("model", {})
  new = {name: getattr(model_config, name) for name in ARCHITECTURE_SETTINGS}
  new["cifar_stem"] = model_config.use_cifar_stem(image_size)
  return [f"{name}: checkpoint {old[name]}, this run {new[name]}"
          for name in ARCHITECTURE_SETTINGS
          if name in old and old[name] != new[name]]
