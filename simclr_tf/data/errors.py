"""The data package's user-facing error."""


class DataError(ValueError):
  """Bad data settings or files; the message is one line meant for the user.

  The program layer prints it without a traceback.
  """
