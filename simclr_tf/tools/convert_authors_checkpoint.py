r"""Converts an authors' TF2 SavedModel or training checkpoint to ours.

The architecture is read from the authors' variables (see
`simclr_tf/checkpoints/authors.py`). `--to=export` writes one of our
SavedModels (every loader of docs/export.md);
`--to=checkpoint` writes a model_dir holding `ckpt-<step>` and `config.json`,
which `--checkpoint` of `simclr_tf.run` takes with any of our flags and
Python loads with `simclr_tf.export.load`.

  python -m simclr_tf.tools.convert_authors_checkpoint \
      --checkpoint=r50_1x_sk0/saved_model --to=checkpoint --output=r50_1x
  python -m simclr_tf.tools.convert_authors_checkpoint \
      --checkpoint=authors_run/ckpt-20 --to=export --output=exports/r18
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from simclr_tf.tools import cli  # noqa: E402

TOOL = "convert_authors_checkpoint"
EXPORT = "export"
CHECKPOINT = "checkpoint"

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "The authors' SavedModel directory (or one holding "
    "saved_model/), checkpoint prefix (ckpt-N) or model_dir.")
_TO = flags.DEFINE_enum("to", CHECKPOINT, [CHECKPOINT, EXPORT],
                        "Write a model_dir with a checkpoint of ours, or "
                        "one of our SavedModel exports.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace what is at --output.")
flags.mark_flags_as_required(["checkpoint", "output"])


class ConvertError(ValueError):
  """Bad input for the conversion, with a one-line message."""


def main(argv) -> int:
  del argv  # Checked by cli.
  # Imported here so flag errors are reported before TensorFlow starts.
  from simclr_tf.checkpoints import authors as authors_checkpoint
  from simclr_tf.checkpoints import ours as checkpoints
  from simclr_tf import export

  start = time.time()
  path, output = _CHECKPOINT.value, _OUTPUT.value
  source = authors_checkpoint.open_source(path)
  if source is None:
    raise ConvertError(
        f"--checkpoint {path}: not a SavedModel or training checkpoint of "
        "the authors' tf2/ code (nothing to convert).")
  print(f"{source.name()}: {source.architecture.describe()}.", flush=True)
  if _TO.value == EXPORT:
    export.export_checkpoint(path, output, overwrite=_OVERWRITE.value)
    written = f"the export {os.path.abspath(output)}"
  else:
    prefix = authors_checkpoint.convert_to_checkpoint(
        source, output, overwrite=_OVERWRITE.value)
    written = f"{prefix} and its {checkpoints.CONFIG_FILE}"
  print(f"Wrote {written} ({time.time() - start:.0f}s).", flush=True)
  return 0


def _user_errors():
  return (ConvertError,) + cli.model_tool_errors()


def entry():
  """Console-script entry point."""
  cli.run(TOOL, main, _user_errors)


if __name__ == "__main__":
  entry()
