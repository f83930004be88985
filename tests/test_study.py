"""The study tool: its statistics, its configurations, and a tiny study end
to end, killed between runs and rerun."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from command_line import REPO
from simclr_tf import config as config_lib
from simclr_tf.evaluation import studies
from simclr_tf.evaluation import study_tables
from simclr_tf.tools import program_flags

# --- statistics, against numpy on fixed numbers -------------------------


def test_mean_and_standard_error_match_numpy():
  values = [0.31, 0.35, 0.29, 0.40]
  mean, error = study_tables.mean_and_standard_error(values)
  assert mean == pytest.approx(np.mean(values))
  # Sample standard deviation over sqrt(n), written out.
  deviations = [(v - np.mean(values)) ** 2 for v in values]
  assert error == pytest.approx(math.sqrt(sum(deviations) / 3) / 2)
  assert math.isnan(study_tables.mean_and_standard_error([0.5])[1])
  with pytest.raises(ValueError):
    study_tables.mean_and_standard_error([])


@pytest.mark.parametrize("difference,error,expected", [
    (0.05, 0.02, study_tables.HOLDS),
    (0.039, 0.02, study_tables.WITHIN_NOISE),
    (-0.039, 0.02, study_tables.WITHIN_NOISE),
    (-0.05, 0.02, study_tables.DOES_NOT_HOLD),
    (0.5, math.nan, study_tables.UNDECIDED),
])
def test_the_verdict_rule_is_two_standard_errors(difference, error, expected):
  assert study_tables.verdict(difference, error) == expected


def _run(name, seed, **metrics):
  return {"name": name, "seed": seed, "metrics": metrics}


def test_decide_between_configurations_is_unpaired():
  finding = studies.Finding("a beats b", ("a", "m"), ("b", "m"), "paper")
  a, b = [0.50, 0.54, 0.52], [0.40, 0.47, 0.41]
  runs = ([_run("a", s, m=v) for s, v in enumerate(a)] +
          [_run("b", s, m=v) for s, v in enumerate(b)])
  decided = study_tables.decide(finding, runs)
  se_a = np.std(a, ddof=1) / np.sqrt(3)
  se_b = np.std(b, ddof=1) / np.sqrt(3)
  assert decided["difference"] == pytest.approx(np.mean(a) - np.mean(b))
  assert decided["standard_error"] == pytest.approx(np.hypot(se_a, se_b))
  assert not decided["paired"] and decided["repeats"] == 3
  assert decided["verdict"] == study_tables.HOLDS  # 0.093 > 2 * 0.024


def test_decide_between_metrics_of_the_same_runs_is_paired():
  finding = studies.Finding("h beats g(h)", ("c", "h"), ("c", "gh"), "paper")
  h, gh = [0.60, 0.50, 0.70], [0.58, 0.47, 0.69]
  runs = [_run("c", s, h=x, gh=y) for s, (x, y) in enumerate(zip(h, gh))]
  decided = study_tables.decide(finding, runs)
  differences = np.subtract(h, gh)
  assert decided["paired"]
  assert decided["difference"] == pytest.approx(differences.mean())
  assert decided["standard_error"] == pytest.approx(
      differences.std(ddof=1) / np.sqrt(3))
  # Unpaired, the seeds' spread (0.1) would hide the 2-point gain.
  assert decided["verdict"] == study_tables.HOLDS


def test_decide_with_one_repeat_is_undecided():
  finding = studies.Finding("a beats b", ("a", "m"), ("b", "m"), "paper")
  decided = study_tables.decide(finding, [_run("a", 0, m=0.9),
                                          _run("b", 0, m=0.1)])
  assert decided["verdict"] == study_tables.UNDECIDED
  missing = study_tables.decide(finding, [_run("a", 0, m=0.9)])
  assert missing["verdict"] == study_tables.UNDECIDED
  assert missing["difference"] is None


# --- the configurations set what they claim ------------------------------


@pytest.mark.parametrize("name", sorted(studies.STUDIES))
def test_every_configuration_is_a_valid_program_setting(name):
  study = studies.get(name)
  assert len(set(study.names())) == len(study.names())
  base = {"train_epochs": studies.BASE_OVERRIDES["train_epochs"]}
  for configuration in study.configurations:
    overrides = studies.resolve_overrides(configuration.overrides, base)
    assert set(overrides) <= set(study.varies), configuration.name
    for flag in overrides:
      assert flag in program_flags.SETTING_FLAGS, flag
  for finding in study.findings:
    for side in (finding.better, finding.worse):
      study.configuration(side[0])
      assert side[1] in studies.ACCURACY_METRICS


def _configured(study_name, configuration_name):
  """The ExperimentConfig a configuration's run gets over the default base."""
  from command_line import config_of
  study = studies.get(study_name)
  configuration = study.configuration(configuration_name)
  overrides = studies.resolve_overrides(
      configuration.overrides,
      {"train_epochs": studies.BASE_OVERRIDES["train_epochs"]})
  args = ([f"--flagfile={program_flags.preset_path(studies.BASE_PRESET)}"] +
          [f"--{k}={v}" for k, v in studies.BASE_OVERRIDES.items()] +
          [f"--{k}={v}" for k, v in overrides.items()])
  return config_of(args)


