"""What the program and the tools share as absl apps: bad input ends in one
line on stderr and a non-zero exit code, never a traceback, and routine
library log lines stay out of the progress output."""

import logging as logging_std
import sys
from typing import Callable, Optional, Sequence, Tuple, Type

from absl import app
from absl import flags
from absl import logging

USAGE_ERROR = 2
# Training ran but could not finish (a non-finite loss, a lost worker, a
# checkpoint or export that could not be written, e.g. a full disk).
TRAINING_FAILED = 1
# SIGTERM or SIGINT stopped training after a checkpoint of the step it was
# at: rerun the same command to resume. 75 is EX_TEMPFAIL of sysexits.h
# ("temporary failure; the user is invited to retry"), so schedulers and
# scripts can tell it from a failure.
STOPPED_BY_SIGNAL = 75


class _DropRoutineTfdsNotices(logging_std.Filter):
  """tfds warns that every built-in synthetic_shapes size is a "custom data
  configuration"; that is expected, not a problem for the user."""

  def filter(self, record):
    return not record.getMessage().startswith(
        "Using custom data configuration")


def quiet_library_logs() -> None:
  """Keeps library INFO lines (tfds reading files, checkpoint sharding) out
  of the progress lines; warnings, such as skipped images, stay."""
  if not flags.FLAGS.is_parsed() or not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  logging.get_absl_handler().addFilter(_DropRoutineTfdsNotices())


def fail(message: str, status: int = USAGE_ERROR,
         tool: Optional[str] = None) -> int:
  """Prints `[<tool>: ]error: <first line of message>` on stderr.

  Returns:
    `status`, for `return fail(...)` from a main function.
  """
  text = str(message).strip()
  line = text.splitlines()[0] if text else "unknown error"
  prefix = f"{tool}: " if tool else ""
  print(f"{prefix}error: {line}", file=sys.stderr, flush=True)
  return status


def check_at_least(*bounds) -> None:
  """Checks integer flags against their lower bounds.

  Args:
    *bounds: (flag holder, lowest allowed value) pairs.

  Raises:
    ValueError: naming the first flag below its bound.
  """
  for flag, low in bounds:
    if flag.value < low:
      raise ValueError(f"--{flag.name} must be at least {low}. Received: "
                       f"--{flag.name}={flag.value}")


def parse_flags(argv: Sequence[str], tool: Optional[str] = None):
  """Parses argv into the global flags; a bad flag exits with one line.

  absl's own parser prints two lines and exits 1; a bad flag is a usage
  error: one line, exit 2.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    sys.exit(fail(f"{error} (see --helpfull)", tool=tool))


def reject_positional(argv: Sequence[str], tool: Optional[str] = None
                      ) -> Optional[int]:
  """Returns an exit status when argv holds more than the program name."""
  if len(argv) > 1:
    return fail(f"unexpected arguments {list(argv[1:])}: flags look like "
                "--name=value.", tool=tool)
  return None


def model_tool_errors() -> Tuple[Type[BaseException], ...]:
  """The errors meant for the user of a tool that reads a model and data:
  a bad checkpoint or export, config, dataset, run directory or file.
  Imports TensorFlow, so call it only once something was raised."""
  import tensorflow as tf

  from simclr_tf.checkpoints import ours as checkpoints
  from simclr_tf import data as data_lib
  from simclr_tf import export
  from simclr_tf.storage import run_dir
  from simclr_tf.storage import write_errors
  from simclr_tf.config import ConfigError
  return (checkpoints.CheckpointError, export.ExportError, ConfigError,
          data_lib.DataError, run_dir.RunDirError,
          write_errors.WriteFailedError, ValueError, OSError,
          tf.errors.OpError)


def run(tool: str, main: Callable[[Sequence[str]], int],
        user_errors: Callable[[], Tuple[Type[BaseException], ...]]) -> None:
  """Runs `main` as an absl app; user errors become one-line exits.

  Args:
    tool: the program's name, shown before each error.
    main: takes argv, returns the exit code.
    user_errors: returns the exception types whose message is meant for the
      user. Called only when something was raised, so a tool can import
      TensorFlow after its flags are checked.
  """

  def guarded_main(argv):
    status = reject_positional(argv, tool)
    if status is not None:
      return status
    quiet_library_logs()
    try:
      return main(argv)
    except Exception as error:  # pylint: disable=broad-except
      if isinstance(error, user_errors()):
        return fail(str(error), tool=tool)
      raise

  app.run(guarded_main, flags_parser=lambda argv: parse_flags(argv, tool))
