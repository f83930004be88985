"""Strategy building without a cluster or TPU: flags, TF_CONFIG, the chief.

Real multi-worker runs are in test_multi_worker.py. TPUs cannot run here:
these tests cover what fails before a TPU is needed.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from simclr_tf.training import distribute

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("task_type, task_id, cluster, chief", [
    (None, None, {}, True),                       # not in a cluster
    ("worker", 0, {"worker": ["a", "b"]}, True),  # worker 0 leads
    ("worker", 1, {"worker": ["a", "b"]}, False),
    ("chief", 0, {"chief": ["c"], "worker": ["a"]}, True),
    ("worker", 0, {"chief": ["c"], "worker": ["a"]}, False),
    ("evaluator", 0, {"worker": ["a"], "evaluator": ["e"]}, False),
])
def test_the_chief_follows_tensorflows_convention(task_type, task_id,
                                                  cluster, chief):
  assert distribute.is_chief_task(task_type, task_id, cluster) is chief


def test_single_process_strategies_are_their_own_chief(two_replica_strategy):
  assert distribute.is_chief(two_replica_strategy)
  assert distribute.task_name(two_replica_strategy) == ""


def tf_config(cluster, task):
  return {distribute.TF_CONFIG: json.dumps({"cluster": cluster,
                                            "task": task})}


def test_a_good_tf_config_is_read():
  config = distribute.read_tf_config(tf_config(
      {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
      {"type": "worker", "index": 1}))
  assert config["task"] == {"type": "worker", "index": 1}


@pytest.mark.parametrize("environ, message", [
    ({}, "reads the cluster from the TF_CONFIG environment variable, which "
         "is not set"),
    ({distribute.TF_CONFIG: "{not json"}, "TF_CONFIG is not valid JSON"),
    (tf_config({}, {"type": "worker", "index": 0}),
     'TF_CONFIG needs a "cluster" with a "worker"'),
    (tf_config({"worker": ["a:1"]}, {"type": "ps", "index": 0}),
     'TF_CONFIG needs a "task" whose "type" is one of'),
    (tf_config({"worker": ["a:1"]}, {"type": "worker", "index": 1}),
     "TF_CONFIG task index must be in [0, 1)"),
])
def test_bad_tf_config_is_one_clear_error(environ, message):
  with pytest.raises(distribute.StrategyError) as error:
    distribute.read_tf_config(environ)
  assert message in str(error.value)


def test_multi_worker_without_tf_config_fails_before_building(monkeypatch):
  # Building a MultiWorkerMirroredStrategy in this process would break the
  # shared test strategy; the check must come first.
  monkeypatch.delenv(distribute.TF_CONFIG, raising=False)
  with pytest.raises(distribute.StrategyError, match="TF_CONFIG"):
    distribute.build_strategy("multi_worker")


def test_multi_worker_refuses_split_cpus():
  with pytest.raises(distribute.StrategyError,
                     match="Received: cpu_replicas=2"):
    distribute.build_strategy("multi_worker", cpu_replicas=2)


def test_tpu_needs_a_name():
  with pytest.raises(distribute.StrategyError, match="--tpu"):
    distribute.build_strategy("tpu", tpu=None)


def test_an_unknown_tpu_name_fails_fast_with_a_clear_error():
  # The name is looked up in the Cloud TPU API through the GCE metadata
  # server, which does not resolve off Google Cloud: an OSError at once.
  start = time.time()
  with pytest.raises(distribute.StrategyError,
                     match="Cannot reach TPU 'no-such-tpu-x7'"):
    distribute.build_strategy("tpu", tpu="no-such-tpu-x7")
  assert time.time() - start < 30


def test_tpu_local_without_a_tpu_exits_2_from_the_command_line(tmp_path):
  # In a subprocess: connecting to a cluster changes the process's eager
  # context, which the other tests share.
  result = subprocess.run(
      [sys.executable, "-m", "simclr_tf.run", "--strategy=tpu",
       "--tpu=local", f"--model_dir={tmp_path / 'run'}",
       "--dataset=synthetic_shapes", f"--data_dir={tmp_path}"],
      capture_output=True, text=True, timeout=120, cwd=REPO,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines()
            if line.startswith("error:")]
  assert len(errors) == 1 and "Cannot reach TPU 'local'" in errors[0]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()


def test_auto_strategy_prefetches_to_a_single_accelerator(monkeypatch):
  cases = {("/device:CPU:0",): "default",
           ("/device:GPU:0",): "one_device",
           ("/device:GPU:0", "/device:GPU:1"): "mirrored",
           ("/device:CPU:0", "/device:CPU:1"): "mirrored"}
  for devices, expected in cases.items():
    monkeypatch.setattr(distribute, "_replica_devices",
                        lambda cpu_replicas, d=devices: list(d))
    assert distribute._auto_strategy_name(None, 0) == expected, devices
  assert distribute._auto_strategy_name("local", 0) == "tpu"
