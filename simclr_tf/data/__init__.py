"""Input data: tfds datasets, image folders, the built-in `synthetic_shapes`,
label subsets, and the per-replica `tf.data` pipeline.

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

from simclr_tf.data.errors import DataError
from simclr_tf.data.label_subset import select_label_subset
from simclr_tf.data.pipeline import build_input_fn
from simclr_tf.data.pipeline import get_dataset_info
from simclr_tf.data.skipped_files import take_report as take_skipped_files_report
from simclr_tf.data.source import DatasetInfo
from simclr_tf.data.source import NO_LABEL
from simclr_tf.data.user_dataset import pretraining_views

__all__ = ["DataError", "DatasetInfo", "NO_LABEL", "build_input_fn",
           "get_dataset_info", "pretraining_views", "select_label_subset",
           "take_skipped_files_report"]