def test_the_head_study_builds_no_linear_and_nonlinear_heads():
  from simclr_tf.models import simclr
  # The paper's g(h) = W2 relu(W1 h): two layers, whatever the base's
  # num_proj_layers (the demo's is the authors' 3).
  for mode, dense_layers in (("none", 0), ("linear", 1), ("nonlinear", 2)):
    config = _configured("projection_head", mode)
    assert config.model.proj_head_mode == mode
    model = simclr.build_from_experiment(config, num_classes=10,
                                         with_supervised_head=False)
    kernels = [v for v in model.projection_head.trainable_variables
               if "kernel" in v.path]
    assert len(kernels) == dense_layers, mode


def test_the_transformation_variants_match_numpy():
  import tensorflow as tf
  from simclr_tf.evaluation import study_metrics
  rng = np.random.default_rng(3)
  images = rng.uniform(size=(2, 6, 6, 3)).astype(np.float32)
  variants = [v.numpy() for v in study_metrics.image_variants(
      tf.constant(images))]
  assert len(variants) == len(study_metrics.VARIANTS)
  np.testing.assert_array_equal(variants[0], images)
  # ITU-R 601 luma, the weights tf.image.rgb_to_grayscale documents.
  luma = images @ np.array([0.2989, 0.5870, 0.1140], np.float32)
  np.testing.assert_allclose(variants[1], np.repeat(luma[..., None], 3, -1),
                             atol=1e-3)
  for k, variant in zip((1, 2, 3), variants[2:]):
    np.testing.assert_array_equal(variant, np.rot90(images, k, axes=(1, 2)))


def test_the_head_study_probes_each_transformation_on_h_and_g_of_h():
  findings = {f.better[1]: f for f in studies.get("projection_head").findings}
  for h_metric, gh_metric in (
      (studies.GRAYSCALE_PROBE_H_TOP_1, studies.GRAYSCALE_PROBE_GH_TOP_1),
      (studies.ROTATION_PROBE_H_TOP_1, studies.ROTATION_PROBE_GH_TOP_1)):
    finding = findings[h_metric]
    assert finding.better == ("nonlinear", h_metric)
    assert finding.worse == ("nonlinear", gh_metric)


def test_the_temperature_study_sets_norm_and_tau():
  for configuration in studies.get("temperature").configurations:
    config = _configured("temperature", configuration.name)
    norm, _, tau = configuration.name.split("_")
    assert config.loss.hidden_norm == (norm == "l2")
    assert config.loss.temperature == pytest.approx(float(tau))
  assert studies.get("temperature").configuration(
      "l2_tau_0.1").paper_top_1 == pytest.approx(0.644)  # Table 5


def test_the_batch_study_scales_the_base_epochs():
  config = _configured("batch_size", studies.batch_size_name(64, 2))
  assert config.run.train_batch_size == 64
  assert config.run.train_epochs == 2 * int(
      studies.BASE_OVERRIDES["train_epochs"])


def test_the_augmentation_study_is_figure_5s_one_branch_pairs():
  study = studies.get("augmentations")
  # Every unordered pair of Figure 5's seven transformations, and each
  # alone: 7 * 8 / 2 cells.
  assert len(study.configurations) == 28
  config = _configured("augmentations", "crop+color")
  assert config.augment.branch_transforms == "crop,color"
  assert _configured("augmentations", "sobel").augment.branch_transforms == \
      "sobel"


def test_the_loss_study_mines_semi_hard_negatives_only_where_table_4_does():
  for name in studies.get("loss").names():
    config = _configured("loss", name)
    assert config.loss.loss_type == name.replace("_semihard", "")
    assert config.loss.semihard_negatives == name.endswith("_semihard")
  assert studies.get("loss").configuration(
      "nt_xent").paper_top_1 == pytest.approx(0.639)  # Table 4


def test_the_colour_study_follows_table_1():
  study = studies.get("color_strength")
  config = _configured("color_strength", "strength_0.125")
  assert config.augment.color_jitter_strength == pytest.approx(0.125)
  assert not config.augment.use_blur
  assert _configured("color_strength", "strength_1.0_blur").augment.use_blur
  assert [c.paper_top_1 for c in study.configurations] == pytest.approx(
      [0.596, 0.610, 0.626, 0.632, 0.645])


