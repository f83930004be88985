"""A study's runs as means, standard errors, verdicts and a Markdown table.

The verdict of a finding (one quantity claimed higher than another) is
decided from the standard errors over repeats, never from a single run:

- `holds`: the difference d = mean(better) - mean(worse) exceeds twice its
  standard error (about 95% one-sided confidence under a normal model);
- `does not hold`: d is below minus twice its standard error;
- `within noise`: in between;
- `undecided`: fewer than two repeats on a side, so no standard error;
- `at chance`: a probe finding (`Finding.chance` set) whose two means are
  both within `CHANCE_MARGIN` of guessing: neither feature holds the
  quantity, so their difference, however consistent over seeds, is no
  evidence. The seeds share one test set, so their spread would not show
  that.

The standard error of a mean is the sample standard deviation (ddof 1) over
sqrt(n). For two configurations (independent runs) SE(d) is
sqrt(SE_a^2 + SE_b^2); for two metrics of the same runs the difference is
taken per seed (paired) and SE(d) is that of the paired differences.

Plain Python and numpy: no TensorFlow.
"""

import math
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from simclr_tf.evaluation import studies

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
WITHIN_NOISE = "within noise"
UNDECIDED = "undecided"
AT_CHANCE = "at chance"
# Accuracy (as a fraction) within which of guessing a probe counts as at
# chance: two binomial standard errors of a 25% accuracy on 8,000 test
# rows (the rotation probe of synthetic_shapes: 2,000 images, 4 turns).
CHANCE_MARGIN = 0.01
# Standard errors a difference must clear to decide a verdict.
VERDICT_STANDARD_ERRORS = 2.0


def mean_and_standard_error(values: Sequence[float]):
  """(mean, standard error) of `values`; the error is NaN for one value.

  Raises:
    ValueError: for no values.
  """
  values = np.asarray(list(values), dtype=np.float64)
  if values.size == 0:
    raise ValueError("mean_and_standard_error needs at least one value.")
  if values.size == 1:
    return float(values[0]), math.nan
  return (float(values.mean()),
          float(values.std(ddof=1) / math.sqrt(values.size)))


def verdict(difference: float, standard_error: float) -> str:
  """The verdict rule of the module docstring."""
  if not math.isfinite(standard_error):
    return UNDECIDED
  margin = VERDICT_STANDARD_ERRORS * standard_error
  if difference > margin:
    return HOLDS
  if difference < -margin:
    return DOES_NOT_HOLD
  return WITHIN_NOISE


def _values(runs, configuration, metric) -> Dict[int, float]:
  """{seed: value} of `metric` over the runs of `configuration`."""
  return {run["seed"]: run["metrics"][metric] for run in runs
          if run["name"] == configuration and
          run["metrics"].get(metric) is not None}


def decide(finding: studies.Finding, runs: Sequence[Mapping]) -> Dict:
  """Checks one finding on the runs.

  Args:
    finding: a `studies.Finding`.
    runs: results.json's runs: {"name", "seed", "metrics"}.

  Returns:
    A JSON-ready dict: the claim, both sides with their means and errors,
    the difference, its standard error, the repeats and the verdict.
  """
  (better_name, better_metric), (worse_name, worse_metric) = (
      finding.better, finding.worse)
  better = _values(runs, better_name, better_metric)
  worse = _values(runs, worse_name, worse_metric)
  result = {"claim": finding.claim, "paper": finding.paper,
            "better": {"configuration": better_name,
                       "metric": better_metric},
            "worse": {"configuration": worse_name, "metric": worse_metric}}
  if not better or not worse:
    result.update(difference=None, standard_error=None, verdict=UNDECIDED,
                  repeats=min(len(better), len(worse)))
    return result
  for side, values in (("better", better), ("worse", worse)):
    mean, error = mean_and_standard_error(values.values())
    result[side].update(mean=mean, standard_error=_json_number(error),
                        repeats=len(values))
  if better_name == worse_name:
    seeds = sorted(set(better) & set(worse))
    differences = [better[s] - worse[s] for s in seeds]
    difference, error = mean_and_standard_error(differences)
    result["paired"] = True
  else:
    difference = result["better"]["mean"] - result["worse"]["mean"]
    errors = [mean_and_standard_error(v.values())[1] for v in (better, worse)]
    error = math.sqrt(sum(e * e for e in errors))
    result["paired"] = False
  decided = verdict(difference, error)
  if finding.chance is not None and decided != UNDECIDED and all(
      abs(result[side]["mean"] - finding.chance) < CHANCE_MARGIN
      for side in ("better", "worse")):
    decided = AT_CHANCE
  result.update(difference=difference, standard_error=_json_number(error),
                repeats=min(len(better), len(worse)), verdict=decided)
  return result


