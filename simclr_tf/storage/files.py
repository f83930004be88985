"""Files of a run, on a local disk or an object store, without TensorFlow.

Local paths go through `os` and `shutil`. A path with a scheme (`gs://...`,
`s3://...`) goes through `tf.io.gfile`, imported only for such a path: the
JAX trainer, which runs on hosts without TensorFlow, writes local runs with
the same rules (atomic small files, the free-space check) as the TF trainer.

`IO_ERRORS` is what a failed read or write raises: `OSError` locally, and
TensorFlow's `OpError` as well once TensorFlow is loaded.
"""

import os
import shutil
import sys
from typing import Iterator, List, Optional, Tuple

from simclr_tf.storage import write_errors


def is_local(path: str) -> bool:
  """Whether `path` is on a local filesystem (it has no URL scheme)."""
  return "://" not in path


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def io_errors() -> Tuple[type, ...]:
  """The exceptions a read or write of a run's file may raise."""
  tf = sys.modules.get("tensorflow")
  errors = getattr(tf, "errors", None)
  if errors is not None and hasattr(errors, "OpError"):
    return (OSError, errors.OpError)
  return (OSError,)


def exists(path: str) -> bool:
  return os.path.exists(path) if is_local(path) else _gfile().exists(path)


def isdir(path: str) -> bool:
  return os.path.isdir(path) if is_local(path) else _gfile().isdir(path)


def listdir(path: str) -> List[str]:
  return os.listdir(path) if is_local(path) else _gfile().listdir(path)


def makedirs(path: str) -> None:
  if is_local(path):
    os.makedirs(path, exist_ok=True)
  else:
    _gfile().makedirs(path)


def remove(path: str) -> None:
  if is_local(path):
    os.remove(path)
  else:
    _gfile().remove(path)


def rmtree(path: str) -> None:
  if is_local(path):
    shutil.rmtree(path)
  else:
    _gfile().rmtree(path)


def rename(source: str, target: str) -> None:
  """Renames `source` to `target`, replacing a file there.

  Within a local directory the rename is atomic; object stores copy and
  then delete, which still never exposes a partial file.
  """
  if is_local(source) and is_local(target):
    os.replace(source, target)
  else:
    _gfile().rename(source, target, overwrite=True)


def size(path: str) -> int:
  if is_local(path):
    return os.path.getsize(path)
  return _gfile().stat(path).length


def walk(path: str) -> Iterator[Tuple[str, List[str], List[str]]]:
  return os.walk(path) if is_local(path) else _gfile().walk(path)


def open_file(path: str, mode: str = "r"):
  """A file object for `path` (text unless `mode` has "b")."""
  if is_local(path):
    return open(path, mode)  # pylint: disable=unspecified-encoding
  return _gfile().GFile(path, mode)


def read_text(path: str) -> str:
  with open_file(path) as handle:
    return handle.read()


def atomic_write_text(path: str, text: str) -> None:
  """Writes `text` to `path` so readers see the old file or the new one.

  Args:
    path: the file to (over)write; local or on an object store.
    text: its new content.

  Raises:
    write_errors.WriteFailedError: the write failed (e.g. a full disk); the
      previous file, if any, is untouched.
  """
  temporary = f"{path}.tmp-{os.getpid()}"
  try:
    with open_file(temporary, "w") as handle:
      handle.write(text)
  except io_errors() as error:
    if exists(temporary):
      remove(temporary)
    raise write_errors.WriteFailedError(
        f"could not write {path} ({write_errors.reason(error)}); the "
        "previous file, if any, is untouched. Free space (or fix the disk) "
        "and rerun the same command.") from error
  rename(temporary, path)


def format_bytes(count: float) -> str:
  """"1.5 GiB", "320.0 MiB", "12 B"."""
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if count < 1024 or unit == "TiB":
      return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
    count /= 1024
  return f"{count:.1f} TiB"


def directory_bytes(path: str) -> int:
  """Total size of the files under `path`."""
  total = 0
  for directory, _, names in walk(path):
    for name in names:
      total += size(os.path.join(directory, name))
  return total


def free_bytes(directory: str) -> Optional[int]:
  """Free bytes on the filesystem of a local `directory`; None if unknown.

  Object stores (gs://, s3://) have no meaningful free space: None.
  """
  if not is_local(directory):
    return None
  return shutil.disk_usage(directory).free


def process_alive(pid: int) -> bool:
  """Whether process `pid` exists on this machine (of any user)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # It exists but belongs to another user.
  return True
