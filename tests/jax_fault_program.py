"""TEST-ONLY: `python -m simclr_tf.run --backend=jax` with faults injected.

The faults come from the `SIMCLR_TF_JAX_TEST_FAULTS` environment variable
(comma-separated name=value) and are installed by patching the library, as
`fault_program.py` does for the TensorFlow path; the library has no hook:

  nan_at_step=S: every view of step S is NaN, so its loss is NaN, or on
    XLA's CPU code (whose ReLU maps NaN to a number) its updated weights.
  sigterm_after_saving=S: once checkpoint S is saved, the process sends
    itself SIGTERM, so the stop lands mid-run however fast training is.

This file imports no TensorFlow (`fault_injection.py` does), so the JAX
program starts as it would on a host without it. Run it with
KERAS_BACKEND=jax: it imports Keras before the program reads --backend.
"""

import os
import signal
import sys

ENV_VAR = "SIMCLR_TF_JAX_TEST_FAULTS"
SETTINGS = ("nan_at_step", "sigterm_after_saving")


def parse(spec):
  """"name=S,..." into {name: S}; unknown names are an error."""
  faults = {}
  for item in filter(None, (part.strip() for part in spec.split(","))):
    name, _, value = item.partition("=")
    if name not in SETTINGS:
      raise ValueError(f"{ENV_VAR}: unknown setting {name!r}; known: "
                       f"{', '.join(SETTINGS)}. Received: {spec!r}")
    faults[name] = int(value)
  return faults


def install(faults):
  from keras import ops
  from simclr_tf.augment import batched as device_augment
  from simclr_tf.checkpoints import keras_weights as keras_checkpoints

  if "nan_at_step" in faults:
    # The step function sees the optimizer's iterations before the update:
    # step S (counted from 1) is iterations S - 1.
    poisoned_iterations = faults["nan_at_step"] - 1
    real_augmentation = device_augment.train_augmentation

    def augmentation_with_nan(*args, **kwargs):
      augment = real_augmentation(*args, **kwargs)

      def augment_and_poison(images, replica_id=0, step=0):
        views = augment(images, replica_id, step)
        return ops.where(ops.equal(step, poisoned_iterations),
                         float("nan"), views)

      return augment_and_poison

    device_augment.train_augmentation = augmentation_with_nan

  if "sigterm_after_saving" in faults:
    real_save = keras_checkpoints.save

    def save_then_signal(model, model_dir, step, **kwargs):
      real_save(model, model_dir, step, **kwargs)
      if step == faults["sigterm_after_saving"]:
        os.kill(os.getpid(), signal.SIGTERM)

    keras_checkpoints.save = save_then_signal


def main():
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
  spec = os.environ.get(ENV_VAR, "")
  if spec:
    print(f"WARNING: test fault injection is on: {ENV_VAR}={spec}",
          file=sys.stderr, flush=True)
    install(parse(spec))
  from simclr_tf import run
  run.run()


if __name__ == "__main__":
  main()
