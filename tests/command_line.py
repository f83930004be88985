"""Builds configs the way the command line does, for tests."""

import sys

from simclr_tf import run as run_lib


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
