"""TEST-ONLY: `python -m simclr_tf.run` with the faults of the
`SIMCLR_TF_TEST_FAULTS` environment variable injected (see
tests/fault_injection.py). Tests run this file in place of the program.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fault_injection  # noqa: E402  pylint: disable=wrong-import-position
from simclr_tf import run  # noqa: E402  pylint: disable=wrong-import-position


def main():
  spec = os.environ.get(fault_injection.ENV_VAR, "")
  if spec:
    print(f"WARNING: test fault injection is on: {fault_injection.ENV_VAR}="
          f"{spec}", file=sys.stderr, flush=True)
    fault_injection.activate(fault_injection.parse(spec))
  run.run()


if __name__ == "__main__":
  main()
