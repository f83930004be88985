"""The on-disk layout of an export: the one module that knows its paths.

An export is a TensorFlow SavedModel directory plus our metadata:

```
<export>/
  saved_model.pb                        TensorFlow's graph
  variables/variables.{index,data-*}    an object-based checkpoint
  assets.extra/simclr_tf_export.json    what was exported (`read_metadata`)
```

A run's automatic exports live in `model_dir/saved_model/<step>/`. While an
export is written it is `.tmp-<name>-<pid>` beside its target, and the one it
replaces is moved to `.old-<name>-<pid>` until the rename is done.

In the SavedModel's checkpoint the root holds each part's variables as a
list under `<part>_variables` (`part_attribute`), so an export loads through
the same object-path matching as a run's checkpoint.
"""

import json
import os
from typing import List, Optional

from simclr_tf.storage import files

# TensorFlow's SavedModel graph file, and the variables prefix inside every
# SavedModel directory (the authors' included).
SAVED_MODEL_FILE = "saved_model.pb"
VARIABLES_PREFIX = os.path.join("variables", "variables")
# Our metadata, kept in `assets.extra` (SavedModel's place for files that the
# graph does not read). With SAVED_MODEL_FILE it marks an export of ours.
METADATA_FILE = os.path.join("assets.extra", "simclr_tf_export.json")
METADATA_FORMAT = "simclr_tf.export"
METADATA_VERSION = 1
# `model_dir/saved_model/<step>/` holds the automatic exports.
EXPORTS_DIR = "saved_model"
TEMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"


class ExportError(ValueError):
  """An export that cannot be written or used, or inputs it cannot take.

  The message is one line meant for the user.
  """


def part_attribute(part_name: str) -> str:
  """The export root's attribute listing a part's variables.

  Args:
    part_name: "encoder", "projection_head" or "supervised_head".

  Returns:
    The attribute name, e.g. "encoder_variables".
  """
  return f"{part_name}_variables"


def exports_dir(model_dir: str) -> str:
  """The directory of a run's automatic exports."""
  return os.path.join(model_dir, EXPORTS_DIR)


def step_export_dir(model_dir: str, step: int) -> str:
  """Where a run's automatic export of `step` is written."""
  return os.path.join(exports_dir(model_dir), str(step))


def variables_prefix(export_dir: str) -> str:
  """The checkpoint prefix of a SavedModel directory's variables."""
  return os.path.join(export_dir, VARIABLES_PREFIX)


def metadata_path(export_dir: str) -> str:
  return os.path.join(export_dir, METADATA_FILE)


def is_saved_model(path: str) -> bool:
  """Whether `path` holds a SavedModel graph (ours or anyone's)."""
  return files.exists(os.path.join(path, SAVED_MODEL_FILE))


def is_export(path: str) -> bool:
  """Whether `path` is a SavedModel directory written by `simclr_tf.export`."""
  return (files.isdir(path) and is_saved_model(path) and
          files.exists(metadata_path(path)))


def export_dir_of(prefix: str) -> Optional[str]:
  """The export directory whose variables `prefix` names, or None."""
  export_dir = os.path.dirname(os.path.dirname(prefix))
  if prefix == variables_prefix(export_dir) and is_export(export_dir):
    return export_dir
  return None


def read_metadata(export_dir: str) -> dict:
  """The metadata an export was written with.

  Args:
    export_dir: a directory for which `is_export` holds.

  Returns:
    The metadata dict (see `simclr_tf.export.writer.metadata`).

  Raises:
    ExportError: if the file cannot be read or parsed.
  """
  path = metadata_path(export_dir)
  try:
    with files.open_file(path) as handle:
      return json.load(handle)
  except (ValueError,) + files.io_errors() as error:
    raise ExportError(f"{path}: unreadable export metadata "
                      f"({str(error).splitlines()[0][:200]}).") from error


def write_metadata(export_dir: str, meta: dict) -> None:
  """Writes an export's metadata into a SavedModel directory.

  Args:
    export_dir: the (temporary) SavedModel directory.
    meta: the metadata dict.
  """
  path = metadata_path(export_dir)
  files.makedirs(os.path.dirname(path))
  with files.open_file(path, "w") as handle:
    handle.write(json.dumps(meta, indent=2, sort_keys=True))


def step_names(directory: str) -> List[str]:
  """The `<step>` entries of an exports directory, oldest first.

  Args:
    directory: a run's `saved_model` directory (or any directory).

  Returns:
    The entry names that are step numbers, in step order ([] if the
    directory cannot be listed).
  """
  try:
    names = [name.rstrip("/") for name in files.listdir(directory)]
  except files.io_errors():
    return []
  return sorted((name for name in names if name.isdigit()), key=int)


def step_exports(directory: str) -> List[str]:
  """The `<step>` entries of `directory` that are exports, oldest first."""
  return [name for name in step_names(directory)
          if is_export(os.path.join(directory, name))]
