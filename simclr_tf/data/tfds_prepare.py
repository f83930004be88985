"""Generating a built-in tfds dataset once, even when workers start together.

Used by the built-in datasets (`synthetic_shapes`, `sklearn_digits`): each
is a tfds builder that makes its data locally, with no network, into the
tfds data directory the first time it is asked for.
"""

import contextlib
import logging
import os
import time
from typing import Callable

import tensorflow_datasets as tfds


def prepare_once(make_builder: Callable[[], "tfds.core.DatasetBuilder"],
                 name: str):
  """Returns a prepared builder, generating its data on first use.

  Args:
    make_builder: makes the builder (in its data directory); called again
      once the lock is held, so that it sees another worker's output.
    name: the dataset's name, for the lock file and the log.

  Returns:
    The prepared builder.
  """
  builder = make_builder()
  if builder.is_prepared():
    # A fresh builder: one made before another worker's data landed keeps
    # the code's empty DatasetInfo (no splits) even once is_prepared() says
    # yes, because tfds reads the info from disk only when it is made.
    return make_builder()
  # The workers of a multi-worker job start together and would all generate
  # into the same directory, colliding when tfds renames the result into
  # place; one generates while the others wait, then they read its output.
  with _preparation_lock(str(builder.data_dir_root), name):
    builder = make_builder()
    if not builder.is_prepared():
      start = time.time()
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(
              try_download_gcs=False))
      logging.info("Generated %s in %s (%.1f s).", builder.info.full_name,
                   builder.data_dir, time.time() - start)
  return builder


@contextlib.contextmanager
def _preparation_lock(data_dir_root: str, name: str):
  """Holds an exclusive file lock in a local tfds data directory."""
  if "://" in data_dir_root:
    yield  # No file locks on object stores; generate there beforehand.
    return
  import fcntl  # POSIX only.
  os.makedirs(data_dir_root, exist_ok=True)
  path = os.path.join(data_dir_root, f".{name}.prepare.lock")
  with open(path, "a") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)
