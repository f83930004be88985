"""Image files that the input pipeline skipped, reported once per stage.

Pipelines check each file when they read it (see `encoded_image.inspect`)
and record the unusable ones here from inside `tf.data`, in a process-wide
hash table (graph ops, no Python callback: a `py_function` in the pipeline
can deadlock with the thread that waits for the next batch). A stage
reports them in one line when it ends.
"""

import threading
from typing import Dict, Optional

import tensorflow as tf

from simclr_tf.data import encoded_image

# Files named in the report; the rest are only counted.
MAX_LISTED = 5

_lock = threading.Lock()
_table = None


def _get_table():
  global _table
  with _lock:
    if _table is None:
      with tf.init_scope():
        _table = tf.lookup.experimental.MutableHashTable(
            tf.string, tf.int32, default_value=-1, name="skipped_files")
    return _table


def keep_or_record(name: tf.Tensor, problem: tf.Tensor) -> tf.Tensor:
  """A `Dataset.filter` predicate: True for OK files, else records them.

  Args:
    name: scalar string, the file's name for the report.
    problem: int32 scalar from `encoded_image.inspect`.

  Returns:
    bool scalar tensor.
  """
  table = _get_table()

  def record():
    with tf.control_dependencies([table.insert(name, problem)]):
      return tf.constant(False)
  return tf.cond(tf.equal(problem, encoded_image.OK),
                 lambda: tf.constant(True), record)


def skipped() -> Dict[str, str]:
  """The files skipped since the last `take_report`: name -> reason."""
  table = _get_table()
  keys, values = table.export()
  return {k.decode("utf-8", "replace"):
          encoded_image.PROBLEMS.get(int(v), "unreadable")
          for k, v in zip(keys.numpy(), values.numpy())}


def take_report() -> Optional[str]:
  """One line naming the skipped files, or None; starts a new count.

  Returns:
    e.g. "skipped 3 unreadable image files: a.jpg (truncated), ..." or None.
  """
  table = _get_table()
  items = sorted(skipped().items())
  keys, _ = table.export()
  table.remove(keys)
  if not items:
    return None
  listed = ", ".join(f"{name} ({reason})" for name, reason in
                     items[:MAX_LISTED])
  more = len(items) - MAX_LISTED
  return (f"skipped {len(items)} unreadable image file(s): {listed}"
          + (f" and {more} more" if more > 0 else ""))