# --- the tool ----------------------------------------------------------------

STUDY = [sys.executable, "-m", "simclr_tf.tools.study"]


def _tool(args, **kwargs):
  return subprocess.run(STUDY + args, capture_output=True, text=True,
                        cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                        timeout=120, **kwargs)


@pytest.mark.parametrize("args,message", [
    (["--study=temperature", "--temperature=0.3"],
     "--temperature is what the temperature study varies"),
    (["--study=temperature", "--model_dir=x"], "use --output_dir instead"),
    (["--study=projection_head", "--runs=bogus"], "has no configuration"),
    (["--study=nope"], "value should be one of"),
    (["--study=temperature", "--repeats=0"], "--repeats must be at least 1"),
    (["--study=temperature", "--no_such_flag=1"], "no_such_flag"),
])
def test_bad_study_command_lines_stop_with_one_line(args, message, tmp_path):
  result = _tool(args + [f"--output_dir={tmp_path}"])
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  errors = [line for line in result.stderr.splitlines() if "error:" in line]
  assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]


def test_a_signal_between_runs_stops_the_next_run_as_it_starts():
  from simclr_tf.tools import study as study_tool  # pylint: disable=g-import-not-at-top
  child = study_tool._Child()  # pylint: disable=protected-access
  child.forward(signal.SIGTERM, None)  # no run in progress: only noted
  assert child.stop_requested
  with open(os.devnull, "w") as sink:
    process = child.start([sys.executable, "-c", "import time; "
                           "time.sleep(60)"], sink)
    assert process.wait(timeout=30) == -signal.SIGTERM


TINY = ["--synthetic_train_examples=96", "--synthetic_test_examples=32",
        "--image_size=16", "--width_multiplier=0.125", "--proj_out_dim=8",
        "--train_batch_size=32", "--eval_batch_size=32",
        "--linear_eval_train_batch_size=32", "--train_epochs=1",
        "--linear_eval_train_epochs=1", "--knn_bank_size=96",
        "--probe_train_examples=64", "--probe_num_strengths=2",
        "--steps_per_loop=1", "--warmup_epochs=0", "--health_examples=32"]


