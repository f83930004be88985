"""What the export and embedding tools share: running them as absl apps
whose bad input ends in one line on stderr and exit code 2, no traceback."""

import sys
from typing import Callable, Sequence, Tuple, Type

from absl import app
from absl import flags
from absl import logging

USAGE_ERROR = 2


class _DropRoutineTfdsNotices:
  """tfds warns that every built-in synthetic_shapes size is a "custom data
  configuration"; that is expected, not a problem for the user."""

  def filter(self, record):
    return not record.getMessage().startswith(
        "Using custom data configuration")


def fail(tool: str, message: str) -> int:
  """Prints `<tool>: error: <first line of message>` and returns exit 2."""
  line = str(message).strip().splitlines()[0] if str(message).strip() else \
      "unknown error"
  print(f"{tool}: error: {line}", file=sys.stderr, flush=True)
  return USAGE_ERROR


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

  def parse(argv):
    # absl prints two lines and exits 1 on bad flags; this is a usage error.
    try:
      return flags.FLAGS(argv)
    except flags.Error as error:
      sys.exit(fail(tool, f"{error} (see --helpfull)"))

  def guarded_main(argv):
    if len(argv) > 1:
      return fail(tool, f"unexpected arguments {argv[1:]}: flags look like "
                  "--name=value.")
    if not flags.FLAGS["verbosity"].present:
      # tfds and checkpoint INFO lines would drown the progress lines.
      logging.set_verbosity(logging.WARNING)
    logging.get_absl_handler().addFilter(_DropRoutineTfdsNotices())
    try:
      return main(argv)
    except Exception as error:  # pylint: disable=broad-except
      if isinstance(error, user_errors()):
        return fail(tool, str(error))
      raise

  app.run(guarded_main, flags_parser=parse)
