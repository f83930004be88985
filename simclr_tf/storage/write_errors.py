"""Writes that fail (a full disk, a quota, a file size limit): one line.

Checkpoints and exports are written so that a failed write leaves the
previous ones as they were (see `checkpoints.save` and
`export.write_saved_model`); what the failed write left half done is
removed, and `WriteFailedError` says what happened in one line.
"""

import errno

# errno values, and the text TensorFlow's file systems put in their
# messages for them, that mean "no room": a full disk, an exhausted quota,
# a file size limit (RLIMIT_FSIZE, `ulimit -f`).
_NO_ROOM_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_ROOM_TEXT = ("No space left on device", "Disk quota exceeded",
                 "File too large")


class WriteFailedError(RuntimeError):
  """A checkpoint or export could not be written; one-line message."""


def out_of_space(error: BaseException) -> bool:
  """Whether `error` (an OSError or tf.errors.OpError) means no room left."""
  if getattr(error, "errno", None) in _NO_ROOM_ERRNOS:
    return True
  text = getattr(error, "message", None) or str(error)
  return any(marker in text for marker in _NO_ROOM_TEXT)


def reason(error: BaseException) -> str:
  """"no space left on device", or the first line of the error."""
  if out_of_space(error):
    text = getattr(error, "message", None) or str(error)
    for marker in _NO_ROOM_TEXT:
      if marker in text:
        return marker.lower()
    return "no space left on device"
  text = (getattr(error, "message", None) or str(error)).strip()
  return (text.splitlines()[0] if text else type(error).__name__)[:200]
