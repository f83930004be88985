"""The SimCLR paper's ablations, as studies that anyone can rerun.

A study is a list of configurations (a fixed name and the program settings
it changes from the study's base), the paper's figure for each where the
paper gives one, and the findings the paper draws from them, each a claim
that one measured quantity exceeds another. `study_tables` turns the runs'
metrics into means, standard errors and verdicts; `tools/study.py` runs the
configurations as normal training runs.

Paper figures are top-1 linear evaluation on ImageNet (ResNet-50, the
paper's budget), as fractions, from arXiv 2002.05709 (Chen et al. 2020):
Table 1 (colour distortion strength), Table 4 (loss functions), Table 5
(l2 normalisation and temperature). Figures 5, 7, 8 and 9 give their values
only as drawings, so those studies have no number beside ours.

This module is plain Python (no TensorFlow): the definitions can be listed
and checked anywhere.
"""

import dataclasses
import itertools
from typing import Dict, Mapping, Optional, Tuple

# The metrics every run reports (fractions), under these keys.
LINEAR_EVAL_TOP_1 = "linear_eval_top_1"
LINEAR_EVAL_TOP_5 = "linear_eval_top_5"
PRETRAIN_HEAD_TOP_1 = "pretrain_head_top_1"
PROBE_TOP_1 = "probe_top_1"
PROBE_GH_TOP_1 = "probe_gh_top_1"
# The head study's probes of a transformation of the image, from h and from
# g(h): grayscale or not (2 classes), rotation by 0/90/180/270 (4 classes).
GRAYSCALE_TASK = "grayscale"
ROTATION_TASK = "rotation"
GRAYSCALE_PROBE_H_TOP_1 = "grayscale_probe_h_top_1"
GRAYSCALE_PROBE_GH_TOP_1 = "grayscale_probe_gh_top_1"
ROTATION_PROBE_H_TOP_1 = "rotation_probe_h_top_1"
ROTATION_PROBE_GH_TOP_1 = "rotation_probe_gh_top_1"
RAW_PIXELS_PROBE_TOP_1 = "raw_pixels_probe_top_1"
RANDOM_INIT_PROBE_TOP_1 = "random_init_probe_top_1"
KNN_TOP_1 = "knn_top_1"
CONTRAST_ACC = "contrast_acc"
CONTRAST_ENTROPY = "contrast_entropy"
ALIGNMENT = "alignment"
UNIFORMITY = "uniformity"
EFFECTIVE_RANK = "effective_rank"
WALL_SECONDS = "wall_seconds"

# The columns of the results table, in this order (those a study's runs
# report; the others are left out).
TABLE_METRICS = (LINEAR_EVAL_TOP_1, PROBE_TOP_1, PROBE_GH_TOP_1, KNN_TOP_1,
                 GRAYSCALE_PROBE_H_TOP_1, GRAYSCALE_PROBE_GH_TOP_1,
                 ROTATION_PROBE_H_TOP_1, ROTATION_PROBE_GH_TOP_1,
                 CONTRAST_ACC, CONTRAST_ENTROPY, ALIGNMENT, UNIFORMITY,
                 EFFECTIVE_RANK)
# Metrics that are accuracies (shown as percentages).
ACCURACY_METRICS = (LINEAR_EVAL_TOP_1, LINEAR_EVAL_TOP_5, PRETRAIN_HEAD_TOP_1,
                    PROBE_TOP_1, PROBE_GH_TOP_1, RAW_PIXELS_PROBE_TOP_1,
                    RANDOM_INIT_PROBE_TOP_1, KNN_TOP_1, CONTRAST_ACC,
                    GRAYSCALE_PROBE_H_TOP_1, GRAYSCALE_PROBE_GH_TOP_1,
                    ROTATION_PROBE_H_TOP_1, ROTATION_PROBE_GH_TOP_1)

# How a study's figure is drawn (`study_figures`).
BARS = "bars"
HEAT_MAP = "heat_map"
LINES = "lines"

# The base of every study unless the command line overrides it: the demo
# preset, shortened so that one run takes minutes on a 2-core CPU.
BASE_PRESET = "demo"
BASE_OVERRIDES = {
    "train_epochs": "5",
    "linear_eval_train_epochs": "10",
    "knn_eval_every_epochs": "10",
    # The study probes h (and g(h)) itself; the raw-pixel and random-init
    # baselines do not change between configurations.
    "probe_baselines": "false",
    "probe_num_strengths": "8",
    "write_plots": "false",
    # Exports take longer than a short run's training; the probes read the
    # checkpoints.
    "keep_hub_module_max": "0",
}


