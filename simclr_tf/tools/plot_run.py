r"""PNGs of a run: training curves and a 2-D embedding of eval features.

Reads the TensorBoard event files of --run_dir (and of its linear_eval/
stage) and draws the contrastive loss, the contrast accuracy, the learning
rate and the kNN / linear-head / linear-evaluation accuracy against the
step; embeds the eval split with the run's trained encoder (the data
settings of its config.json) and draws its first two principal components,
coloured by label.

  python -m simclr_tf.tools.plot_run --run_dir=runs/demo
  python -m simclr_tf.tools.plot_run --run_dir=runs/demo --output_dir=docs --noembedding
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from simclr_tf.tools import cli  # noqa: E402

TOOL = "plot_run"

_RUN_DIR = flags.DEFINE_string("run_dir", None, "A pretraining model_dir.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the PNGs go "
                                  "(default: <run_dir>/plots).")
_EMBEDDING = flags.DEFINE_bool("embedding", True, "Also embed the eval "
                               "split with the run's encoder.")
_MAX_POINTS = flags.DEFINE_integer("max_points", 2000, "Eval examples in "
                                   "the embedding plot.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Override the data_dir "
                                "of the run's config.")
flags.mark_flags_as_required(["run_dir"])


def main(argv) -> int:
  del argv  # Checked by cli.
  if _MAX_POINTS.value < 1:
    raise ValueError(f"--max_points must be at least 1. Received: "
                     f"--max_points={_MAX_POINTS.value}")
  import dataclasses

  from simclr_tf.evaluation import plots
  from simclr_tf.storage import run_dir as run_dir_lib
  from simclr_tf.config import ExperimentConfig

  run_dir = _RUN_DIR.value
  if not os.path.isdir(run_dir):
    raise ValueError(f"--run_dir {run_dir} is not a directory.")
  if _EMBEDDING.value:
    stored = run_dir_lib.read_stored_config(run_dir)
    if stored is None:
      raise ValueError(f"{run_dir} has no config.json: pass a model_dir of "
                       "simclr_tf.run, or --noembedding.")
    config = ExperimentConfig.from_dict(stored)
    config = config.replace(run=dataclasses.replace(config.run,
                                                    model_dir=run_dir))
    if _DATA_DIR.value:
      config = config.replace(data=dataclasses.replace(
          config.data, data_dir=_DATA_DIR.value))
    written = plots.write_for_run(config, output_dir=_OUTPUT_DIR.value,
                                  max_points=_MAX_POINTS.value)
  else:
    written = plots.write_run_plots(run_dir, output_dir=_OUTPUT_DIR.value)
  for path in written:
    print(f"{TOOL}: wrote {path}", flush=True)
  return 0


def entry():
  """Console-script entry point."""
  cli.run(TOOL, main, cli.model_tool_errors)


if __name__ == "__main__":
  entry()
