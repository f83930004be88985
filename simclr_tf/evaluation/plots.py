"""PNG pictures of a run: training curves and a 2-D embedding of features.

`read_scalars` reads the TensorBoard event files of a run directory (and of
its `linear_eval/` stage); `curves_figure` draws the contrastive loss, the
contrast accuracy, the learning rate and the accuracies (kNN, linear head,
linear evaluation) against the step; `embedding_figure` draws eval features
projected on their first two principal components, coloured by label.

The only library module that imports matplotlib (with the Agg backend: no
display needed); import it only to draw.
"""

import os
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
# TensorBoard's own event reader. tf.compat.v1.train.summary_iterator logs
# a deprecation warning (for tf_record_iterator) at the end of a run; this
# reader opens event files without one, and stops cleanly at a truncated
# last record (a file still being written).
from tensorboard.backend.event_processing import event_file_loader  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

from simclr_tf.storage import run_dir as run_dir_lib  # noqa: E402

CURVES_FILE = "training_curves.png"
EMBEDDING_FILE = "embedding.png"
PLOTS_DIR = "plots"
LINEAR_EVAL_DIR = run_dir_lib.LINEAR_EVAL_DIR
# Figure sizes in inches at DPI dots per inch: 1000 x 750 and 700 x 600 px.
DPI = 100
CURVES_SIZE = (10, 7.5)
EMBEDDING_SIZE = (7, 6)

# (panel title, y label, [(tag, legend label), ...]).
_PANELS = (
    ("Contrastive loss", "NT-Xent loss",
     [("train/contrast_loss", "contrastive loss (train)")]),
    ("Contrast accuracy", "positive ranked first",
     [("train/contrast_acc", "contrast accuracy (train)")]),
    ("Learning rate", "learning rate",
     [("learning_rate", "pretraining"),
      (LINEAR_EVAL_DIR + ":learning_rate", "linear evaluation")]),
    ("Accuracy", "top-1 accuracy",
     [("eval/knn_top_1", "kNN top-1 (eval split)"),
      ("train/supervised_acc", "linear head while pretraining (train)"),
      ("eval/label_top_1_accuracy", "linear head while pretraining (eval)"),
      (LINEAR_EVAL_DIR + ":eval/label_top_1_accuracy",
       "linear evaluation (eval)")]),
)

Series = Dict[str, Tuple[List[int], List[float]]]


def _read_dir(directory, prefix, series):
  if not tf.io.gfile.isdir(directory):
    return
  for name in sorted(tf.io.gfile.listdir(directory)):
    if not name.startswith("events.out.tfevents"):
      continue
    # EventFileLoader also migrates legacy `simple_value` scalars to
    # tensors, so both kinds come out alike.
    loader = event_file_loader.EventFileLoader(os.path.join(directory, name))
    for event in loader.Load():
      for value in event.summary.value:
        if value.HasField("tensor") and not value.tensor.string_val:
          number = tensor_util.make_ndarray(value.tensor)
          if number.size != 1:
            continue
          number = float(number)
        elif value.HasField("simple_value"):
          number = value.simple_value
        else:
          continue
        steps, values = series.setdefault(prefix + value.tag, ([], []))
        steps.append(int(event.step))
        values.append(number)


def read_scalars(run_dir: str) -> Series:
  """Scalar summaries of a run and of its linear evaluation.

  Args:
    run_dir: a pretraining `model_dir`.

  Returns:
    {tag: (steps, values)} sorted by step; the linear evaluation's tags are
    prefixed "linear_eval:".
  """
  series = {}
  _read_dir(run_dir, "", series)
  _read_dir(os.path.join(run_dir, LINEAR_EVAL_DIR), LINEAR_EVAL_DIR + ":",
            series)
  ordered = {}
  for tag, (steps, values) in series.items():
    order = np.argsort(steps, kind="stable")
    ordered[tag] = ([steps[i] for i in order], [values[i] for i in order])
  return ordered


def curves_figure(series: Series):
  """Training curves, one panel per quantity, against the step.

  Args:
    series: `read_scalars` output.

  Returns:
    A matplotlib `Figure` of 2 x 2 panels, each with labelled axes and a
    legend (panels without data say so).
  """
  figure, axes = plt.subplots(2, 2, figsize=CURVES_SIZE, dpi=DPI)
  for axis, (title, y_label, lines) in zip(axes.flat, _PANELS):
    drawn = 0
    for tag, label in lines:
      if tag in series:
        steps, values = series[tag]
        marker = "o" if len(steps) < 30 else None
        axis.plot(steps, values, label=label, marker=marker, markersize=3)
        drawn += 1
    if not drawn:
      axis.text(0.5, 0.5, "not logged in this run", ha="center",
                va="center", transform=axis.transAxes)
      axis.plot([], [], label="(no data)")
    axis.set_title(title)
    axis.set_xlabel("step (each stage counts its own)" if
                    title == "Learning rate" else "step")
    axis.set_ylabel(y_label)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
  figure.tight_layout()
  return figure