def test_a_tiny_study_killed_between_runs_finishes_on_rerun(tmp_path):
  output_dir = tmp_path / "study"
  args = ["--study=projection_head", "--runs=none,nonlinear", "--repeats=1",
          f"--output_dir={output_dir}", f"--data_dir={tmp_path / 'data'}"
          ] + TINY
  process = subprocess.Popen(STUDY + args, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=REPO,
                             env=dict(os.environ, PYTHONPATH=REPO))
  first_done = output_dir / "none" / "seed_0" / "study_metrics.json"
  deadline = time.time() + 600
  while not first_done.exists() and process.poll() is None:
    assert time.time() < deadline, "the first run did not finish"
    time.sleep(0.5)
  process.send_signal(signal.SIGTERM)  # during the second run
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 75, stderr[-3000:]
  assert "Rerun the same command to continue" in stderr
  partial = json.loads((output_dir / "results.json").read_text())
  assert [run["name"] for run in partial["runs"]] == ["none"]

  rerun = subprocess.run(STUDY + args, capture_output=True, text=True,
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                         timeout=400)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  # The finished run was read back, not rerun: one command in its log.
  log = (output_dir / "none" / "seed_0" / "study_log.txt").read_text()
  assert log.count("$ ") == 1
  assert "run 2/2 nonlinear seed 0" in rerun.stdout
  results = json.loads((output_dir / "results.json").read_text())
  assert results["study"] == "projection_head"
  names = [run["name"] for run in results["runs"]]
  assert names == ["none", "nonlinear"]
  for run in results["runs"]:
    metrics = run["metrics"]
    for key in (studies.LINEAR_EVAL_TOP_1, studies.PROBE_TOP_1,
                studies.PROBE_GH_TOP_1, studies.KNN_TOP_1,
                studies.GRAYSCALE_PROBE_H_TOP_1,
                studies.GRAYSCALE_PROBE_GH_TOP_1,
                studies.ROTATION_PROBE_H_TOP_1,
                studies.ROTATION_PROBE_GH_TOP_1):
      assert 0.0 <= metrics[key] <= 1.0, (run["name"], key)
    # The grayscale task is balanced over every image of the test split.
    probe = json.loads((output_dir / run["name"] / "seed_0" /
                        "study_probe.json").read_text())
    gray = probe["transformations"]["grayscale"]["h"]
    assert gray["num_test"] == 2 * probe["h"]["num_test"]
    assert run["overrides"]["proj_head_mode"] == run["name"]
  # One repeat: no standard error, so every verdict is undecided.
  assert {f["verdict"] for f in results["findings"]} == {
      study_tables.UNDECIDED}
  table = (output_dir / "results.md").read_text()
  assert "| `nonlinear` | 1 |" in table
  png = (output_dir / "results.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  # Runs are normal runs: their config records the study's settings.
  stored = config_lib.ExperimentConfig.from_dict(json.loads(
      (output_dir / "nonlinear" / "seed_0" / "config.json").read_text()))
  assert stored.model.proj_head_mode == "nonlinear"
  assert stored.model.num_proj_layers == 2
  assert stored.run.keep_hub_module_max == 0
  assert not (output_dir / "nonlinear" / "seed_0" / "saved_model").exists()

  # --remeasure probes the finished runs again and trains none of them.
  (output_dir / "none" / "seed_0" / "study_probe.json").unlink()
  remeasure = subprocess.run(STUDY + args + ["--remeasure"],
                             capture_output=True, text=True, cwd=REPO,
                             env=dict(os.environ, PYTHONPATH=REPO),
                             timeout=400)
  assert remeasure.returncode == 0, remeasure.stderr[-3000:]
  assert "measured none seed 0 again" in remeasure.stdout
  assert (output_dir / "none" / "seed_0" / "study_probe.json").exists()
  log = (output_dir / "none" / "seed_0" / "study_log.txt").read_text()
  assert log.count("$ ") == 1
  again = json.loads((output_dir / "results.json").read_text())
  for before, after in zip(results["runs"], again["runs"]):
    assert after["metrics"] == pytest.approx(before["metrics"]), before["name"]


def test_a_probe_finding_between_two_chance_level_accuracies_is_at_chance():
  # Consistent over seeds, so the two-SE rule alone would say "holds".
  finding = studies.Finding("h keeps rotation", ("c", "h"), ("c", "gh"),
                            "paper", chance=0.25)
  h, gh = [0.2551, 0.2550, 0.2553], [0.2500, 0.2502, 0.2499]
  runs = [_run("c", s, h=x, gh=y) for s, (x, y) in enumerate(zip(h, gh))]
  assert study_tables.decide(finding, runs)["verdict"] == \
      study_tables.AT_CHANCE
  without_chance = studies.Finding("h keeps rotation", ("c", "h"),
                                   ("c", "gh"), "paper")
  assert study_tables.decide(without_chance, runs)["verdict"] == \
      study_tables.HOLDS
  # One side clearly above guessing: the rule decides as usual.
  above = [0.2800, 0.2790, 0.2810]
  runs = [_run("c", s, h=x, gh=y) for s, (x, y) in enumerate(zip(above, gh))]
  assert study_tables.decide(finding, runs)["verdict"] == study_tables.HOLDS


def test_the_head_study_knows_the_chance_level_of_its_transformation_probes():
  chances = {f.better[1]: f.chance
             for f in studies.STUDIES["projection_head"].findings}
  assert chances[studies.GRAYSCALE_PROBE_H_TOP_1] == 0.5
  assert chances[studies.ROTATION_PROBE_H_TOP_1] == 0.25
  assert chances[studies.LINEAR_EVAL_TOP_1] is None


def test_the_batch_study_takes_its_base_epochs_from_the_command_line():
  from simclr_tf.tools import study as study_tool  # pylint: disable=g-import-not-at-top
  study = studies.get("batch_size")
  study_tool.check_tokens(study, ["--train_epochs=20"])
  with pytest.raises(ValueError, match="--train_batch_size is what"):
    study_tool.check_tokens(study, ["--train_batch_size=64"])
  command = study_tool.run_command(
      ["--train_epochs=20"], study.configuration("batch_64_epochs_x2"),
      {"train_epochs": "20"}, "/tmp/run", 0)
  epochs = [t for t in command if t.startswith("--train_epochs=")]
  assert epochs[-1] == "--train_epochs=40"  # the last one is the one used


def test_the_recorded_base_names_each_setting_once():
  from simclr_tf.tools import study as study_tool  # pylint: disable=g-import-not-at-top
  tokens = study_tool.base_tokens(["--train_epochs=10", "--nowrite_plots"])
  names = [t.lstrip("-").split("=")[0] for t in tokens]
  assert tokens.count("--train_epochs=10") == 1
  assert "--train_epochs=5" not in tokens
  assert "write_plots" not in names  # given by the user as --nowrite_plots
  assert names.count("nowrite_plots") == 1
  assert tokens[0] == f"--preset={studies.BASE_PRESET}"
  assert "linear_eval_train_epochs" in names  # a base setting not given
