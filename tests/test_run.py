"""`python -m simclr_tf.run` as a user runs it: flags, errors, kill/resume."""

import functools
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from simclr_tf import config as config_lib
from simclr_tf import run as run_lib

import command_line

REPO = command_line.REPO


tiny_flags = functools.partial(command_line.tiny_flags, steps_per_loop=2)
run_cli = command_line.run_program


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.parametrize("extra, message", [
    (["--train_mode=pretrain", "--fine_tune_after_block=2"],
     "Freezing layers while pretraining is not supported"),
    (["--train_mode=finetune"], "needs --checkpoint"),
    (["--train_mode=finetune", "--checkpoint=x", "--from_scratch"],
     "contradict each other"),
    (["--train_mode=bogus"], "--train_mode=bogus"),
    (["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
    (["--flagfile=/does/not/exist.cfg"], "Unable to open flagfile"),
    (["--resnet_depth=19"], "resnet_depth=19"),
    (["--temperature=0"], "temperature=0.0"),
    (["--mode=train_then_eval", "--lineareval_while_pretraining=false"],
     "needs a supervised head"),
])
def test_invalid_flags_stop_with_one_line_and_exit_code_2(tmp_path, extra,
                                                          message):
  result = run_cli(tiny_flags(tmp_path, tmp_path / "run") + extra)
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines()
            if line.startswith("error:")]
  assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()  # stopped before any work


@pytest.mark.parametrize("extra, message", [
    (["--cpu_replicas=3"],
     "`train_batch_size` must split evenly over the 3 replicas"),
    (["--dataset=not_a_dataset"], "Unknown dataset 'not_a_dataset'"),
    (["--train_mode=finetune", "--checkpoint=/does/not/exist"],
     "--checkpoint /does/not/exist: no such file or directory"),
])
def test_bad_input_found_at_start_exits_2_without_traceback(
    data_dir, tmp_path, extra, message):
  result = run_cli(tiny_flags(data_dir, tmp_path / "run") + extra)
  assert result.returncode == 2, result.stderr[-2000:]
  assert message in result.stderr
  assert "Traceback" not in result.stderr


def test_two_replica_run_from_the_command_line(data_dir, tmp_path):
  result = run_cli(tiny_flags(data_dir, tmp_path) + [
      "--cpu_replicas=2", "--train_steps=4", "--checkpoint_steps=2",
      "--linear_eval_after_pretraining", "--linear_eval_train_steps=2",
      "--linear_eval_train_batch_size=32"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "2 replica(s)" in result.stdout
  assert "==== summary ====" in result.stdout
  assert "linear eval of the frozen encoder" in result.stdout
  assert f"tensorboard --logdir {tmp_path}" in result.stdout
  assert (tmp_path / "linear_eval" / "result.json").exists()


def test_killed_run_resumes_from_its_last_checkpoint(data_dir, tmp_path):
  args = tiny_flags(data_dir, tmp_path) + [
      "--mode=train", "--train_steps=120", "--checkpoint_steps=4"]
  env = dict(os.environ, PYTHONPATH=REPO)
  process = subprocess.Popen([sys.executable, "-m", "simclr_tf.run"] + args,
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not (tmp_path / "ckpt-4.index").exists():
    assert process.poll() is None, "the run ended before its first checkpoint"
    assert time.time() < deadline, "no checkpoint within 4 minutes"
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  saved = sorted(int(name[5:-6]) for name in os.listdir(tmp_path)
                 if name.startswith("ckpt-") and name.endswith(".index"))
  assert saved and saved[-1] < 120  # killed mid-run

  result = run_cli(args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resumed from {tmp_path}/ckpt-{saved[-1]} at step {saved[-1]}" \
      in result.stdout
  assert "[pretrain] step 120/120 (100%)" in result.stdout
  assert (tmp_path / "ckpt-120.index").exists()


def test_no_arguments_means_the_demo_flagfile():
  argv = run_lib._argv_with_default_flagfile(["run"])
  assert argv == ["run", f"--flagfile={run_lib.DEMO_FLAGFILE}"]
  assert run_lib.DEMO_FLAGFILE.exists()
  assert run_lib._argv_with_default_flagfile(["run", "--seed=1"]) == [
      "run", "--seed=1"]


def test_every_preset_flagfile_parses_into_a_valid_config():
  flags_dir = os.path.join(REPO, "flags")
  for name in sorted(os.listdir(flags_dir)):
    args = [f"--flagfile={os.path.join(flags_dir, name)}"]
    if "finetune" in name or "linear_eval" in name:
      args.append("--checkpoint=runs/x")
    config = command_line.config_of(args)
    assert config.run.model_dir.startswith("runs/"), name
    with open(os.path.join(flags_dir, name)) as handle:
      header = handle.read().split("\n--", 1)[0]
    assert "Source:" in header and "python -m simclr_tf.run" in header, name


@pytest.mark.parametrize("value, stem_at_32, stem_at_224", [
    ("auto", True, False), ("true", True, True), ("false", False, False)])
def test_cifar_stem_flag_picks_the_stem(value, stem_at_32, stem_at_224):
  for size, expected in ((32, stem_at_32), (224, stem_at_224)):
    config = command_line.config_of([f"--cifar_stem={value}",
                                     f"--image_size={size}"])
    assert config.model.use_cifar_stem(size) is expected


def test_crop_area_range_flag():
  config = command_line.config_of(["--crop_area_range=0.25,1"])
  assert config.augment.crop_area_range == (0.25, 1.0)
  for value, message in (("0.25", "two numbers, LOW,HIGH"),
                         ("a,1", "two numbers, LOW,HIGH"),
                         ("0.5,0.2", "crop_area_range=(0.5, 0.2)")):
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
      command_line.config_of([f"--crop_area_range={value}"])
