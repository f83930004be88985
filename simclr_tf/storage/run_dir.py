"""The run directory: who writes where, one run at a time, checked first.

- `RunDirectory`: the chief writes into `model_dir`; other workers of a
  multi-worker job write into a private temporary directory that is deleted
  at the end (TensorFlow's documented pattern: every worker takes part in
  saving a checkpoint, but only the chief's copy is kept).
- `RunLock`: a lock file in `model_dir` naming the process and host that
  hold it, so a second run pointed at the same directory stops with a clear
  message; a lock left by a dead process is taken over.
- `check_writable`, `check_free_space`: the directory is checked before any
  work, so a full or read-only disk is found at start, not at the first
  checkpoint hours later.
- `check_resume_config`: resuming with another architecture, train mode or
  dataset is refused, listing the differences from the stored `config.json`.

Files go through `simclr_tf.storage.files`, so that both trainers, the
TensorFlow one and the TF-free one, share these rules.
"""

import dataclasses
import errno
import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from typing import Callable, List, Optional, Tuple

import numpy as np

from simclr_tf import config as config_lib
from simclr_tf import settings
from simclr_tf.storage import config_file
from simclr_tf.storage import files
from simclr_tf.storage.config_file import CONFIG_FILE
from simclr_tf.config import ConfigError

LOCK_FILE = "simclr.lock"
# The stage directory of the linear evaluation after pretraining.
LINEAR_EVAL_DIR = "linear_eval"
# Space needed for checkpoints, as a multiple of the bytes of every variable
# a checkpoint holds (model and optimizer slots): the checkpoint being
# written is complete before the oldest one is deleted, and the SavedModel
# export of the weights needs about as much again.
CHECKPOINT_SPACE_FACTOR = 2


class RunDirError(ValueError):
  """model_dir cannot be used (in use, unwritable, full); one-line message."""










def check_writable(directory: str) -> None:
  """Creates `directory` if needed and proves a file can be written there.

  Args:
    directory: the directory (local or e.g. gs://).

  Raises:
    RunDirError: if it cannot be created or written.
  """
  probe = os.path.join(directory, f".write_probe-{socket.gethostname()}-"
                       f"{os.getpid()}")
  try:
    files.makedirs(directory)
    with files.open_file(probe, "w") as handle:
      handle.write("ok")
    files.remove(probe)
  except files.io_errors() as error:
    reason = getattr(error, "message", None) or str(error)
    raise RunDirError(
        f"model_dir {directory} is not writable ({reason.splitlines()[0]}). "
        "Choose another --model_dir or fix its permissions.") from error




def _itemsize(dtype) -> int:
  # A TensorFlow DType knows its size; Keras 3 variables name theirs.
  size = getattr(dtype, "size", None)
  return size if isinstance(size, int) else np.dtype(str(dtype)).itemsize


def checkpoint_bytes(variables) -> int:
  """Bytes the values of `variables` take in a checkpoint.

  Args:
    variables: iterable of variables (model and optimizer).

  Returns:
    The total size of their values.
  """
  total = 0
  seen = set()
  for variable in variables:
    if id(variable) in seen:
      continue
    seen.add(id(variable))
    count = 1
    for dim in variable.shape:
      count *= int(dim)
    total += count * _itemsize(variable.dtype)
  return total


def check_free_space(directory: str, needed: int) -> None:
  """Raises if `directory` has less than `needed` bytes free.

  Args:
    directory: where checkpoints go.
    needed: bytes needed (see `CHECKPOINT_SPACE_FACTOR`).

  Raises:
    RunDirError: when the space is known and too small.
  """
  available = files.free_bytes(directory)
  if available is not None and available < needed:
    raise RunDirError(
        f"model_dir {directory} has {files.format_bytes(available)} free, less "
        f"than the {files.format_bytes(needed)} its checkpoints need. Free some "
        "space or choose another --model_dir.")




