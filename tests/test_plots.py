"""simclr_tf.evaluation.plots and tools/plot_run.py: PNGs that open, with labels."""

import logging
import os
import warnings

import numpy as np
import PIL.Image
import tensorflow as tf

from simclr_tf.evaluation import plots


def _write_events(directory, tags_steps):
  writer = tf.summary.create_file_writer(str(directory))
  with writer.as_default():
    for tag, steps in tags_steps.items():
      for step in steps:
        tf.summary.scalar(tag, 0.5 + 0.01 * step, step=step)
  writer.close()


def test_scalars_are_read_from_the_run_and_its_linear_eval(tmp_path):
  _write_events(tmp_path, {"train/contrast_loss": [3, 1, 2],
                           "eval/knn_top_1": [2]})
  _write_events(tmp_path / "linear_eval", {"learning_rate": [1, 2]})
  series = plots.read_scalars(str(tmp_path))
  assert series["train/contrast_loss"][0] == [1, 2, 3]
  np.testing.assert_allclose(series["train/contrast_loss"][1],
                             [0.51, 0.52, 0.53], rtol=1e-6)
  assert series["eval/knn_top_1"][0] == [2]
  assert series["linear_eval:learning_rate"][0] == [1, 2]


def test_legacy_simple_value_scalars_are_read_too(tmp_path):
  """TF1-style Summary protos carry `simple_value`, not a tensor."""
  writer = tf.summary.create_file_writer(str(tmp_path))
  with writer.as_default():
    for step, number in ((2, 0.25), (1, 0.75)):
      summary = tf.compat.v1.Summary(value=[tf.compat.v1.Summary.Value(
          tag="learning_rate", simple_value=number)])
      tf.summary.experimental.write_raw_pb(summary.SerializeToString(),
                                           step=step)
  writer.close()
  assert plots.read_scalars(str(tmp_path)) == {
      "learning_rate": ([1, 2], [0.75, 0.25])}


def _deprecation_messages(caplog, read):
  """Deprecation lines logged (TF's logger, absl) or warned by `read()`."""
  # TF logs each deprecated function's warning once per process; forget the
  # earlier ones so that a deprecated call here would log again.
  from tensorflow.python.util import deprecation  # pylint: disable=g-import-not-at-top
  deprecation._PRINTED_WARNING.clear()  # pylint: disable=protected-access
  caplog.clear()
  with caplog.at_level(logging.DEBUG), \
      warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    read()
  lines = [r.getMessage() for r in caplog.records]
  lines += [str(w.message) for w in caught]
  return [line for line in lines if "deprecat" in line.lower()]


def test_reading_the_events_logs_no_deprecation_warning(tmp_path, caplog):
  _write_events(tmp_path, {"train/contrast_loss": [1, 2]})
  # The check can fail: the reader plots.py used before logs one.
  old_reader = lambda: list(tf.compat.v1.train.summary_iterator(  # noqa: E731
      os.path.join(str(tmp_path), os.listdir(str(tmp_path))[0])))
  assert _deprecation_messages(caplog, old_reader)
  assert _deprecation_messages(
      caplog, lambda: plots.read_scalars(str(tmp_path))) == []


def test_curves_png_has_the_size_labels_and_legends(tmp_path):
  _write_events(tmp_path, {"train/contrast_loss": range(1, 11),
                           "train/contrast_acc": range(1, 11),
                           "learning_rate": range(1, 11),
                           "eval/knn_top_1": [5, 10]})
  figure = plots.curves_figure(plots.read_scalars(str(tmp_path)))
  axes = figure.axes
  assert [a.get_title() for a in axes] == [
      "Contrastive loss", "Contrast accuracy", "Learning rate", "Accuracy"]
  assert all(a.get_xlabel().startswith("step") for a in axes)
  assert [a.get_ylabel() for a in axes] == [
      "NT-Xent loss", "positive ranked first", "learning rate",
      "top-1 accuracy"]
  legends = [[t.get_text() for t in a.get_legend().get_texts()]
             for a in axes]
  assert legends[0] == ["contrastive loss (train)"]
  assert legends[3] == ["kNN top-1 (eval split)"]
  # The kNN line holds the logged points.
  x, y = axes[3].get_lines()[0].get_data()
  assert list(x) == [5, 10]
  np.testing.assert_allclose(y, [0.55, 0.6], rtol=1e-6)
  path = plots.save(figure, str(tmp_path / "curves.png"))
  with PIL.Image.open(path) as image:
    assert image.format == "PNG"
    assert image.size == (1000, 750)


def test_embedding_png_colours_each_class_with_a_legend(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat([0, 1, 2], 30)
  features = rng.normal(size=(90, 16)) + 5.0 * np.eye(16)[labels]
  points = plots.pca_2d(features)
  # The first component carries the most variance, as PCA's does.
  assert points[:, 0].var() >= points[:, 1].var()
  centred = features - features.mean(axis=0)
  total = np.linalg.svd(centred, compute_uv=False)[:2] ** 2 / 90
  np.testing.assert_allclose(points.var(axis=0), total, rtol=1e-6)
  figure = plots.embedding_figure(points, labels,
                                  class_names=["a", "b", "c"])
  axis = figure.axes[0]
  assert axis.get_xlabel() == "principal component 1"
  assert axis.get_ylabel() == "principal component 2"
  assert [t.get_text() for t in axis.get_legend().get_texts()] == [
      "a", "b", "c"]
  assert [len(c.get_offsets()) for c in axis.collections] == [30, 30, 30]
  written = plots.write_run_plots(str(tmp_path), features, labels,
                                  max_points=60)
  assert [os.path.basename(p) for p in written] == [
      plots.CURVES_FILE, plots.EMBEDDING_FILE]
  with PIL.Image.open(written[1]) as image:
    assert image.size == (700, 600)
  with PIL.Image.open(written[0]) as image:  # no events: empty panels
    assert image.size == (1000, 750)