@dataclasses.dataclass(frozen=True)
class Configuration:
  """One configuration of a study.

  Attributes:
    name: fixed across versions, so results compare.
    overrides: {program flag name: value as on the command line}.
    paper_top_1: the paper's linear-evaluation top-1 (a fraction) for this
      configuration, or None where the paper gives no number.
  """
  name: str
  overrides: Mapping[str, str]
  paper_top_1: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Finding:
  """A claim of the paper: `better` measures higher than `worse`.

  Each side is (configuration name, metric). When both sides are the same
  runs (one configuration, two metrics) the comparison is paired per seed.

  Attributes:
    claim: the finding in words.
    better: the (configuration, metric) the paper says is higher.
    worse: the (configuration, metric) it says is lower.
    paper: the paper's evidence, with its table or figure number.
    chance: for a probe of balanced classes, the accuracy of guessing
      (1 / classes); a comparison of two chance-level accuracies says
      nothing, so such a finding is `at chance` (see `study_tables`).
  """
  claim: str
  better: Tuple[str, str]
  worse: Tuple[str, str]
  paper: str
  chance: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Study:
  """One ablation of the paper.

  Attributes:
    name: the `--study` value.
    title: one line, with the paper's table or figure.
    configurations: in the order of the table and the figure.
    findings: the paper's claims, checked on the runs.
    figure: BARS, HEAT_MAP or LINES.
    varies: the program settings the study sets itself (the command line
      may not override them).
    paper_source: where the paper's numbers come from, or "" for none.
    needs_head_probe: also probe g(h), the projection head's output.
  """
  name: str
  title: str
  configurations: Tuple[Configuration, ...]
  findings: Tuple[Finding, ...]
  figure: str
  varies: Tuple[str, ...]
  paper_source: str = ""
  needs_head_probe: bool = False

  def configuration(self, name: str) -> Configuration:
    for configuration in self.configurations:
      if configuration.name == name:
        return configuration
    raise KeyError(f"study {self.name} has no configuration {name!r}; it "
                   f"has {', '.join(self.names())}")

  def names(self) -> Tuple[str, ...]:
    return tuple(c.name for c in self.configurations)

  def scales(self, setting: str) -> bool:
    """Whether every configuration sets `setting` as a multiple ("x2") of
    the base's value, so the command line may choose that base."""
    values = [c.overrides.get(setting) for c in self.configurations]
    return all(_is_multiple(v) for v in values)


def _greater(claim, better, worse, paper, metric=LINEAR_EVAL_TOP_1,
             worse_metric=None, chance=None):
  return Finding(claim, (better, metric), (worse, worse_metric or metric),
                 paper, chance)


_SECTION_4_2_MECHANISM = (
    "Section 4.2 and Table 3: g can remove information useful downstream, "
    "such as colour or orientation; h predicts the transformation applied "
    "better than g(h)")


def _projection_head() -> Study:
  # The paper's nonlinear head is g(h) = W2 relu(W1 h) (section 2.1): two
  # layers, not the three of SimCLRv2 that the authors' tf2 code and the
  # demo default to. num_proj_layers is used by the nonlinear mode only.
  configurations = (
      Configuration("none", {"proj_head_mode": "none"}),
      Configuration("linear", {"proj_head_mode": "linear"}),
      Configuration("nonlinear", {"proj_head_mode": "nonlinear",
                                  "num_proj_layers": "2"}),
  )
  figure_8 = ("Figure 8: the nonlinear head is 3% above the linear one and "
              "more than 10% above none, at every output dimension")
  findings = (
      _greater("A nonlinear projection head beats a linear one.",
               "nonlinear", "linear", figure_8),
      _greater("A nonlinear projection head beats none.", "nonlinear",
               "none", figure_8),
      _greater("A linear projection head beats none.", "linear", "none",
               figure_8),
      _greater("The representation h before a nonlinear head is better "
               "than z = g(h) after it (L-BFGS probe on each).",
               "nonlinear", "nonlinear",
               "Section 4.2: h is more than 10% above g(h)",
               metric=PROBE_TOP_1, worse_metric=PROBE_GH_TOP_1),
      # The mechanism section 4.2 gives for that: the loss makes g(h)
      # invariant to the augmentations, and g drops what h still holds.
      _greater("h keeps more than g(h) of whether the image was turned to "
               "grayscale (an augmentation; L-BFGS probe, 2 classes).",
               "nonlinear", "nonlinear", _SECTION_4_2_MECHANISM,
               metric=GRAYSCALE_PROBE_H_TOP_1,
               worse_metric=GRAYSCALE_PROBE_GH_TOP_1, chance=1 / 2),
      _greater("h keeps more than g(h) of the image's rotation by 0, 90, "
               "180 or 270 degrees (not an augmentation here; 4 classes).",
               "nonlinear", "nonlinear", _SECTION_4_2_MECHANISM,
               metric=ROTATION_PROBE_H_TOP_1,
               worse_metric=ROTATION_PROBE_GH_TOP_1, chance=1 / 4),
  )
  return Study(
      "projection_head", "Projection head: none, linear, nonlinear (the "
      "paper's Figure 8)", configurations, findings, BARS,
      varies=("proj_head_mode", "num_proj_layers"), needs_head_probe=True)


