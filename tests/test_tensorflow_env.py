"""The programs' TensorFlow environment defaults: set before TensorFlow
starts, a user's own value kept."""

import os
import subprocess
import sys

import pytest

_PRINT = ("import sys, simclr_tf.run, os; "
          "assert 'tensorflow' not in sys.modules; "
          "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], "
          "os.environ['TF_CPP_MIN_LOG_LEVEL'])")


def _program_env(**overrides):
  env = {k: v for k, v in os.environ.items()
         if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")}
  env.update(overrides)
  result = subprocess.run([sys.executable, "-c", _PRINT], env=env,
                          capture_output=True, text=True, timeout=120,
                          check=True)
  return result.stdout.split()


def test_the_program_turns_on_onednn_before_tensorflow_starts():
  assert _program_env() == ["1", "2"]


@pytest.mark.parametrize("value", ["0", "1"])
def test_a_users_onednn_setting_wins(value):
  assert _program_env(TF_ENABLE_ONEDNN_OPTS=value,
                      TF_CPP_MIN_LOG_LEVEL="0") == [value, "0"]
