"""SimCLR against raw pixels and a random-init encoder, by the same probe.

After pretraining, `compare` reads the frozen features of the trained
encoder, of the raw pixels and of a randomly initialised encoder of the same
architecture (BatchNorm statistics from training images), on the same train
and eval splits through the same evaluation transform, fits the paper's
linear probe (`linear_probe.run_probe`) to each and writes
`model_dir/probe.json`. The program's summary prints the three.

Imports scikit-learn (through `linear_probe`): import this module only when
the comparison is asked for.
"""

import dataclasses
import json
import os
import time
from typing import Dict

import numpy as np

from simclr_tf.evaluation import baselines
from simclr_tf import export
from simclr_tf.evaluation import features as features_lib
from simclr_tf.evaluation import linear_probe
from simclr_tf.evaluation import sampling
from simclr_tf.storage import files
from simclr_tf.models import simclr

PROBE_FILE = "probe.json"
SIMCLR = "simclr"
# Probed in this order; the summary prints them so.
FEATURES = (SIMCLR, baselines.RAW_PIXELS, baselines.RANDOM_INIT)
# Images the random-init encoder's BatchNorm statistics are averaged over:
# a seeded, class-stratified sample of the train split.
BN_EXAMPLES = 2560


def strengths(num_strengths: int):
  """`num_strengths` log-spaced l2 strengths over the paper's range."""
  if num_strengths == len(linear_probe.PAPER_STRENGTHS):
    return list(linear_probe.PAPER_STRENGTHS)
  return [float(s) for s in np.logspace(-6, 5, num_strengths)]


def compare(config, checkpoint: str, *, log, write_dir=None) -> Dict:
  """Probes SimCLR's features and both baselines on the same data.

  Args:
    config: the pretraining `ExperimentConfig`; `run.probe_num_strengths`
      sets the grid, `run.probe_train_examples` caps the train examples.
    checkpoint: the trained model (a model_dir, checkpoint or export).
    log: function taking one line.
    write_dir: where `probe.json` goes; None is `config.run.model_dir`.

  Returns:
    {feature name: probe result dict} for SIMCLR, RAW_PIXELS, RANDOM_INIT.
  """
  run = config.run
  data_config = dataclasses.replace(
      config.data,
      train_split=config.linear_eval.train_split or config.data.train_split)
  splits = (data_config.train_split, data_config.eval_split)
  model = export.load(checkpoint)
  image_size = data_config.image_size
  bn_batches = baselines.train_image_batches(
      data_config, config.augment, split=data_config.train_split,
      batch_size=run.eval_batch_size, num_examples=BN_EXAMPLES, seed=run.seed)
  forwards = {
      SIMCLR: lambda images: model(images)[simclr.FINAL_AVG_POOL],
      baselines.RAW_PIXELS: baselines.raw_pixels,
      baselines.RANDOM_INIT: baselines.random_init_forward(
          config.model, image_size, seed=run.seed,
          bn_mode=baselines.BN_FROM_TRAIN_IMAGES, bn_batches=bn_batches),
  }
  grid = strengths(run.probe_num_strengths)
  results = {}
  for name in FEATURES:
    start = time.time()
    data = features_lib.split_features(
        forwards[name], data_config, config.augment, splits=splits,
        batch_size=run.eval_batch_size)
    extract_seconds = time.time() - start
    (train_x, train_y), (test_x, test_y) = data[splits[0]], data[splits[1]]
    keep = sampling.capped_indices(train_y, run.probe_train_examples,
                                   seed=run.seed)
    train_x, train_y = train_x[keep], train_y[keep]
    result = linear_probe.run_probe(train_x, train_y, test_x, test_y,
                                    strengths=grid, seed=run.seed)
    result["extract_seconds"] = extract_seconds
    results[name] = result
    log(f"[probe] {linear_probe.format_result(name, result)}  "
        f"({extract_seconds:.0f} s features, {result['seconds']:.0f} s "
        "fitting)")
  files.atomic_write_text(
      os.path.join(write_dir or run.model_dir, PROBE_FILE),
      json.dumps({"checkpoint": checkpoint, "grid": grid,
                  "train_examples_cap": run.probe_train_examples,
                  "train_split": splits[0], "test_split": splits[1],
                  "random_init_bn": baselines.BN_FROM_TRAIN_IMAGES,
                  "results": results}, indent=2, sort_keys=True))
  return results
