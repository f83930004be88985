r"""The paper's linear probe (appendix B.8) of a model, or of a baseline.

Extracts frozen features of the train and test splits (the evaluation
transform, as `tools/embed.py` does, through `simclr_tf.evaluation.features`), fits an
l2-regularised multinomial logistic regression with L-BFGS
(`simclr_tf.evaluation.linear_probe`), with the l2 strength chosen from 45 log-spaced
values in [1e-6, 1e5] on a held-out 20% of the train split, refits on the
whole train split and reports test top-1 / top-5, the chosen strength and C
(C = 1 / (strength * n), see `simclr_tf.evaluation.linear_probe`), and writes a JSON
result.

  python -m simclr_tf.tools.linear_probe --checkpoint=runs/demo \
      --dataset=synthetic_shapes --output=runs/demo/probe.json
  python -m simclr_tf.tools.linear_probe --checkpoint=runs/demo --baseline=raw_pixels \
      --dataset=synthetic_shapes --output=runs/demo/probe_raw_pixels.json
  python -m simclr_tf.tools.linear_probe --checkpoint=runs/demo --baseline=random_init \
      --dataset=synthetic_shapes --output=runs/demo/probe_random_init.json

The dataset flags are the program's (`DataConfig`'s settings), with its
defaults: --dataset is imagenet2012 unless given.

--baseline=random_init builds the --checkpoint's architecture afresh
(--seed) and, by default, sets its BatchNorm statistics from
--bn_examples training images (--random_init_bn=train_images);
--random_init_bn=initial keeps the initial mean 0 / variance 1.
--baseline=raw_pixels needs --checkpoint or --image_size only for the size.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from simclr_tf import config as config_lib  # noqa: E402
from simclr_tf.tools import cli  # noqa: E402
from simclr_tf.tools import dataset_flags  # noqa: E402
from simclr_tf.tools import setting_flags  # noqa: E402

# The dataset and image flags are listed by --help too.
flags.adopt_module_key_flags(setting_flags)
flags.adopt_module_key_flags(dataset_flags)

TOOL = "linear_probe"
_NONE = "none"

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "The model: an export directory, a checkpoint prefix "
    "or a run's model_dir. For --baseline=random_init, the architecture.")
_BASELINE = flags.DEFINE_enum(
    "baseline", _NONE, [_NONE, "raw_pixels", "random_init"],
    "Probe a baseline instead of the model: raw_pixels or random_init.")
_RANDOM_INIT_BN = flags.DEFINE_enum(
    "random_init_bn", "train_images", ["train_images", "initial"],
    "random_init: BatchNorm statistics from training images, or the "
    "initial mean 0 / variance 1.")
_BN_EXAMPLES = flags.DEFINE_integer(
    "bn_examples", 2560, "random_init: training images the BatchNorm "
    "statistics are averaged over (a seeded class-stratified sample).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random init, of "
                             "the held-out split and of the train cap.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON result file to write.")
_OUTPUT_KEY = flags.DEFINE_string(
    "output_key", "final_avg_pool", "The model output probed.")
# The program's split settings (names, defaults, help): the probe is fitted,
# and its strength chosen, on --train_split and scored on --eval_split.
setting_flags.define_setting_flags(
    [("data", config_lib.DataConfig)], flags.FLAGS,
    only=("train_split", "eval_split"))
# The name this tool gave --eval_split before it took the program's.
flags.DEFINE_alias("test_split", "eval_split")
_TRAIN_SPLIT = flags.FLAGS["train_split"]
_EVAL_SPLIT = flags.FLAGS["eval_split"]
_IMAGE_SIZE = dataset_flags.IMAGE_SIZE
_BATCH_SIZE = dataset_flags.BATCH_SIZE
_MAX_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "max_train_examples", 0, "Fit on at most this many train examples, a "
    "seeded (--seed) class-stratified sample; 0 uses all.")
_NUM_STRENGTHS = flags.DEFINE_integer(
    "num_strengths", 45, "Grid size: log-spaced l2 strengths between "
    "--min_strength and --max_strength (the paper: 45).")
_MIN_STRENGTH = flags.DEFINE_float("min_strength", 1e-6, "Smallest l2 "
                                   "strength of the grid.")
_MAX_STRENGTH = flags.DEFINE_float("max_strength", 1e5, "Largest l2 "
                                   "strength of the grid.")
_HOLDOUT_FRACTION = flags.DEFINE_float(
    "holdout_fraction", 0.2, "Share of the train split held out to choose "
    "the strength.")
_MAX_ITER = flags.DEFINE_integer("max_iter", 1000, "L-BFGS iterations per "
                                 "fit.")
flags.mark_flags_as_required(["output"])


def _check_flags() -> None:
  if not _OUTPUT.value.endswith(".json"):
    raise ValueError(f"--output must be a .json file. Received: "
                     f"--output={_OUTPUT.value}")
  if _BASELINE.value != "raw_pixels" and not _CHECKPOINT.value:
    raise ValueError("--checkpoint is required (the model, or for "
                     "--baseline=random_init its architecture).")
  if _BASELINE.value == "raw_pixels" and not (_CHECKPOINT.value or
                                              _IMAGE_SIZE.value):
    raise ValueError("--baseline=raw_pixels needs --image_size (or "
                     "--checkpoint, for its image size).")
  cli.check_at_least((_BATCH_SIZE, 1), (_NUM_STRENGTHS, 1),
                      (_BN_EXAMPLES, 1), (_MAX_ITER, 1),
                      (_MAX_TRAIN_EXAMPLES, 0), (_IMAGE_SIZE, 0))
  if not 0 < _MIN_STRENGTH.value <= _MAX_STRENGTH.value:
    raise ValueError("--min_strength and --max_strength must be positive, "
                     f"min <= max. Received: --min_strength="
                     f"{_MIN_STRENGTH.value}, --max_strength="
                     f"{_MAX_STRENGTH.value}")


def main(argv) -> int:
  del argv  # Checked by cli.
  _check_flags()
  import numpy as np
  import tensorflow_datasets as tfds

  from simclr_tf.evaluation import baselines
  from simclr_tf import export
  from simclr_tf.evaluation import features as features_lib
  from simclr_tf.evaluation import linear_probe
  from simclr_tf.evaluation import sampling
  from simclr_tf.storage import files
  from simclr_tf.config import AugmentConfig
  from simclr_tf.config import ExperimentConfig

  tfds.disable_progress_bar()
  say = lambda line: print(line, flush=True)  # noqa: E731
  model = run_config = None
  if _CHECKPOINT.value:
    model = export.load(_CHECKPOINT.value)
    run_config = ExperimentConfig.from_dict(model.metadata["config"])
  image_size = _IMAGE_SIZE.value or model.image_size
  augment_config = run_config.augment if run_config else AugmentConfig()
  data_config = dataset_flags.data_config(
      train_split=_TRAIN_SPLIT.value, eval_split=_EVAL_SPLIT.value,
      image_size=image_size)
  if _BASELINE.value == "raw_pixels":
    forward, what = baselines.raw_pixels, "raw pixels"
  elif _BASELINE.value == "random_init":
    bn_batches = baselines.train_image_batches(
        data_config, augment_config, split=_TRAIN_SPLIT.value,
        batch_size=_BATCH_SIZE.value, num_examples=_BN_EXAMPLES.value,
        seed=_SEED.value)
    forward = baselines.random_init_forward(
        run_config.model, image_size, seed=_SEED.value,
        bn_mode=_RANDOM_INIT_BN.value, bn_batches=bn_batches, log=say)
    what = (f"random-init encoder (BatchNorm statistics: "
            f"{_RANDOM_INIT_BN.value})")
  else:
    if _OUTPUT_KEY.value not in model.output_keys:
      raise ValueError(f"--output_key {_OUTPUT_KEY.value!r} is not an "
                       f"output of {_CHECKPOINT.value}; it has: "
                       f"{', '.join(model.output_keys)}.")
    forward = lambda images: model(images)[_OUTPUT_KEY.value]  # noqa: E731
    what = f"{_CHECKPOINT.value} ({_OUTPUT_KEY.value})"
  splits = features_lib.split_features(
      forward, data_config, augment_config,
      splits=(_TRAIN_SPLIT.value, _EVAL_SPLIT.value),
      batch_size=_BATCH_SIZE.value, log=say, log_every=20)
  train_x, train_y = splits[_TRAIN_SPLIT.value]
  keep = sampling.capped_indices(train_y, _MAX_TRAIN_EXAMPLES.value,
                                 seed=_SEED.value)
  train_x, train_y = train_x[keep], train_y[keep]
  test_x, test_y = splits[_EVAL_SPLIT.value]
  strengths = [float(s) for s in np.logspace(
      np.log10(_MIN_STRENGTH.value), np.log10(_MAX_STRENGTH.value),
      _NUM_STRENGTHS.value)]
  result = linear_probe.run_probe(
      train_x, train_y, test_x, test_y, strengths=strengths,
      holdout_fraction=_HOLDOUT_FRACTION.value, seed=_SEED.value,
      max_iter=_MAX_ITER.value, log=say)
  result.update(
      features=what, baseline=_BASELINE.value,
      checkpoint=_CHECKPOINT.value and os.path.abspath(_CHECKPOINT.value),
      dataset=data_config.dataset, train_split=_TRAIN_SPLIT.value,
      test_split=_EVAL_SPLIT.value, image_size=image_size,
      random_init_bn=(_RANDOM_INIT_BN.value
                      if _BASELINE.value == "random_init" else None),
      command=" ".join(sys.argv))
  output = os.path.abspath(_OUTPUT.value)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  files.atomic_write_text(output, json.dumps(result, indent=2,
                                               sort_keys=True))
  say(f"{TOOL}: {what}: test top-1 {100 * result['top_1']:.2f}%  top-5 "
      f"{100 * result['top_5']:.2f}% on {result['num_test']} examples; l2 "
      f"strength {result['strength']:.3g} (C {result['C']:.3g}) chosen on "
      f"{result['num_holdout']} held-out train examples "
      f"({result['seconds']:.0f} s fitting). Wrote {output}.")
  return 0


def entry():
  """Console-script entry point."""
  cli.run(TOOL, main, cli.model_tool_errors)


if __name__ == "__main__":
  entry()
