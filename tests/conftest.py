"""Shared test set-up.

The host CPU is split into two logical devices before TensorFlow touches any
device, so tests can run real 2-replica `MirroredStrategy` programs. Tests that
do not ask for a strategy run on the first logical device as usual.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# The programs turn oneDNN on (simclr_tf/tools/__init__.py); tests compute
# with the same kernels in-process as in the programs they start.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# JAX keeps what it compiles in a disk cache that this worker's JAX
# programs share (they inherit the environment): a tiny JAX run with the
# shapes of an earlier one takes 16 s instead of 42 on a 2-core CPU. One
# directory per xdist worker, so no two processes write one entry at once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit  # noqa: E402
  import shutil  # noqa: E402
  import tempfile  # noqa: E402
  _jax_cache = tempfile.mkdtemp(prefix="simclr_tf_test_jax_cache_")
  atexit.register(shutil.rmtree, _jax_cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _jax_cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

NUM_LOGICAL_CPUS = 2

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS)


@pytest.fixture(scope="session")
def two_replica_strategy():
  """A `MirroredStrategy` over two logical CPU devices, shared by all tests.

  Every MirroredStrategy starts its collective-op keys at the same base, so a
  second instance in one process reuses keys the first already bound to other
  ops and TensorFlow aborts ("Collective instance ... expected type"). Real
  programs build one strategy; the tests share one too.
  """
  devices = [d.name for d in tf.config.list_logical_devices("CPU")]
  return tf.distribute.MirroredStrategy(devices[:NUM_LOGICAL_CPUS])


@pytest.fixture(autouse=True)
def _fresh_keras_state():
  """Resets Keras' global name counters so layer names are repeatable."""
  import keras
  keras.backend.clear_session()
  keras.utils.set_random_seed(1234)
  yield
