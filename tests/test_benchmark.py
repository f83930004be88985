"""tools/benchmark.py, run as a person would, on a very small configuration."""

import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--resnet_depth=18", "--width_multiplier=0.125", "--image_size=16",
        "--train_batch_size=16", "--proj_out_dim=16",
        "--synthetic_train_examples=64", "--synthetic_test_examples=16",
        "--shuffle_buffer=64", "--benchmark_steps=2",
        "--benchmark_input_batches=2"]


def _run(args, cwd=REPO):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("PYTHONPATH", None)
  return subprocess.run([sys.executable] + args, cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)


def test_prints_a_json_line_per_measurement_and_a_table(tmp_path):
  # The base configuration augments in tf.data; the variant on the device.
  start = time.perf_counter()
  result = _run(["-m", "tools.benchmark", f"--data_dir={tmp_path}",
                 "--steps_per_loop=2", "--benchmark_repeats=1",
                 "--benchmark_variant=augment_on_device=true"] + TINY)
  process_seconds = time.perf_counter() - start
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.rstrip().splitlines()
  json_lines = [line for line in lines if line.startswith("{")]
  records = [json.loads(line) for line in json_lines]
  by_name = {record["measurement"]: record for record in records}
  configs = [r for r in records if r["measurement"] == "config"]
  assert [(c["variant"], c["augment_on_device"]) for c in configs] == [
      ("", False), ("augment_on_device=true", True)]
  assert configs[0]["views_per_step"] == 32
  assert configs[0]["timed_steps"] == 2
  for name in ("train_step", "handwritten_loop", "fit_in_memory",
               "input_tf_data", "input_on_device", "augment_on_device",
               "fit_end_to_end"):
    for row in (name, f"{name} [augment_on_device=true]"):
      record = by_name[row]
      # Each run timed at least one batch (32 views) within this process's
      # lifetime, so no rate can be below 32 views per process-second: a
      # rate in the wrong unit, or divided by the wrong count, would be.
      assert record["views_per_second"] >= 32 / process_seconds, row
      assert record["views_per_cpu_second"] >= 32 / (
          process_seconds * os.cpu_count()), row
      assert record["runs"] == [pytest.approx(record["views_per_second"],
                                              abs=0.01)], row
    assert f"{name}: variant / base" in by_name
  # Each train step is compared with the pipeline of its own path.
  assert "input_tf_data / train_step" in by_name
  assert ("input_on_device / train_step [augment_on_device=true]"
          in by_name)
  assert by_name["memory"]["peak_host_bytes"] > 100 * 2 ** 20
  # Device memory is measured where there are GPUs, and "n/a" otherwise.
  import tensorflow as tf
  device_bytes = by_name["memory"]["peak_device_bytes"]
  if tf.config.list_physical_devices("GPU"):
    assert isinstance(device_bytes, dict) and all(
        value > 0 for value in device_bytes.values())
  else:
    assert device_bytes == "n/a"
  # The JSON lines come first, then a blank line and the table.
  assert lines[:len(json_lines)] == json_lines
  table = lines[len(json_lines):]
  assert table[0] == "" and table[1].startswith("measurement")
  assert any(line.startswith("fit_end_to_end ") for line in table)
  assert any(line.startswith("peak host memory") for line in table)


def test_runs_as_a_script_and_reports_bad_flags_in_one_line(tmp_path):
  # As a script, from another directory: the flags parse (so the imports
  # work) and a bad value stops it with one line before TensorFlow starts.
  script = os.path.join(REPO, "tools", "benchmark.py")
  # Looks like the authors' checkout; the tool's small default width is one
  # their code cannot build.
  fake_checkout = tmp_path / "simclr"
  (fake_checkout / "tf2").mkdir(parents=True)
  (fake_checkout / "tf2" / "run.py").write_text("")
  for flag, message in (
      ("--benchmark_measurements=speed", "unknown ['speed']"),
      ("--benchmark_steps=0", "--benchmark_steps must be"),
      ("--precision=float8", "precision"),
      ("--benchmark_variant=strategy=mirrored", "cannot change strategy"),
      ("--benchmark_variant=jit=true", "Received: 'jit=true'"),
      ("--benchmark_variant=precision=float8", "float8"),
      (f"--peer_authors_dir={tmp_path / 'absent'}", "no tf2/run.py there"),
      (f"--peer_authors_dir={tmp_path}", "checkout of google-research"),
      (f"--peer_authors_dir={fake_checkout}", "width_multiplier=0.25"),
      ("--preset=nope", "--preset must be none or one of")):
    result = _run([script, flag], cwd=str(tmp_path))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("benchmark: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_a_preset_is_measured_with_the_command_line_over_it():
  # The program's --preset flag is defined here too; it must not be
  # accepted and then ignored (it was: the tiny default was measured).
  from simclr_tf import run as run_lib
  from tools import benchmark
  argv = ["benchmark", "--preset=demo", "--train_batch_size=8"]
  assert benchmark._with_preset_flagfile(argv) == [
      "benchmark", f"--flagfile={run_lib.preset_path('demo')}",
      "--preset=demo", "--train_batch_size=8"]
  for unchanged in (["benchmark"], ["benchmark", "--preset=none"]):
    assert benchmark._with_preset_flagfile(unchanged) == unchanged


# A checkout of google-research/simclr to time as a peer; without one (CI)
# the test is skipped. tf-keras must be installed.
AUTHORS_DIR = os.environ.get("SIMCLR_AUTHORS_DIR", "")


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(AUTHORS_DIR, "tf2", "run.py")),
    reason="set SIMCLR_AUTHORS_DIR to a checkout of google-research/simclr")
def test_times_the_authors_peer_and_prints_the_ratios(tmp_path):
  from PIL import Image
  import numpy as np
  rng = np.random.default_rng(0)
  for index in range(32):
    folder = tmp_path / "images" / "train" / f"class{index % 2}"
    folder.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / f"{index}.jpg")
  result = _run(["-m", "tools.benchmark", f"--peer_authors_dir={AUTHORS_DIR}",
                 "--dataset=image_folder", f"--data_dir={tmp_path / 'images'}",
                 "--eval_split=train", "--benchmark_repeats=2",
                 "--benchmark_measurements=train_step,fit_end_to_end"]
                + TINY + ["--width_multiplier=1"])
  assert result.returncode == 0, result.stderr[-3000:]
  records = {r["measurement"]: r for r in (
      json.loads(line) for line in result.stdout.splitlines()
      if line.startswith("{"))}
  for ours, authors in (("train_step", "authors_train_step"),
                        ("fit_end_to_end", "authors_end_to_end")):
    assert len(records[authors]["runs"]) == 2
    assert records[authors]["views_per_second"] > 0
    assert records[f"{ours} / {authors}"]["ratio"] == pytest.approx(
        records[ours]["views_per_second"]
        / records[authors]["views_per_second"], rel=1e-3)