# Table 5 (ImageNet, 100 epochs): top-1 linear evaluation.
_TABLE_5 = {("l2", "0.05"): 0.597, ("l2", "0.1"): 0.644,
            ("l2", "0.5"): 0.607, ("l2", "1.0"): 0.580,
            ("nol2", "10"): 0.572, ("nol2", "100"): 0.570}


def _temperature() -> Study:
  configurations = tuple(
      Configuration(f"{norm}_tau_{tau}",
                    {"hidden_norm": "true" if norm == "l2" else "false",
                     "temperature": tau}, paper)
      for (norm, tau), paper in _TABLE_5.items())
  table_5 = ("Table 5: l2 with tau 0.1 64.4%, tau 0.05 59.7%, tau 0.5 "
             "60.7%, tau 1 58.0%; without l2 57.2% (tau 10), 57.0% (tau 100)")
  findings = (
      _greater("With l2 normalisation, tau 0.1 beats tau 1.", "l2_tau_0.1",
               "l2_tau_1.0", table_5),
      _greater("With l2 normalisation, tau 0.1 beats tau 0.5.",
               "l2_tau_0.1", "l2_tau_0.5", table_5),
      _greater("With l2 normalisation, tau 0.1 beats tau 0.05 (an optimum, "
               "not a monotone trend).", "l2_tau_0.1", "l2_tau_0.05",
               table_5),
      _greater("l2-normalised embeddings with a tuned tau beat unnormalised "
               "ones (tau 10).", "l2_tau_0.1", "nol2_tau_10", table_5),
      _greater("l2-normalised embeddings with a tuned tau beat unnormalised "
               "ones (tau 100).", "l2_tau_0.1", "nol2_tau_100", table_5),
  )
  return Study(
      "temperature", "l2 normalisation and temperature of NT-Xent (the "
      "paper's Table 5)", configurations, findings, BARS,
      varies=("hidden_norm", "temperature"), paper_source="Table 5")


# Table 4 (ImageNet, 100 epochs, hyperparameters tuned per loss): top-1.
_TABLE_4 = {"nt_xent": 0.639, "nt_logistic": 0.516, "margin_triplet": 0.509,
            "nt_logistic_semihard": 0.579, "margin_triplet_semihard": 0.575}


def _loss() -> Study:
  configurations = []
  for name, paper in _TABLE_4.items():
    loss_type = name.replace("_semihard", "")
    overrides = {"loss_type": loss_type}
    if loss_type != "nt_xent":
      overrides["semihard_negatives"] = str(name.endswith("_semihard")
                                            ).lower()
    configurations.append(Configuration(name, overrides, paper))
  table_4 = ("Table 4: NT-Xent 63.9%, NT-Logistic 51.6% (57.9% with "
             "semi-hard negatives), margin triplet 50.9% (57.5%)")
  findings = tuple(
      _greater(f"NT-Xent beats {other}.", "nt_xent", other, table_4)
      for other in _TABLE_4 if other != "nt_xent") + (
          _greater("Semi-hard negative mining helps NT-Logistic.",
                   "nt_logistic_semihard", "nt_logistic", table_4),
          _greater("Semi-hard negative mining helps the margin triplet "
                   "loss.", "margin_triplet_semihard", "margin_triplet",
                   table_4))
  return Study(
      "loss", "Contrastive loss functions (the paper's Tables 2 and 4)",
      tuple(configurations), findings, BARS,
      varies=("loss_type", "semihard_negatives"), paper_source="Table 4")


# Table 1 (ImageNet, ResNet-50): SimCLR top-1 by colour distortion strength.
_TABLE_1 = (("0.125", False, 0.596), ("0.25", False, 0.610),
            ("0.5", False, 0.626), ("1.0", False, 0.632),
            ("1.0", True, 0.645))


