"""Directories replaced whole: readers see the old one or the new one.

A directory (an export) is written under a temporary name beside its target
and renamed into place when complete. The one it replaces is moved aside
first and deleted last, so at every moment one complete directory is in
place or ready to be renamed. Both names end in the writer's pid, so a
later writer can tell leftovers of a dead process from work in progress.
"""

import os
from typing import Callable, Optional, Sequence

from simclr_tf.storage import files


def _pid_of(name: str) -> Optional[int]:
  try:
    return int(name.rsplit("-", 1)[1])
  except (IndexError, ValueError):
    return None


def replace_directory(target: str, write: Callable[[str], None], *,
                      temp_prefix: str, old_prefix: str) -> str:
  """Writes a directory through a temporary one and renames it to `target`.

  Args:
    target: the final directory; an existing one is replaced.
    write: called with the temporary directory's path (not yet existing);
      writes the whole directory there.
    temp_prefix: the temporary directory's name is
      `<temp_prefix><name>-<pid>` beside `target`.
    old_prefix: the replaced directory waits under
      `<old_prefix><name>-<pid>` until the rename is done.

  Returns:
    `target`, without a trailing slash.

  Raises:
    Whatever `write` raises, after the temporary directory was removed;
    `target` is then untouched.
  """
  target = target.rstrip("/")
  parent, name = os.path.split(target)
  parent = parent or "."
  files.makedirs(parent)
  temp = os.path.join(parent, f"{temp_prefix}{name}-{os.getpid()}")
  if files.exists(temp):
    files.rmtree(temp)
  try:
    write(temp)
  except BaseException:
    # Nothing but the temporary directory was touched: remove it, and the
    # previous directory (if any) stays in place.
    if files.exists(temp):
      files.rmtree(temp)
    raise
  old = None
  if files.exists(target):
    # Moved aside rather than deleted first: at every moment one complete
    # directory is in place or ready to be renamed.
    old = os.path.join(parent, f"{old_prefix}{name}-{os.getpid()}")
    files.rename(target, old)
  files.rename(temp, target)
  if old is not None:
    files.rmtree(old)
  return target


def remove_abandoned(directory: str, prefixes: Sequence[str]) -> None:
  """Deletes the leftovers of dead writers in `directory`.

  Args:
    directory: where `replace_directory` wrote.
    prefixes: the temporary and old prefixes it was given.
  """
  for name in files.listdir(directory):
    name = name.rstrip("/")
    if not name.startswith(tuple(prefixes)):
      continue
    pid = _pid_of(name)
    # A name without a pid is no writer's: nothing can finish it.
    if pid is None or not files.process_alive(pid):
      files.rmtree(os.path.join(directory, name))
