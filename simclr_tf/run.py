"""The SimCLR training program (`python -m simclr_tf.run`).

Placeholder until the training program lands: it says so and exits non-zero.
"""

import sys

from absl import app


def main(argv):
  del argv
  print("simclr_tf.run: the training program is not yet available; the "
        "library (simclr_tf.models, losses, optimizers) is.", file=sys.stderr)
  return 1


if __name__ == "__main__":
  app.run(main)