def _color_strength() -> Study:
  configurations = tuple(
      Configuration(f"strength_{strength}" + ("_blur" if blur else ""),
                    {"color_jitter_strength": strength,
                     "use_blur": str(blur).lower()}, paper)
      for strength, blur, paper in _TABLE_1)
  table_1 = ("Table 1: 59.6% at strength 1/8, 61.0% at 1/4, 62.6% at 1/2, "
             "63.2% at 1, 64.5% at 1 with blur")
  findings = (
      _greater("Strong colour distortion (1) beats weak (1/8).",
               "strength_1.0", "strength_0.125", table_1),
      _greater("Strength 1 beats 1/2.", "strength_1.0", "strength_0.5",
               table_1),
      _greater("Strength 1/2 beats 1/4.", "strength_0.5", "strength_0.25",
               table_1),
      _greater("Blur on top of strength 1 helps.", "strength_1.0_blur",
               "strength_1.0", table_1),
  )
  return Study(
      "color_strength", "Colour distortion strength (the paper's Table 1)",
      configurations, findings, BARS,
      varies=("color_jitter_strength", "use_blur"), paper_source="Table 1")


# Figure 5's transformations, in its order.
AUGMENTATIONS = ("crop", "cutout", "color", "sobel", "noise", "blur",
                 "rotate")


def augmentation_name(first: str, second: str) -> str:
  """The configuration of a Figure 5 cell: "crop" or "crop+color"."""
  return first if first == second else f"{first}+{second}"


def _augmentations() -> Study:
  configurations = []
  for first, second in itertools.combinations_with_replacement(
      AUGMENTATIONS, 2):
    transforms = (first,) if first == second else (first, second)
    configurations.append(Configuration(
        augmentation_name(first, second),
        {"branch_transforms": ",".join(transforms)}))
  figure_5 = ("Figure 5 (values drawn, not printed): one transformation "
              "alone learns little; crop and colour is the best pair")
  findings = tuple(
      _greater(f"crop+color beats {name} alone.", "crop+color", name,
               figure_5)
      for name in AUGMENTATIONS) + tuple(
          _greater(f"crop+color beats crop+{other}.", "crop+color",
                   f"crop+{other}", figure_5)
          for other in AUGMENTATIONS if other not in ("crop", "color"))
  return Study(
      "augmentations", "Pairs of augmentations on one branch (the paper's "
      "Figure 5)", tuple(configurations), findings, HEAT_MAP,
      varies=("branch_transforms",))


BATCH_SIZES = (64, 128, 256, 512)
# Multiples of the base's train_epochs (Figure 9 goes from 100 to 800).
EPOCH_FACTORS = (1, 2)


def batch_size_name(batch_size: int, factor: int) -> str:
  return f"batch_{batch_size}_epochs_x{factor}"


def _batch_size() -> Study:
  configurations = tuple(
      Configuration(batch_size_name(batch, factor),
                    {"train_batch_size": str(batch),
                     "train_epochs": f"x{factor}"})
      for factor in EPOCH_FACTORS for batch in BATCH_SIZES)
  figure_9 = ("Figure 9: bigger batches help, most at short training; "
              "the gap closes with more epochs")
  short, long = EPOCH_FACTORS[0], EPOCH_FACTORS[-1]
  findings = (
      _greater("At short training, batch 512 beats batch 64.",
               batch_size_name(512, short), batch_size_name(64, short),
               figure_9),
      _greater("At short training, batch 256 beats batch 64.",
               batch_size_name(256, short), batch_size_name(64, short),
               figure_9),
      _greater("Longer training helps batch 64.",
               batch_size_name(64, long), batch_size_name(64, short),
               figure_9),
  )
  return Study(
      "batch_size", "Batch size and training length (the paper's Figure 9)",
      configurations, findings, LINES,
      varies=("train_batch_size", "train_epochs"))


STUDIES: Dict[str, Study] = {
    study.name: study for study in (
        _augmentations(), _color_strength(), _projection_head(),
        _temperature(), _loss(), _batch_size())}


def get(name: str) -> Study:
  """The study called `name`.

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  if name not in STUDIES:
    raise ValueError(f"study must be one of {', '.join(STUDIES)}. "
                     f"Received: study={name!r}")
  return STUDIES[name]


def _is_multiple(value) -> bool:
  """Whether an override is relative to the base ("x2"), not absolute."""
  return isinstance(value, str) and value.startswith("x")


def resolve_overrides(overrides: Mapping[str, str],
                      base: Mapping[str, str]) -> Dict[str, str]:
  """A configuration's overrides with relative values made absolute.

  `train_epochs="x2"` means twice the base's train_epochs.

  Args:
    overrides: a configuration's overrides.
    base: the study's base settings (after the command line).

  Returns:
    {flag name: value}.

  Raises:
    ValueError: a relative value without a base to scale.
  """
  resolved = {}
  for name, value in overrides.items():
    if _is_multiple(value):
      if name not in base:
        raise ValueError(f"{name}={value} scales the base's {name}, which "
                         "this study's base does not set.")
      value = str(int(round(float(base[name]) * float(value[1:]))))
    resolved[name] = value
  return resolved
