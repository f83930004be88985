"""Training: the stage plan and the two trainers that run it.

Modules:
  stages: which stages a run has, their configs, views and output files;
    both trainers follow it. TensorFlow-free.
  tf_trainer: the TensorFlow backend's runner (`tf.distribute`, `tf.data`,
    checkpoints, SavedModel exports); `run_experiment` is its entry point.
  keras_trainer: the runner for other Keras backends (JAX), TensorFlow-free.
  callbacks, distribute, precision, preemption, faults,
  stage_result: the pieces they share or the TF runner uses.

`run_experiment` is also an attribute of this package, loaded on first use
so that `KERAS_BACKEND=jax` imports no TensorFlow through this package.
"""

from simclr_tf import _lazy

__getattr__ = _lazy.attributes(__name__, {
    "run_experiment": ("tf_trainer", "run_experiment"),
})
__all__ = ["run_experiment"]
