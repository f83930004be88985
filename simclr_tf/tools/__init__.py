"""Small command-line programs; each is an absl app.

Importing this package sets two TensorFlow environment defaults for every
program here (`simclr_tf.run` included), before TensorFlow starts; a value
the user set wins:

- `TF_CPP_MIN_LOG_LEVEL=2`: no C++ info lines on the console.
- `TF_ENABLE_ONEDNN_OPTS=1`: oneDNN's CPU kernels. TensorFlow turns them on
  by itself only on CPUs with AVX512-VNNI, AVX512-BF16 or AMX, and falls back
  to Eigen's elsewhere. On a 2-core AVX2-only EPYC the demo's train step ran
  2.1x the views per CPU-second with them (docs/speed.md).

and, where `SIMCLR_TF_XLA_CACHE` asks for it, XLA's disk cache of compiled
programs (`xla_cache`), so that the batched augmentation is compiled once
per shape on a machine, not once per run. `XLA_CACHE_DIR` is its
directory, or None where it is off (the default).
"""

import os

from simclr_tf.tools import xla_cache

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
XLA_CACHE_DIR = xla_cache.configure()
