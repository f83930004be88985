"""Input data: tfds datasets, image folders, the built-in `synthetic_shapes`
and `sklearn_digits`, label subsets, and the per-replica `tf.data` pipeline.

Public API:
  DataError: the one-line user-facing error of this package.
  DatasetInfo, get_dataset_info(data_config): what the program needs to know.
  build_input_fn(...): `input_fn(input_context)` for
    `strategy.distribute_datasets_from_function`.
  select_label_subset(...): the class-balanced label subset rule.
  take_skipped_files_report(): one line naming the image files skipped since
    the last call, or None.
  pretraining_views(dataset, ...): SimCLR views of your own
    `tf.data.Dataset` of images, for `SimCLRModel.fit`.
"""

import importlib

from simclr_tf.data.errors import DataError

# The rest is TensorFlow's (`tf.data`), imported on first use, so that the
# TF-free modules of this package (`shapes_render`, `digits_data`,
# `errors`) serve the JAX backend on hosts without TensorFlow.
_LAZY = {
    "select_label_subset": ("label_subset", "select_label_subset"),
    "build_input_fn": ("pipeline", "build_input_fn"),
    "get_dataset_info": ("pipeline", "get_dataset_info"),
    "take_skipped_files_report": ("skipped_files", "take_report"),
    "DatasetInfo": ("source", "DatasetInfo"),
    "NO_LABEL": ("source", "NO_LABEL"),
    "pretraining_views": ("user_dataset", "pretraining_views"),
}


def __getattr__(name):
  if name not in _LAZY:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  module, attribute = _LAZY[name]
  value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
  globals()[name] = value
  return value


__all__ = ["DataError", "DatasetInfo", "NO_LABEL", "build_input_fn",
           "get_dataset_info", "pretraining_views", "select_label_subset",
           "take_skipped_files_report"]