def _json_number(value: float) -> Optional[float]:
  return value if math.isfinite(value) else None


def summarize(study: studies.Study, runs: Sequence[Mapping]) -> List[Dict]:
  """Per configuration: {"name", "repeats", "paper_top_1", "metrics":
  {metric: {"mean", "standard_error"}}} over the metrics its runs report."""
  rows = []
  for configuration in study.configurations:
    own = [run for run in runs if run["name"] == configuration.name]
    metrics = {}
    names = sorted({m for run in own for m, v in run["metrics"].items()
                    if v is not None})
    for metric in names:
      values = [run["metrics"][metric] for run in own
                if run["metrics"].get(metric) is not None]
      mean, error = mean_and_standard_error(values)
      metrics[metric] = {"mean": mean, "standard_error": _json_number(error)}
    rows.append({"name": configuration.name, "repeats": len(own),
                 "overrides": dict(configuration.overrides),
                 "paper_top_1": configuration.paper_top_1,
                 "metrics": metrics})
  return rows


def _cell(metric, summary) -> str:
  if summary is None:
    return ""
  mean, error = summary["mean"], summary["standard_error"]
  scale, unit = (100.0, "") if metric in studies.ACCURACY_METRICS else (1.0,
                                                                        "")
  digits = 1 if scale == 100.0 else 3
  text = f"{scale * mean:.{digits}f}"
  if error is not None:
    text += f" ± {scale * error:.{digits}f}"
  return text + unit


def markdown(study: studies.Study, rows: Sequence[Mapping],
             findings: Sequence[Mapping], *, header: str = "") -> str:
  """results.md: the table of means ± standard errors and the verdicts."""
  present = [m for m in studies.TABLE_METRICS
             if any(m in row["metrics"] for row in rows)]
  has_paper = any(row["paper_top_1"] is not None for row in rows)
  lines = [f"# {study.title}", ""]
  if header:
    # Fenced: the command line and the machine, kept as typed.
    lines += ["```text", header, "```", ""]
  lines += ["Accuracies in %, as mean ± standard error over the repeats "
            "(n); alignment, uniformity and effective rank as numbers.", ""]
  columns = ["configuration", "n"] + present + (
      [f"paper ({study.paper_source}), top-1"] if has_paper else [])
  lines.append("| " + " | ".join(columns) + " |")
  lines.append("|" + "---|" * len(columns))
  for row in rows:
    cells = [f"`{row['name']}`", str(row["repeats"])]
    cells += [_cell(m, row["metrics"].get(m)) for m in present]
    if has_paper:
      paper = row["paper_top_1"]
      cells.append("" if paper is None else f"{100 * paper:.1f}")
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "## Findings", "",
            "| finding | difference (points) | SE | n | verdict | paper |",
            "|---|---|---|---|---|---|"]
  for finding in findings:
    difference, error = finding["difference"], finding["standard_error"]
    scale = 100.0 if finding["better"]["metric"] in \
        studies.ACCURACY_METRICS else 1.0
    lines.append("| " + " | ".join([
        finding["claim"],
        "" if difference is None else f"{scale * difference:+.2f}",
        "" if error is None else f"{scale * error:.2f}",
        str(finding["repeats"]), f"**{finding['verdict']}**",
        finding["paper"]]) + " |")
  lines += ["", f"Verdict rule: holds if the difference exceeds "
            f"{VERDICT_STANDARD_ERRORS:g} standard errors, does not hold if "
            f"it is below minus {VERDICT_STANDARD_ERRORS:g}, else within "
            "noise; undecided with one repeat; at chance when both sides "
            f"of a probe are less than {100 * CHANCE_MARGIN:g}% from "
            "guessing.", ""]
  return "\n".join(lines)