def pca_2d(features) -> np.ndarray:
  """Features projected on their first two principal components."""
  features = np.asarray(features, np.float64).reshape(len(features), -1)
  centred = features - features.mean(axis=0)
  _, _, components = np.linalg.svd(centred, full_matrices=False)
  return centred @ components[:2].T


def embedding_figure(points, labels, *, class_names: Optional[List[str]] =
                     None, title="Eval features, first two principal "
                     "components"):
  """A scatter plot of 2-D points coloured by label.

  Args:
    points: (N, 2) coordinates (e.g. `pca_2d(features)`).
    labels: (N,) class ids; negative ids are drawn as "unlabeled".
    class_names: names of the classes, or None for "class <id>".
    title: the figure title.

  Returns:
    A matplotlib `Figure` with labelled axes and a legend of classes.
  """
  points, labels = np.asarray(points), np.asarray(labels)
  figure, axis = plt.subplots(figsize=EMBEDDING_SIZE, dpi=DPI)
  colours = plt.get_cmap("tab20" if labels.max(initial=0) >= 10 else
                         "tab10")
  for label in np.unique(labels):
    chosen = labels == label
    name = ("unlabeled" if label < 0 else
            class_names[label] if class_names else f"class {label}")
    axis.scatter(points[chosen, 0], points[chosen, 1], s=6, alpha=0.7,
                 color=colours(int(label) % colours.N), label=name)
  axis.set_title(title)
  axis.set_xlabel("principal component 1")
  axis.set_ylabel("principal component 2")
  axis.legend(fontsize=8, markerscale=2, loc="best")
  figure.tight_layout()
  return figure


def save(figure, path: str) -> str:
  """Writes `figure` as a PNG (its own size and DPI) and closes it."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, format="png", dpi=DPI)
  plt.close(figure)
  return path


def write_run_plots(run_dir: str, features=None, labels=None, *,
                    output_dir: Optional[str] = None,
                    class_names=None, max_points: int = 2000) -> List[str]:
  """Writes the curves (and, given features, the embedding) PNGs.

  Args:
    run_dir: the run's model_dir.
    features: (N, d) eval features, or None to skip the embedding.
    labels: (N,) their class ids.
    output_dir: where the PNGs go; None is `run_dir/plots`.
    class_names: class names for the legend, or None.
    max_points: plot at most this many (the first) points.

  Returns:
    The paths written.
  """
  output_dir = output_dir or os.path.join(run_dir, PLOTS_DIR)
  written = [save(curves_figure(read_scalars(run_dir)),
                  os.path.join(output_dir, CURVES_FILE))]
  if features is not None:
    features, labels = features[:max_points], labels[:max_points]
    written.append(save(
        embedding_figure(pca_2d(features), labels, class_names=class_names),
        os.path.join(output_dir, EMBEDDING_FILE)))
  return written


def write_for_run(config, checkpoint: Optional[str] = None, *, log=None,
                  output_dir: Optional[str] = None,
                  max_points: int = 2000) -> List[str]:
  """The curves and the embedding of a run's trained encoder.

  Args:
    config: the run's `ExperimentConfig` (data, transform, model_dir).
    checkpoint: the model to embed with; None is the run's model_dir.
    log: function taking one line, or None.
    output_dir: where the PNGs go; None is `model_dir/plots`.
    max_points: eval examples embedded (a seeded, class-stratified
      sample of the split).

  Returns:
    The paths written.
  """
  # Imported here so that drawing curves alone needs no model code.
  from simclr_tf import export  # pylint: disable=g-import-not-at-top
  from simclr_tf.evaluation import features as features_lib  # pylint: disable=g-import-not-at-top
  from simclr_tf.models import simclr  # pylint: disable=g-import-not-at-top

  run_dir = config.run.model_dir
  model = export.load(checkpoint or run_dir)
  split = config.data.eval_split
  data = features_lib.split_features(
      lambda images: model(images)[simclr.FINAL_AVG_POOL], config.data,
      config.augment, splits=(split,), batch_size=config.run.eval_batch_size,
      max_examples=max_points, seed=config.run.seed)
  written = write_run_plots(run_dir, *data[split], output_dir=output_dir,
                            max_points=max_points)
  if log:
    log(f"[plots] wrote {', '.join(written)}")
  return written
