"""The JAX half of tests/test_jax_backend.py, run as its own process.

Keras picks its backend once per process, so the TensorFlow tests start this
script with KERAS_BACKEND=jax and compare what it writes with TensorFlow's
results and with numpy references. Importing the core must not import
TensorFlow; the script reports whether it did.

Usage: python tests/jax_checks.py CHECK WORKDIR
  core           loss, one LARS step and the schedule on inputs.npz
  step           loss, gradients and one train step of a SimCLRModel
  data_parallel  one train step on 1 device and on 2 (DataParallel)
  augment        crop boxes and views of the batched augmentation
  branch         the one-branch protocol (`branch_transforms`) on inputs.npz
Each writes WORKDIR/CHECK.npz.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from simclr_tf import config as config_lib  # noqa: E402
from simclr_tf.augment import batched as device_augment  # noqa: E402
from simclr_tf.data import host_batches as host_data  # noqa: E402,F401  (imported for the check)
from simclr_tf.training import keras_trainer as keras_training  # noqa: E402,F401  (likewise)
from simclr_tf import losses  # noqa: E402
from simclr_tf import optimizers  # noqa: E402
from simclr_tf.models import build_simclr_model  # noqa: E402

# Whether importing the core and the JAX trainer pulled TensorFlow in. (Keras itself imports it
# later where it is installed, e.g. in `set_random_seed` and `fit`'s data
# adapters; on a host without it, Keras does without.)
TENSORFLOW_IMPORTED_BY_CORE = "tensorflow" in sys.modules


def _model_from_spec(spec):
  model_config = config_lib.ModelConfig(**spec["model"])
  model = build_simclr_model(model_config, image_size=spec["image_size"],
                             num_classes=spec["num_classes"],
                             train_mode="pretrain", with_supervised_head=True,
                             temperature=spec["temperature"])
  model.load_weights(spec["weights"])
  optimizer = optimizers.LARS(
      spec["learning_rate"], momentum=0.9, weight_decay=spec["weight_decay"],
      exclude_from_weight_decay=list(
          optimizers.LARS_EXCLUDE_FROM_WEIGHT_DECAY))
  model.compile(optimizer)
  return model


def _variables(model, prefix):
  return {prefix + v.path: np.asarray(v.value) for v in model.variables}


def check_core(workdir):
  inputs = np.load(os.path.join(workdir, "inputs.npz"))
  out = {}
  loss, logits_ab, _ = losses.contrastive_loss(
      inputs["hidden"], temperature=0.5)
  out["loss"] = np.asarray(loss)
  out["logits_ab"] = np.asarray(logits_ab)
  variable = keras.Variable(inputs["weight"], name="kernel")
  optimizer = optimizers.LARS(0.3, momentum=0.9, weight_decay=1e-3)
  optimizer.build([variable])
  for gradient in inputs["gradients"]:
    optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient),
                                variable)])
  out["lars_weight"] = np.asarray(variable.value)
  schedule = optimizers.WarmUpAndCosineDecay(
      0.3, batch_size=512, num_examples=10_000, warmup_epochs=2,
      total_steps=200)
  out["schedule"] = np.array([float(schedule(step))
                              for step in inputs["steps"]])
  return out


def check_step(workdir):
  spec = json.load(open(os.path.join(workdir, "spec.json")))
  inputs = np.load(os.path.join(workdir, "inputs.npz"))
  x, y = inputs["x"], inputs["y"]
  model = _model_from_spec(spec)
  model.optimizer.build(model.trainable_variables)
  grad_fn = jax.value_and_grad(model.compute_loss_and_updates, has_aux=True)
  (loss, _), gradients = grad_fn(
      [v.value for v in model.trainable_variables],
      [v.value for v in model.non_trainable_variables],
      [v.value for v in model.metrics_variables], x, y, None, training=True,
      optimizer_variables=[v.value for v in model.optimizer.variables])
  out = {"loss": np.asarray(loss)}
  for variable, gradient in zip(model.trainable_variables, gradients):
    out["grad/" + variable.path] = np.asarray(gradient)
  logs = model.train_on_batch(x, y, return_dict=True)
  out["contrast_loss"] = np.asarray(logs["contrast_loss"])
  out["supervised_loss"] = np.asarray(logs["supervised_loss"])
  out.update(_variables(model, "after/"))
  return out


def check_data_parallel(workdir):
  devices = jax.devices("cpu")
  if len(devices) != 2:
    raise SystemExit(f"needs 2 CPU devices, found {len(devices)}: set "
                     "XLA_FLAGS=--xla_force_host_platform_device_count=2")
  spec = json.load(open(os.path.join(workdir, "spec.json")))
  inputs = np.load(os.path.join(workdir, "inputs.npz"))
  x, y = inputs["x"], inputs["y"]
  out = {}
  keras.distribution.set_distribution(None)
  single = _model_from_spec(spec)
  out.update({"one_device/" + k: np.asarray(v) for k, v in
              single.train_on_batch(x, y, return_dict=True).items()})
  out.update(_variables(single, "one_device/after/"))
  keras.distribution.set_distribution(
      keras.distribution.DataParallel(devices=devices))
  parallel = _model_from_spec(spec)
  out.update({"two_devices/" + k: np.asarray(v) for k, v in
              parallel.train_on_batch(x, y, return_dict=True).items()})
  out.update(_variables(parallel, "two_devices/after/"))
  # What the step actually ran on: the weights of the parallel model are
  # replicated on both devices.
  kernel = parallel.trainable_variables[0].value
  out["two_devices/variable_devices"] = np.array(len(kernel.devices()))
  return out


def check_augment(workdir):
  spec = json.load(open(os.path.join(workdir, "spec.json")))
  inputs = np.load(os.path.join(workdir, "inputs.npz"))
  augment_config = config_lib.AugmentConfig(**spec["augment"])
  out = {}
  for height, width in spec["shapes"]:
    rng = device_augment._Random(
        device_augment.step_seed(7, 0, device_augment.CROP_STREAM))
    boxes = device_augment.sample_crop_boxes(
        spec["num_boxes"], height, width, augment_config, rng)
    out[f"boxes/{height}x{width}"] = np.stack([np.asarray(b) for b in boxes],
                                              axis=1)
  augment = jax.jit(lambda images, step: device_augment.augment_views(
      images, spec["size"], augment_config, 2,
      device_augment.step_seed(7, step, device_augment.CROP_STREAM)))
  out["views"] = np.concatenate(
      [np.asarray(augment(inputs["images"], step))
       for step in range(spec["steps"])])
  out["views_again"] = np.asarray(augment(inputs["images"], 0))
  out["views_pipeline_1"] = np.asarray(device_augment.augment_views(
      inputs["images"], spec["size"], augment_config, 2,
      device_augment.step_seed(7, 0, device_augment.CROP_STREAM, 1)))
  return out


def check_branch(workdir):
  """Figure 5's protocol: the views, and the boxes each view drew first."""
  images = np.load(os.path.join(workdir, "inputs.npz"))["images"]
  seed = device_augment.step_seed(3, 7, device_augment.CROP_STREAM)
  out = {}
  for view in range(2):
    rng = device_augment._Random(seed + np.array([1000 * (view + 1), 0],
                                                 np.uint32))
    boxes = device_augment.sample_crop_boxes(
        images.shape[0], images.shape[1], images.shape[2],
        config_lib.AugmentConfig(), rng)
    out[f"boxes{view}"] = np.stack([np.asarray(b) for b in boxes], axis=1)
  sobel = config_lib.AugmentConfig(branch_transforms="sobel")
  out["views"] = np.asarray(jax.jit(lambda x: device_augment.augment_views(
      x, 16, sobel, 2, seed))(images))
  # The other new ops, eagerly (compiling them too would double the time).
  others = config_lib.AugmentConfig(
      branch_transforms="flip,cutout,noise,sobel,rotate")
  out["others"] = np.asarray(device_augment.augment_views(images, 16, others,
                                                          2, seed))
  return out


CHECKS = {"core": check_core, "step": check_step,
          "data_parallel": check_data_parallel, "augment": check_augment,
          "branch": check_branch}


def main(argv):
  if len(argv) != 3 or argv[1] not in CHECKS:
    raise SystemExit(f"usage: {argv[0]} {{{','.join(CHECKS)}}} WORKDIR")
  check, workdir = argv[1], argv[2]
  out = CHECKS[check](workdir)
  out["tensorflow_imported"] = np.array(TENSORFLOW_IMPORTED_BY_CORE)
  out["backend"] = np.array(keras.backend.backend())
  np.savez(os.path.join(workdir, f"{check}.npz"), **out)


if __name__ == "__main__":
  main(sys.argv)
