"""Picks the source for `DataConfig.dataset` and remembers it per process."""

from typing import Dict, Optional

import numpy as np

from simclr_tf.data import image_folder
from simclr_tf.data import label_subset
from simclr_tf.data import sklearn_digits
from simclr_tf.data import source as source_lib
from simclr_tf.data import synthetic_shapes
from simclr_tf.data import tfds_source

IMAGE_FOLDER = "image_folder"
SYNTHETIC_SHAPES = synthetic_shapes.NAME
SKLEARN_DIGITS = sklearn_digits.NAME

_SOURCES: Dict[tuple, source_lib.Source] = {}
_SUBSETS: Dict[tuple, np.ndarray] = {}


def clear_caches() -> None:
  """Forgets opened sources and label subsets (e.g. after files changed)."""
  _SOURCES.clear()
  _SUBSETS.clear()


def _source_key(data_config) -> tuple:
  cfg = data_config
  if cfg.dataset == SYNTHETIC_SHAPES:
    return (cfg.dataset, cfg.data_dir, cfg.image_size,
            cfg.synthetic_train_examples, cfg.synthetic_test_examples,
            cfg.synthetic_seed)
  return (cfg.dataset, cfg.data_dir)


def get_source(data_config) -> source_lib.Source:
  """The source `data_config` names, prepared (built-in data generated).

  Args:
    data_config: a `simclr_tf.config.DataConfig`.

  Returns:
    A `Source`.

  Raises:
    DataError: unknown dataset, missing or unprepared data.
  """
  key = _source_key(data_config)
  if key not in _SOURCES:
    cfg = data_config
    if cfg.dataset == IMAGE_FOLDER:
      source = image_folder.ImageFolderSource(cfg.data_dir)
    elif cfg.dataset == SYNTHETIC_SHAPES:
      builder = synthetic_shapes.prepare(
          image_size=cfg.image_size,
          train_examples=cfg.synthetic_train_examples,
          test_examples=cfg.synthetic_test_examples,
          seed=cfg.synthetic_seed, data_dir=cfg.data_dir)
      source = tfds_source.TfdsSource(builder, SYNTHETIC_SHAPES)
    elif cfg.dataset == SKLEARN_DIGITS:
      source = tfds_source.TfdsSource(
          sklearn_digits.prepare(data_dir=cfg.data_dir), SKLEARN_DIGITS)
    else:
      source = tfds_source.TfdsSource.from_name(cfg.dataset, cfg.data_dir)
    _SOURCES[key] = source
  return _SOURCES[key]


def get_label_subset_keys(data_config) -> Optional[np.ndarray]:
  """Keys of the train-split examples kept by the label subset, or None.

  Args:
    data_config: a `simclr_tf.config.DataConfig`.

  Returns:
    The kept examples' keys, or None when every example is kept.
  """
  cfg = data_config
  if cfg.label_fraction is None and cfg.labels_per_class is None:
    return None
  key = (_source_key(cfg), cfg.train_split, cfg.label_fraction,
         cfg.labels_per_class, cfg.label_seed)
  if key not in _SUBSETS:
    source = get_source(cfg)
    keys, labels = source.keys_and_labels(cfg.train_split)
    # Sort by key so the subset does not depend on the order of reading.
    order = np.argsort(keys, kind="stable")
    keys, labels = keys[order], labels[order]
    picked = label_subset.select_label_subset(
        labels, source.num_classes, fraction=cfg.label_fraction,
        per_class=cfg.labels_per_class, seed=cfg.label_seed)
    _SUBSETS[key] = keys[picked]
  return _SUBSETS[key]
