"""The metrics of one finished study run, read from its model_dir.

Every run is measured the same way (the keys are `studies`' constants):

- linear-evaluation top-1/top-5: `model_dir/linear_eval/result.json`;
- the linear head trained beside pretraining: `model_dir/result.json`;
- the L-BFGS probe on h and its baselines (raw pixels, random-init
  encoder): `model_dir/probe.json`;
- the kNN monitor's last accuracy, the last contrast accuracy and entropy:
  the TensorBoard scalars;
- the label-free health signals (alignment, uniformity, effective rank):
  `model_dir/result.json`, or their TensorBoard scalars;
- the study's own L-BFGS probe on h and on g(h), the projection head's
  output (`probe_run`, in `study_probe.json`), which takes the place of
  the program's probe on h when both exist.

Imports TensorFlow (through the event reader and the probe).
"""

import json
import os
from typing import Dict, Optional

from simclr_tf.evaluation import sampling
from simclr_tf.evaluation import studies
from simclr_tf.storage import run_dir as run_dir_lib

# Where each metric is found, by file: (json key path, metric).
_LINEAR_EVAL_KEYS = (("label_top_1_accuracy", studies.LINEAR_EVAL_TOP_1),
                     ("label_top_5_accuracy", studies.LINEAR_EVAL_TOP_5))
_PROBE_KEYS = (("simclr", studies.PROBE_TOP_1),
               ("raw_pixels", studies.RAW_PIXELS_PROBE_TOP_1),
               ("random_init", studies.RANDOM_INIT_PROBE_TOP_1))
_HEALTH = (studies.ALIGNMENT, studies.UNIFORMITY, studies.EFFECTIVE_RANK)
# The TensorBoard tags read for the last value of the run.
_LAST_SCALARS = (("eval/knn_top_1", studies.KNN_TOP_1),
                 ("train/contrast_acc", studies.CONTRAST_ACC),
                 ("train/contrast_entropy", studies.CONTRAST_ENTROPY))
HEALTH_TAG_PREFIX = "health/"
STUDY_PROBE_FILE = "study_probe.json"
# The features the study probes.
H = "h"
G_OF_H = "g(h)"
# The head study also asks how much each feature keeps of a transformation
# applied to the (un-augmented) image: section 4.2's explanation of why h
# beats g(h) is that the contrastive loss makes g(h) drop what the views
# differ by. Each task's classes are these variants of every image.
ORIGINAL = "original"
GRAYSCALE = "grayscale"
VARIANTS = (ORIGINAL, GRAYSCALE, "rotation_90", "rotation_180",
            "rotation_270")
TRANSFORMATIONS = "transformations"
_TASKS = {studies.GRAYSCALE_TASK: (0, 1), studies.ROTATION_TASK: (0, 2, 3, 4)}
# (task, feature) -> metric.
_TASK_METRICS = {
    (studies.GRAYSCALE_TASK, H): studies.GRAYSCALE_PROBE_H_TOP_1,
    (studies.GRAYSCALE_TASK, G_OF_H): studies.GRAYSCALE_PROBE_GH_TOP_1,
    (studies.ROTATION_TASK, H): studies.ROTATION_PROBE_H_TOP_1,
    (studies.ROTATION_TASK, G_OF_H): studies.ROTATION_PROBE_GH_TOP_1,
}


def _read_json(path) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  with open(path) as handle:
    return json.load(handle)


def read_run(model_dir: str) -> Dict[str, Optional[float]]:
  """The metrics a finished run wrote; those it did not write are left out.

  Args:
    model_dir: the run's pretraining model_dir.

  Returns:
    {metric: value}, accuracies as fractions.
  """
  # Imported here: plots needs matplotlib and TensorFlow, the rest of this
  # module does not.
  from simclr_tf.evaluation import plots  # pylint: disable=g-import-not-at-top
  metrics = {}
  linear_eval = _read_json(os.path.join(
      model_dir, run_dir_lib.LINEAR_EVAL_DIR, "result.json"))
  for key, metric in _LINEAR_EVAL_KEYS:
    if linear_eval and key in linear_eval:
      metrics[metric] = float(linear_eval[key])
  pretrain = _read_json(os.path.join(model_dir, "result.json")) or {}
  if "label_top_1_accuracy" in pretrain:
    metrics[studies.PRETRAIN_HEAD_TOP_1] = float(
        pretrain["label_top_1_accuracy"])
  probe = _read_json(os.path.join(model_dir, "probe.json"))
  for key, metric in _PROBE_KEYS:
    if probe and key in probe.get("results", {}):
      metrics[metric] = float(probe["results"][key]["top_1"])
  study_probe = _read_json(os.path.join(model_dir, STUDY_PROBE_FILE)) or {}
  for key, metric in ((H, studies.PROBE_TOP_1),
                      (G_OF_H, studies.PROBE_GH_TOP_1)):
    if key in study_probe:
      metrics[metric] = float(study_probe[key]["top_1"])
  for (task, feature), metric in _TASK_METRICS.items():
    result = study_probe.get(TRANSFORMATIONS, {}).get(task, {}).get(feature)
    if result:
      metrics[metric] = float(result["top_1"])
  series = plots.read_scalars(model_dir)
  for tag, metric in _LAST_SCALARS:
    if tag in series and series[tag][1]:
      metrics[metric] = float(series[tag][1][-1])
  for metric in _HEALTH:
    if metric in pretrain:
      metrics[metric] = float(pretrain[metric])
    elif HEALTH_TAG_PREFIX + metric in series:
      metrics[metric] = float(series[HEALTH_TAG_PREFIX + metric][1][-1])
  return metrics


