"""The command line in tests: tiny flag sets, configs, the program itself."""

import os
import re
import subprocess
import sys

from simclr_tf import run as run_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_flags(data_dir, model_dir, **overrides):
  """Flags for a tiny, fast run on synthetic_shapes.

  Args:
    data_dir: where synthetic_shapes is generated.
    model_dir: the run's directory.
    **overrides: more flags, or other values, as name=value.

  Returns:
    A list of "--name=value" strings.
  """
  flags = dict(
      dataset="synthetic_shapes", data_dir=data_dir,
      synthetic_train_examples=128, synthetic_test_examples=48,
      image_size=16, resnet_depth=18, width_multiplier=0.125,
      proj_out_dim=16, temperature=0.5, use_blur="false",
      train_batch_size=32, eval_batch_size=32, warmup_epochs=0,
      # Off unless a test asks: each JAX pretraining pays ~17 s to compile
      # the measurement op by op.
      health_examples=0, model_dir=model_dir)
  flags.update(overrides)
  return [f"--{name}={value}" for name, value in flags.items()]


PROGRAM = [sys.executable, "-m", "simclr_tf.run"]
# The program with test faults installed (tests/fault_program.py).
FAULTY_PROGRAM = [sys.executable,
                  os.path.join(REPO, "tests", "fault_program.py")]


def run_program(args, env=None, timeout=300, program=None):
  """Runs the program with `args` from the repository root.

  Args:
    args: command-line arguments.
    env: extra environment variables.
    timeout: seconds before the run is stopped.
    program: the command; `PROGRAM` (`python -m simclr_tf.run`) if None.

  Returns:
    The `subprocess.CompletedProcess`, with text stdout and stderr.
  """
  return subprocess.run((program or PROGRAM) + list(args),
                        capture_output=True, text=True, timeout=timeout,
                        cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=REPO, **(env or {})))


def config_of(args):
  """The validated `ExperimentConfig` that `simclr_tf.run` builds from `args`.

  Args:
    args: command-line arguments, without the program name.

  Returns:
    The `ExperimentConfig`. The global flag values are reset afterwards.
  """
  flag_values = run_lib.FLAGS
  flag_values.unparse_flags()
  try:
    flag_values([sys.argv[0]] + list(args))
    return run_lib.config_from_flags(flag_values).validate()
  finally:
    flag_values.unparse_flags()


def latest_checkpoint_step(model_dir):
  """The step of the checkpoint that `model_dir`'s `checkpoint` state file
  names, or None. Read as text: the test process need not load TensorFlow's
  checkpoint machinery, and a half-written state file never names a step."""
  path = os.path.join(str(model_dir), "checkpoint")
  try:
    with open(path) as handle:
      first = handle.readline()
  except OSError:
    return None
  match = re.match(r'model_checkpoint_path: "(?:.*/)?ckpt-(\d+)"', first)
  return int(match.group(1)) if match else None


def one_error_line(result, tool=None):
  """The one error line of a run refused as bad input: exit 2, no traceback.

  Args:
    result: a `subprocess.CompletedProcess` with text stderr.
    tool: the tool's name, which prefixes its error lines
      ("<tool>: error: ..."); None for the program ("error: ...").

  Returns:
    The line.
  """
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  prefix = f"{tool}: error:" if tool else "error:"
  errors = [line for line in result.stderr.splitlines()
            if line.startswith(prefix)]
  assert len(errors) == 1, result.stderr[-2000:]
  return errors[0]