class RunLock:
  """A lock file in `model_dir` so that one run at a time uses it.

  The file holds the owner's pid, host and start time. On a local
  filesystem the file is also locked with `flock`, which the kernel
  releases when the owner dies however it dies, so a stale lock (from a
  killed run) is taken over without guessing from pids; the pid and host are
  what the refusal message names. On object stores (gs://), where no file
  lock exists, the pid and host decide: a lock from this host whose process
  is gone is taken over, one from another host is respected until deleted.

  Taking the lock on an object store is not atomic. GCS could make it so
  (a create-only upload, `ifGenerationMatch=0`), but `tf.io.gfile`, the only
  storage API this project uses, offers no conditional write, and the
  google-cloud-storage client is not a dependency. So the lock checks,
  writes a lock file holding a random token, waits `REMOTE_SETTLE_SECONDS`
  and reads the file back: if another run wrote it meanwhile, the token is
  not ours and this run stops (the last writer keeps the lock). GCS reads
  are strongly consistent, so this catches two runs started together as
  long as each writes its lock within `REMOTE_SETTLE_SECONDS` of finding
  none. It does not protect against a run that stalls longer than that
  between its check and its write, nor against a lock file deleted by hand
  while its run is alive.

  Args:
    directory: the run's model_dir (must exist).
    log: where takeover notices go.
  """

  # Seconds between writing a lock on an object store and reading it back.
  REMOTE_SETTLE_SECONDS = 2.0

  def __init__(self, directory: str, log: Callable[[str], None] = print):
    self.directory = directory
    self.path = os.path.join(directory, LOCK_FILE)
    self.log = log
    self._fd = None
    self._held = False
    self._token = uuid.uuid4().hex

  def _owner_text(self) -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "token": self._token})

  def _read_owner(self) -> Optional[dict]:
    try:
      owner = json.loads(files.read_text(self.path) or "null")
      return owner if isinstance(owner, dict) else None
    except (ValueError,) + files.io_errors():
      return None

  def _refuse(self, owner: Optional[dict]):
    if owner is None:
      raise RunDirError(
          f"model_dir {self.directory} is in use by another run (lock file "
          f"{self.path} is unreadable). If no run uses it, delete that file.")
    raise RunDirError(
        f"model_dir {self.directory} is in use by process {owner.get('pid')} "
        f"on {owner.get('host')} (lock file {self.path}, since "
        f"{owner.get('since')}). Wait for that run to end or use another "
        "--model_dir; if that process is gone, delete the lock file.")

  def acquire(self) -> "RunLock":
    """Takes the lock, or raises `RunDirError` naming its holder."""
    if self._held:
      return self
    if files.is_local(self.directory):
      self._acquire_local()
    else:
      self._acquire_remote()
    self._held = True
    return self

  def _acquire_local(self):
    import fcntl  # POSIX only; local model_dirs on Windows are unsupported.
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as error:
        os.close(fd)
        if error.errno not in (errno.EAGAIN, errno.EACCES):
          raise
        self._refuse(self._read_owner())
      # The holder may have deleted the file between our open and flock:
      # then we hold a lock on a file nobody else will open. Start again.
      try:
        same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same_file = False
      if same_file:
        break
      os.close(fd)
    previous = self._read_owner()
    if previous and previous.get("pid") not in (None, os.getpid()):
      self.log(f"Took over the stale lock {self.path} of process "
               f"{previous.get('pid')} on {previous.get('host')}, which is "
               "no longer running.")
    os.ftruncate(fd, 0)
    os.write(fd, self._owner_text().encode())
    os.fsync(fd)
    self._fd = fd

  def _acquire_remote(self):
    if files.exists(self.path):
      owner = self._read_owner()
      stale = (owner is not None and
               owner.get("host") == socket.gethostname() and
               isinstance(owner.get("pid"), int) and
               not files.process_alive(owner["pid"]))
      if not stale:
        self._refuse(owner)
      self.log(f"Took over the stale lock {self.path} of process "
               f"{owner['pid']} on {owner['host']}, which is no longer "
               "running.")
    files.atomic_write_text(self.path, self._owner_text())
    # Not atomic (see the class docstring): a run that found no lock at the
    # same time may have written after us; the last writer keeps it.
    time.sleep(self.REMOTE_SETTLE_SECONDS)
    owner = self._read_owner()
    if owner is None or owner.get("token") != self._token:
      self._refuse(owner)

  def release(self) -> None:
    """Removes the lock file and releases the lock (safe to call twice)."""
    if not self._held:
      return
    self._held = False
    try:
      files.remove(self.path)
    except files.io_errors():
      pass
    if self._fd is not None:
      os.close(self._fd)  # Releases the flock.
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc_info):
    self.release()


