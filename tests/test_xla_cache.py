"""The programs' disk cache of XLA's compiled programs (tools/xla_cache)."""

import math
import os
import subprocess
import sys

from command_line import REPO
from simclr_tf.tools import xla_cache


def test_on_adds_a_per_version_and_cpu_directory(tmp_path):
  environ = {"XDG_CACHE_HOME": str(tmp_path), "TF_XLA_FLAGS": "--tf_xla_x=1",
             xla_cache.ENV_VAR: "on"}
  directory = xla_cache.configure(environ)
  assert os.path.isdir(directory)
  assert directory.startswith(str(tmp_path / "simclr_tf" / "xla") + os.sep)
  assert xla_cache.cpu_fingerprint() in os.path.basename(directory)
  # The user's flags are kept, the cache flag is added after them.
  assert environ["TF_XLA_FLAGS"] == (
      f"--tf_xla_x=1 {xla_cache.TF_FLAG}={directory}")
  # A directory instead of "on" holds the same per-version subdirectory.
  named = {xla_cache.ENV_VAR: str(tmp_path / "mine")}
  assert xla_cache.configure(named) == str(
      tmp_path / "mine" / os.path.basename(directory))


def test_the_cache_is_off_unless_asked_and_possible(tmp_path):
  for value in (None, "", "off", "OFF"):
    environ = {"XDG_CACHE_HOME": str(tmp_path)}
    if value is not None:
      environ[xla_cache.ENV_VAR] = value
    assert xla_cache.configure(environ) is None, value
    assert "TF_XLA_FLAGS" not in environ
  assert not (tmp_path / "simclr_tf").exists()
  own = {"TF_XLA_FLAGS": f"{xla_cache.TF_FLAG}=/elsewhere",
         xla_cache.ENV_VAR: "on"}
  assert xla_cache.configure(own) is None
  assert own["TF_XLA_FLAGS"] == f"{xla_cache.TF_FLAG}=/elsewhere"
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  unwritable = {xla_cache.ENV_VAR: str(blocker / "cache")}
  assert xla_cache.configure(unwritable) is None
  assert "TF_XLA_FLAGS" not in unwritable
  spaced = {xla_cache.ENV_VAR: str(tmp_path / "with space")}
  assert xla_cache.configure(spaced) is None


def test_prune_deletes_the_oldest_entries_and_dead_temporaries(tmp_path):
  now = 1_000_000.0
  for age, name in ((30, "old.pb"), (20, "middle.pb"), (10, "new.pb")):
    path = tmp_path / name
    path.write_bytes(b"x" * 100)
    os.utime(path, (now - age, now - age))
  dead = tmp_path / "entry.pb.tmp123"
  dead.write_bytes(b"x")
  os.utime(dead, (now - 2 * xla_cache.STALE_TEMPORARY_SECONDS,) * 2)
  writing = tmp_path / "other.pb.tmp456"
  writing.write_bytes(b"x")
  os.utime(writing, (now - 5, now - 5))
  assert xla_cache.prune(str(tmp_path), max_bytes=250, now=now) == 2
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "middle.pb", "new.pb", "other.pb.tmp456"]
  assert xla_cache.prune(str(tmp_path), max_bytes=1000, now=now) == 0


_COMPILE = """
import simclr_tf.tools, tensorflow as tf
@tf.function(jit_compile=True)
def f(x):
  return tf.reduce_sum(tf.sin(x) * 3.0)
print(float(f(tf.ones([7, 5]))))
"""


def _entries(root):
  return [os.path.join(folder, name) for folder, _, names in os.walk(root)
          for name in names if name.endswith(xla_cache.ENTRY_SUFFIX)]


def test_a_compiled_program_is_kept_and_loaded_by_the_next_process(tmp_path):
  env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), PYTHONPATH=REPO)
  env.pop("TF_XLA_FLAGS", None)
  env[xla_cache.ENV_VAR] = "on"
  outputs = []
  for attempt in range(2):
    run = subprocess.run([sys.executable, "-c", _COMPILE], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    outputs.append(float(run.stdout.split()[-1]))
    entries = _entries(tmp_path)
    assert len(entries) == 1, entries
    if attempt == 0:
      # Marked, so that a second compilation (which would write the entry
      # again) shows.
      os.utime(entries[0], (1_000_000, 1_000_000))
  assert os.stat(entries[0]).st_mtime == 1_000_000  # loaded, not rewritten
  assert outputs[0] == outputs[1]
  assert abs(outputs[0] - 35 * 3 * math.sin(1.0)) < 1e-4
