"""A study's figure, drawn like the paper's: bars, a heat map or lines.

Imports matplotlib (Agg backend); import it only to draw.
"""

import math
import textwrap
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402

from simclr_tf.evaluation import studies  # noqa: E402

FIGURE_FILE = "results.png"
DPI = 100
# Characters of a subtitle line at fontsize 10 across the 9-inch figure.
_SUBTITLE_CHARACTERS = 110


def _mean(row, metric):
  summary = row["metrics"].get(metric)
  if summary is None:
    return math.nan, 0.0
  error = summary["standard_error"]
  # One repeat has no standard error: no bar drawn, rather than one of 0.
  return 100 * summary["mean"], (math.nan if error is None else 100 * error)


def _bars(study, rows, axis):
  metrics = [m for m in (studies.LINEAR_EVAL_TOP_1, studies.PROBE_TOP_1,
                         studies.PROBE_GH_TOP_1, studies.KNN_TOP_1)
             if any(m in row["metrics"] for row in rows)]
  has_paper = any(row["paper_top_1"] is not None for row in rows)
  groups = metrics + (["paper"] if has_paper else [])
  width = 0.8 / max(len(groups), 1)
  positions = np.arange(len(rows))
  highest = 0.0
  for index, metric in enumerate(groups):
    if metric == "paper":
      values = [100 * row["paper_top_1"] if row["paper_top_1"] is not None
                else math.nan for row in rows]
      errors = None
      label = f"paper, ImageNet ({study.paper_source})"
    else:
      values, errors = zip(*[_mean(row, metric) for row in rows])
      label = metric.replace("_", " ")
    highest = max([highest] + [v for v in values if math.isfinite(v)])
    axis.bar(positions + (index - (len(groups) - 1) / 2) * width, values,
             width, yerr=errors, capsize=3, label=label,
             hatch="//" if metric == "paper" else None)
  axis.set_xticks(positions)
  axis.set_xticklabels([row["name"] for row in rows], rotation=30,
                       ha="right")
  axis.set_ylabel("top-1 accuracy (%), mean ± SE")
  # Room above the bars, so that the legend hides none of them.
  axis.set_ylim(0, 1.3 * highest if highest > 0 else 1.0)
  axis.legend(fontsize=8, loc="upper center", ncol=len(groups))


def _heat_map(rows, axis, figure):
  names = list(studies.AUGMENTATIONS)
  grid = np.full((len(names), len(names)), np.nan)
  by_name = {row["name"]: row for row in rows}
  for i, first in enumerate(names):
    for j, second in enumerate(names[i:], start=i):
      row = by_name.get(studies.augmentation_name(first, second))
      if row is not None and row["repeats"]:
        grid[i, j] = _mean(row, studies.LINEAR_EVAL_TOP_1)[0]
  image = axis.imshow(grid, cmap="viridis")
  for (i, j), value in np.ndenumerate(grid):
    if math.isfinite(value):
      axis.text(j, i, f"{value:.1f}", ha="center", va="center",
                color="white", fontsize=8)
  axis.set_xticks(range(len(names)))
  axis.set_xticklabels(names, rotation=30, ha="right")
  axis.set_yticks(range(len(names)))
  axis.set_yticklabels(names)
  axis.set_xlabel("2nd transformation")
  axis.set_ylabel("1st transformation")
  figure.colorbar(image, ax=axis, label="linear eval top-1 (%)")


def _lines(rows, axis, base_epochs):
  for batch in studies.BATCH_SIZES:
    points = []
    for factor in studies.EPOCH_FACTORS:
      row = next((r for r in rows if r["name"] ==
                  studies.batch_size_name(batch, factor)), None)
      if row is not None and row["repeats"]:
        mean, error = _mean(row, studies.LINEAR_EVAL_TOP_1)
        points.append((factor * base_epochs, mean, error))
    if points:
      x, y, errors = zip(*points)
      axis.errorbar(x, y, yerr=errors, marker="o", capsize=3,
                    label=f"batch {batch}")
  axis.set_xlabel("training epochs")
  axis.set_ylabel("linear eval top-1 (%), mean ± SE")
  axis.legend(fontsize=8)


def draw(study: studies.Study, rows: Sequence[Mapping], path: str, *,
         base_epochs: int = 1, subtitle: str = "") -> str:
  """Draws the study's figure to `path` (PNG).

  Args:
    study: the `studies.Study`.
    rows: `study_tables.summarize` output.
    path: the PNG to write.
    base_epochs: the base's train_epochs (the batch-size study's x axis).
    subtitle: a second title line (data, budget).

  Returns:
    `path`.
  """
  figure, axis = plt.subplots(figsize=(9, 6), dpi=DPI)
  if study.figure == studies.HEAT_MAP:
    _heat_map(rows, axis, figure)
  elif study.figure == studies.LINES:
    _lines(rows, axis, base_epochs)
  else:
    _bars(study, rows, axis)
  # A subtitle holds a command line, longer than the figure is wide: wrapped
  # at spaces, so that no flag is cut off at the edges.
  lines = [study.title] + textwrap.wrap(subtitle, width=_SUBTITLE_CHARACTERS)
  axis.set_title("\n".join(lines), fontsize=10)
  figure.tight_layout()
  figure.savefig(path)
  plt.close(figure)
  return path