class RunDirectory:
  """Where this process writes a run's files.

  The chief writes into `model_dir`. Any other worker of a multi-worker job
  writes into a private local temporary directory: it must still take part
  in saving checkpoints (saving runs collective ops), but its copy is thrown
  away by `cleanup`. Every worker reads (restores) from `model_dir`, so a
  multi-machine job needs `model_dir` on a filesystem all of them see (e.g.
  gs://).

  Args:
    model_dir: the run's directory.
    is_chief: whether this process is the chief.
    task_name: this process in the cluster ("worker 1"), for messages.
  """

  def __init__(self, model_dir: str, *, is_chief: bool = True,
               task_name: str = ""):
    if not model_dir:
      raise ValueError("`model_dir` must not be empty. Received: "
                       f"model_dir={model_dir!r}")
    self.model_dir = model_dir
    self.is_chief = is_chief
    self.task_name = task_name
    self._temporary_root = None
    self._lock = None


  @property
  def write_dir(self) -> str:
    """The directory this process writes into (created on first use)."""
    if self.is_chief:
      return self.model_dir
    if self._temporary_root is None:
      self._temporary_root = self._make_temporary_root()
    return self._temporary_root

  def _make_temporary_root(self) -> str:
    # Named by model_dir, task and pid. A worker that was killed (preempted)
    # could not delete its directory, which holds a checkpoint copy; its
    # successor for the same model_dir and task deletes it, so restarts do
    # not fill the disk. Live owners' directories are left alone.
    label = (self.task_name or "worker").replace(" ", "")
    digest = hashlib.sha1(self.model_dir.encode()).hexdigest()[:10]
    stem = os.path.join(tempfile.gettempdir(), f"simclr_{label}_{digest}_")
    for leftover in glob.glob(stem + "*"):
      owner = leftover[len(stem):]
      if owner.isdigit() and not files.process_alive(int(owner)):
        shutil.rmtree(leftover, ignore_errors=True)
    path = f"{stem}{os.getpid()}"
    os.makedirs(path, exist_ok=True)
    return path

  def path(self, *parts: str) -> str:
    """Where this process writes the file `parts` of the run."""
    return os.path.join(self.write_dir, *parts)

  def child(self, name: str) -> "RunDirectory":
    """The run directory of a stage kept in `model_dir/name`."""
    child = RunDirectory(os.path.join(self.model_dir, name),
                         is_chief=self.is_chief, task_name=self.task_name)
    if not self.is_chief:
      # Inside this worker's temporary directory, so cleanup removes it.
      child._temporary_root = os.path.join(self.write_dir, name)
      os.makedirs(child._temporary_root, exist_ok=True)
    return child


  def prepare(self, log: Callable[[str], None] = print) -> "RunDirectory":
    """Checks the directory can be written and, on the chief, locks it.

    Raises:
      RunDirError: unwritable, or in use by another run.
    """
    check_writable(self.write_dir)
    if self.is_chief:
      self._lock = RunLock(self.model_dir, log=log).acquire()
    return self

  def cleanup(self) -> None:
    """Releases the lock and deletes a non-chief's temporary files."""
    if self._lock is not None:
      self._lock.release()
      self._lock = None
    if self._temporary_root is not None and not self.is_chief:
      shutil.rmtree(self._temporary_root, ignore_errors=True)
      self._temporary_root = None

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.cleanup()


# --- Resuming with a changed config.

# Settings a run cannot change once it has checkpoints: those declared
# `FIXED_ON_RESUME` (the architecture, what the checkpoint's slots and heads
# are, the data the run trains on). Everything else (steps, eval settings,
# checkpoint cadence, learning rate, hardware) may change on resume; those
# changes are logged.
_FIXED_SETTINGS = {
    section.name: settings.names_with(section.type, settings.FIXED_ON_RESUME)
    for section in dataclasses.fields(config_lib.ExperimentConfig)}


def config_differences(stored: dict, config) -> Tuple[List[str], List[str]]:
  """Differences between a stored `config.json` and this run's config.

  Args:
    stored: the stored config, as a dict.
    config: this run's `ExperimentConfig`.

  Returns:
    (fixed, allowed): "section.name: stored X, now Y" strings for settings
    that cannot change on resume, and for those that may.
  """
  old = config_file.comparable_stored(stored)
  new = config_file.comparable(config)
  fixed, allowed = [], []
  for section in sorted(new):
    for name in sorted(new[section]):
      before = old.get(section, {}).get(name, new[section][name])
      after = new[section][name]
      if before == after:
        continue
      line = f"{section}.{name}: stored {before!r}, now {after!r}"
      if name in _FIXED_SETTINGS.get(section, ()):
        fixed.append(line)
      else:
        allowed.append(line)
  return fixed, allowed


def check_resume_config(config, log: Callable[[str], None], *,
                        has_checkpoint: bool) -> bool:
  """Refuses to resume a run under a config its checkpoints do not fit.

  Only matters when `model_dir` already holds a checkpoint.

  Args:
    config: this stage's `ExperimentConfig`.
    log: where allowed changes are reported.
    has_checkpoint: whether the run resumes from a checkpoint (the
      trainer's checkpoint reader knows).

  Returns:
    True if `model_dir` holds checkpoints (this run resumes it).

  Raises:
    ConfigError: listing every setting that may not change.
  """
  model_dir = config.run.model_dir
  if not has_checkpoint:
    return False
  stored = config_file.read(model_dir)
  if stored is None:
    log(f"NOTE: {model_dir} holds checkpoints but no {CONFIG_FILE}; the "
        "settings they were trained with cannot be checked.")
    return True
  fixed, allowed = config_differences(stored, config)
  if fixed:
    raise ConfigError(
        f"model_dir {model_dir} holds a run with other settings, which "
        f"cannot change when resuming: {'; '.join(fixed)}. Use the stored "
        f"settings ({os.path.join(model_dir, CONFIG_FILE)}) or another "
        "--model_dir.")
  if allowed:
    log(f"Resuming {model_dir} with changed settings: {'; '.join(allowed)}.")
  return True


def write_config(run_dir: RunDirectory, config) -> None:
  """Writes `config.json` (atomically) where this process writes."""
  config_file.write(run_dir.write_dir, config)
