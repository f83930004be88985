"""A disk cache of the programs XLA compiles, shared between runs; opt-in.

The batched host augmentation is compiled with XLA once per input shape
before the first training batch (about 5 s at 224 px on a 2-core CPU).
TensorFlow can keep each compiled program in a directory and load it in the
next process that compiles the same program (`TF_XLA_FLAGS`'
`--tf_xla_persistent_cache_directory`); it checks the whole program against
the stored one before it uses it, and writes each entry to a temporary file
that it renames, so concurrent runs are safe. `SIMCLR_TF_XLA_CACHE=on` (or
a directory) turns it on for the programs of this package before TensorFlow
starts (`simclr_tf.tools` imports this module), so a shape is compiled once
per machine, not once per run.

It is off by default because TensorFlow 2.21 logs three error lines for
every program it loads from the cache: a failed text-format parse (it then
reads the entry as binary) and two "target machine feature
+prefer-no-scatter/+prefer-no-gather is not supported ... could lead to
SIGILL" lines, each about 2,000 characters long. Those two name LLVM tuning
hints, not instructions, and the directory is per CPU, so the warning is
false here; but a console full of SIGILL warnings is worse for a newcomer
than the 3 s that a warm cache saves on the first batch.

- Where: `$SIMCLR_TF_XLA_CACHE` when it is a directory; for `on`,
  `$XDG_CACHE_HOME/simclr_tf/xla` (or `~/.cache/simclr_tf/xla`). Either
  way in a subdirectory per TensorFlow version and CPU: a program compiled
  for one CPU's instructions must not run on another that shares the home
  directory.
- Unset, empty or `off`: no cache. A `TF_XLA_FLAGS` that already names a
  cache directory is left as it is; a directory that cannot be written
  turns it off (a failed cache write would fail the compilation).
- Size: at startup the oldest entries are deleted while the directory holds
  more than `MAX_BYTES` (an entry of the 224 px augmentation is about
  15 MB).

Imports no TensorFlow.
"""

import hashlib
import importlib.metadata
import os
import platform
import tempfile
from typing import MutableMapping, Optional

ENV_VAR = "SIMCLR_TF_XLA_CACHE"
OFF = "off"
ON = "on"
TF_FLAG = "--tf_xla_persistent_cache_directory"
MAX_BYTES = 1 << 30
ENTRY_SUFFIX = ".pb"
# Temporary files of a write that died; an hour is far longer than a write.
STALE_TEMPORARY_SECONDS = 3600


def cpu_fingerprint() -> str:
  """12 hex digits naming this CPU's model and instruction-set flags."""
  description = platform.machine() + platform.processor()
  try:
    with open("/proc/cpuinfo") as handle:
      for line in handle:
        key = line.split(":", 1)[0].strip()
        if key in ("model name", "flags", "Features"):
          description += line
        if line.strip() == "":  # the first processor is enough
          break
  except OSError:
    pass
  return hashlib.sha256(description.encode()).hexdigest()[:12]


def default_directory(environ: MutableMapping[str, str] = os.environ) -> str:
  """The cache directory for this TensorFlow version and CPU."""
  value = environ.get(ENV_VAR, "")
  root = value if value.lower() not in ("", ON) else os.path.join(
      environ.get("XDG_CACHE_HOME") or os.path.join(
          os.path.expanduser("~"), ".cache"), "simclr_tf", "xla")
  try:
    version = importlib.metadata.version("tensorflow")
  except importlib.metadata.PackageNotFoundError:
    version = "unknown"
  return os.path.join(root, f"tf-{version}-cpu-{cpu_fingerprint()}")


def prune(directory: str, max_bytes: int = MAX_BYTES, now=None) -> int:
  """Deletes the oldest entries while `directory` holds over `max_bytes`.

  Also deletes temporary files older than an hour (a write that died).

  Args:
    directory: the cache directory.
    max_bytes: the size to keep the entries under.
    now: the time (seconds since the epoch); None for now.

  Returns:
    The number of files deleted.
  """
  import time  # pylint: disable=g-import-not-at-top
  now = time.time() if now is None else now
  entries, deleted = [], 0
  with os.scandir(directory) as listing:
    for item in listing:
      if not item.is_file():
        continue
      stat = item.stat()
      if item.name.endswith(ENTRY_SUFFIX):
        entries.append((stat.st_mtime, stat.st_size, item.path))
      elif (".tmp" in item.name and
            now - stat.st_mtime > STALE_TEMPORARY_SECONDS):
        entries.append((float("-inf"), 0, item.path))
  total = sum(size for _, size, _ in entries)
  for mtime, size, path in sorted(entries):
    if total <= max_bytes and mtime != float("-inf"):
      break
    try:
      os.remove(path)
    except OSError:
      continue  # removed by another run, or not ours to remove
    total -= size
    deleted += 1
  return deleted


def configure(environ: MutableMapping[str, str] = os.environ
              ) -> Optional[str]:
  """Adds the cache directory to `TF_XLA_FLAGS`, before TensorFlow starts.

  Args:
    environ: the environment to read and change.

  Returns:
    The directory in use, or None where the cache is off (not asked for,
    set by the user's own `TF_XLA_FLAGS`, or not writable).
  """
  flags_value = environ.get("TF_XLA_FLAGS", "")
  if TF_FLAG in flags_value or environ.get(ENV_VAR, "").lower() in ("", OFF):
    return None
  directory = default_directory(environ)
  if any(character.isspace() for character in directory):
    return None  # TF_XLA_FLAGS is split at whitespace
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory):
      pass
    prune(directory)
  except OSError:
    return None
  environ["TF_XLA_FLAGS"] = f"{flags_value} {TF_FLAG}={directory}".strip()
  return directory
