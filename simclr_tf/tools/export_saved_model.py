r"""Exports a checkpoint or run directory as a reusable SavedModel.

Takes what `--checkpoint` of `simclr_tf.run` takes: a run's model_dir (its
latest checkpoint), a checkpoint prefix, or an export. Pretraining,
fine-tuning and linear-evaluation runs all export; the architecture comes
from the run's `config.json`. See `simclr_tf/export/__init__.py` for what the
SavedModel holds, and docs/export.md for loading it.

  python -m simclr_tf.tools.export_saved_model --checkpoint=runs/demo \
      --export_dir=exports/demo
  python -m simclr_tf.tools.export_saved_model --checkpoint=runs/demo/ckpt-312 \
      --export_dir=exports/demo --overwrite
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from simclr_tf.tools import cli  # noqa: E402

TOOL = "export_saved_model"

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A run's model_dir, a checkpoint prefix or an export.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None,
                                  "Directory to write the SavedModel to.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace an export already at --export_dir.")
flags.mark_flags_as_required(["checkpoint", "export_dir"])


def main(argv) -> int:
  del argv  # Checked by cli.
  # Imported here so flag errors are reported before TensorFlow starts.
  from simclr_tf.checkpoints import pretrained
  from simclr_tf import export

  start = time.time()
  prefix = pretrained.resolve(_CHECKPOINT.value)
  print(f"Exporting {prefix} ...", flush=True)
  meta = export.export_checkpoint(_CHECKPOINT.value, _EXPORT_DIR.value,
                                  overwrite=_OVERWRITE.value)
  export_dir = os.path.abspath(_EXPORT_DIR.value)
  step = meta["global_step"]
  print(f"Wrote {export_dir} (step {step if step is not None else '?'}, "
        f"image size {meta['image_size']}, "
        f"{export.directory_size_mb(export_dir):.1f} MB, "
        f"{time.time() - start:.0f}s).\n"
        f"Outputs: {', '.join(meta['outputs'])}.\n"
        f"Signatures: {export.SERVING_SIGNATURE} (images), "
        f"{export.IMAGE_BYTES_SIGNATURE} (image_bytes).", flush=True)
  return 0


def entry():
  """Console-script entry point."""
  cli.run(TOOL, main, cli.model_tool_errors)


if __name__ == "__main__":
  entry()