def image_variants(images):
  """Each of `VARIANTS` of a batch of square NHWC RGB images, in order.

  Grayscale is the luma of `tf.image.rgb_to_grayscale` in all three
  channels, as the colour distortion's random grayscale makes it; the
  rotations turn the image counter-clockwise by 90, 180 and 270 degrees.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  gray = tf.tile(tf.image.rgb_to_grayscale(images), [1, 1, 1, 3])
  return [images, gray] + [tf.image.rot90(images, k) for k in (1, 2, 3)]


def _task_rows(features, labels, variants):
  """Stacks each variant's features as one class of a transformation task."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rows = np.concatenate([features[v] for v in variants])
  classes = np.repeat(np.arange(len(variants)), len(labels))
  return rows, classes


def probe_run(model_dir: str, *, head_output: bool, log) -> Dict:
  """Fits the L-BFGS probe to h and, with `head_output`, to g(h).

  The data, evaluation transform, strength grid and train-example cap of
  the program's own probe (`probe_baselines`), so they compare; both
  features come from one pass over the images. With `head_output` the
  same probe also predicts, from h and from g(h), whether an image was
  turned to grayscale (an augmentation of pretraining, so g(h) is trained
  to ignore it) and by how much it was rotated (0, 90, 180 or 270 degrees;
  not an augmentation here): the balanced tasks of every image's variants.
  Writes `model_dir/study_probe.json`.

  Args:
    model_dir: a finished pretraining run (with its config.json).
    head_output: also probe g(h), the projection head's output, and both
      features for the transformations.
    log: function taking one line.

  Returns:
    {"h": probe result, "g(h)": probe result (with head_output),
    "transformations": {task: {"h": ..., "g(h)": ...}} (with
    head_output)}, each result a `linear_probe.run_probe` dict.
  """
  # pylint: disable=g-import-not-at-top
  from simclr_tf import config as config_lib
  from simclr_tf import export
  from simclr_tf.evaluation import features as features_lib
  from simclr_tf.evaluation import linear_probe
  from simclr_tf.evaluation import probe_baselines
  from simclr_tf.models import simclr
  from simclr_tf.storage import config_file
  from simclr_tf.storage import files
  import tensorflow as tf
  # pylint: enable=g-import-not-at-top
  config = config_lib.ExperimentConfig.from_dict(config_file.read(model_dir))
  run = config.run
  data_config = config.data
  train_split = config.linear_eval.train_split or data_config.train_split
  model = export.load(model_dir)
  outputs = {H: simclr.FINAL_AVG_POOL}
  if head_output:
    outputs[G_OF_H] = simclr.PROJ_HEAD_OUTPUT

  widths = {}

  variants = image_variants if head_output else (lambda images: [images])

  def forward(images):
    # The extractor takes one tensor: the features side by side (variant
    # by variant, then output by output), split again below by their
    # (static) widths.
    parts = []
    for variant in variants(images):
      values = model(variant)
      parts += [values[key] for key in outputs.values()]
    widths.update(zip(outputs, (int(part.shape[-1]) for part in parts)))
    return tf.concat(parts, axis=-1)

  data = features_lib.split_features(
      forward, data_config, config.augment,
      splits=(train_split, data_config.eval_split),
      batch_size=run.eval_batch_size)
  (train_x, train_y), (test_x, test_y) = (data[train_split],
                                          data[data_config.eval_split])
  keep = sampling.capped_indices(train_y, run.probe_train_examples,
                                 seed=run.seed)
  train_x, train_y = train_x[keep], train_y[keep]
  # {(variant index, output name): (train features, test features)}.
  columns, offset = {}, 0
  for variant in range(len(VARIANTS) if head_output else 1):
    for name in outputs:
      part = slice(offset, offset + widths[name])
      offset += widths[name]
      columns[variant, name] = (train_x[:, part], test_x[:, part])
  strengths = probe_baselines.strengths(run.probe_num_strengths)
  results = {}
  for name in outputs:
    train, test = columns[0, name]
    results[name] = linear_probe.run_probe(
        train, train_y, test, test_y, strengths=strengths, seed=run.seed)
    log(f"[probe] {linear_probe.format_result(name, results[name])}")
  if head_output:
    results[TRANSFORMATIONS] = {}
    for task, task_variants in _TASKS.items():
      results[TRANSFORMATIONS][task] = {}
      for name in outputs:
        train = _task_rows({v: columns[v, name][0] for v in task_variants},
                           train_y, task_variants)
        test = _task_rows({v: columns[v, name][1] for v in task_variants},
                          test_y, task_variants)
        result = linear_probe.run_probe(*train, *test, strengths=strengths,
                                        seed=run.seed)
        results[TRANSFORMATIONS][task][name] = result
        log("[probe] " + linear_probe.format_result(f"{task} from {name}",
                                                    result))
  files.atomic_write_text(os.path.join(model_dir, STUDY_PROBE_FILE),
                          json.dumps(results, indent=2, sort_keys=True))
  return results
