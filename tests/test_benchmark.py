"""tools/benchmark.py, run as a person would, on a very small configuration."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--resnet_depth=18", "--width_multiplier=0.125", "--image_size=16",
        "--train_batch_size=16", "--proj_out_dim=16",
        "--synthetic_train_examples=64", "--synthetic_test_examples=16",
        "--shuffle_buffer=64", "--benchmark_steps=2",
        "--benchmark_repeats=1", "--benchmark_input_batches=2"]


def _run(args, cwd=REPO):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("PYTHONPATH", None)
  return subprocess.run([sys.executable] + args, cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)


def _records(stdout):
  records = {}
  for line in stdout.splitlines():
    if line.startswith("{"):
      record = json.loads(line)
      records[record["measurement"]] = record
  return records


def test_prints_a_json_line_per_measurement_and_a_table(tmp_path):
  result = _run(["-m", "tools.benchmark", f"--data_dir={tmp_path}",
                 "--augment_on_device", "--steps_per_loop=2"] + TINY)
  assert result.returncode == 0, result.stderr[-3000:]
  records = _records(result.stdout)
  assert records["config"]["augment_on_device"] is True
  assert records["config"]["views_per_step"] == 32
  assert records["config"]["timed_steps"] == 2
  for name in ("train_step", "handwritten_loop", "fit_in_memory",
               "input_tf_data", "input_on_device", "augment_on_device",
               "fit_end_to_end"):
    assert records[name]["views_per_second"] > 0, name
    assert len(records[name]["runs"]) == 1
  assert records["fit_in_memory / handwritten_loop"]["ratio"] > 0
  assert records["train_step"]["views_per_cpu_second"] > 0
  # The train step made its views on the device, so its pipeline is that.
  assert "input_on_device / train_step" in records
  assert records["memory"]["peak_host_bytes"] > 100 * 2 ** 20
  assert records["memory"]["peak_device_bytes"] == "n/a"
  # Every stdout line is JSON, then the table.
  lines = result.stdout.strip().splitlines()
  table = lines[lines.index("") if "" in lines else len(lines):]
  assert all(line.startswith("{") for line in lines[:len(lines) -
                                                     len(table)])
  assert any(line.startswith("fit_end_to_end") for line in table)
  assert any(line.startswith("peak host memory") for line in table)


def test_runs_as_a_script_and_reports_bad_flags_in_one_line(tmp_path):
  # As a script, from another directory: the flags parse (so the imports
  # work) and a bad value stops it with one line before TensorFlow starts.
  script = os.path.join(REPO, "tools", "benchmark.py")
  for flag, message in (("--benchmark_measurements=speed", "unknown ['speed']"),
                        ("--benchmark_steps=0", "--benchmark_steps must be"),
                        ("--precision=float8", "precision")):
    result = _run([script, flag], cwd=str(tmp_path))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("benchmark: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
