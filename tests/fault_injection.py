"""TEST-ONLY fault injection and probes, applied by patching the library.

Tests use these to show that faults are handled: a NaN at a chosen step, a
kill in the middle of a checkpoint write, and, to compare multi-worker and
single-process runs, inputs that do not depend on how the data is sharded
and a dump of each worker's final weights. The library carries no hook for
them: `install` replaces `training.training_input_fn`, `training._train` and
`tf.train.CheckpointManager.save` with wrappers that add the faults in
force.

They are switched on either in process, with `injected(...)`, or for a
command-line run by running `tests/fault_program.py` (the program with the
faults of the `SIMCLR_TF_TEST_FAULTS` environment variable installed) in
place of `python -m simclr_tf.run`, e.g.

    SIMCLR_TF_TEST_FAULTS="nan_at_step=3" python tests/fault_program.py ...

Settings (comma-separated name=value):
  nan_at_step=S: every image of step S is NaN, so its loss is NaN.
  kill_while_saving=S: SIGKILL this process while it saves checkpoint S,
    after the checkpoint's files are written and before the `checkpoint`
    state file names it.
  hold_after_saving=S: once checkpoint S is saved and named by the state
    file, wait there until killed, so a kill from outside lands mid-run
    however fast the machine trains.
  deterministic_input=1: train on random images drawn from (step, global
    replica id) only, so any replica layout sees the same global batches.
  dump_weights_to=DIR: after training, each process writes its weights to
    DIR/<task>.npz ("chief.npz", "worker_1.npz", ...).
"""

import contextlib
import dataclasses
import os
import signal
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from simclr_tf.training import tf_trainer as training

ENV_VAR = "SIMCLR_TF_TEST_FAULTS"


@dataclasses.dataclass(frozen=True)
class Faults:
  """What to inject; the defaults inject nothing. See the module docstring."""
  nan_at_step: int = 0
  kill_while_saving: int = 0
  hold_after_saving: int = 0
  deterministic_input: bool = False
  dump_weights_to: str = ""

  @property
  def active(self) -> bool:
    return self != Faults()


_current = Faults()


def parse(spec: str) -> Faults:
  """Parses "name=value,name=value" into `Faults`.

  Raises:
    ValueError: for an unknown name or a bad value.
  """
  values = {}
  fields = {f.name: f.type for f in dataclasses.fields(Faults)}
  for item in filter(None, (part.strip() for part in spec.split(","))):
    name, _, value = item.partition("=")
    if name not in fields:
      raise ValueError(f"{ENV_VAR}: unknown setting {name!r}; known: "
                       f"{', '.join(fields)}. Received: {spec!r}")
    if fields[name] in (int, "int"):
      values[name] = int(value)
    elif fields[name] in (bool, "bool"):
      values[name] = value.lower() in ("1", "true", "yes")
    else:
      values[name] = value
  return Faults(**values)


def current() -> Faults:
  """The faults in force."""
  return _current


_ORIGINALS = {
    (training, "training_input_fn"): training.training_input_fn,
    (training, "_train"): training._train,  # pylint: disable=protected-access
    (tf.train.CheckpointManager, "save"): tf.train.CheckpointManager.save,
}


def _faulty_training_input_fn(config, *, start_step, num_classes):
  input_fn = _ORIGINALS[(training, "training_input_fn")](
      config, start_step=start_step, num_classes=num_classes)
  return train_input_fn(
      input_fn, start_step=start_step, image_size=config.data.image_size,
      num_views=2 if config.run.train_mode == "pretrain" else 1,
      num_classes=num_classes, global_batch_size=config.run.train_batch_size)


def _faulty_train(model, *args, run_dir, **kwargs):
  result = _ORIGINALS[(training, "_train")](model, *args, run_dir=run_dir,
                                            **kwargs)
  after_training(model, run_dir.task_name)
  return result


def _faulty_save(manager, checkpoint_number=None, **kwargs):
  # TensorFlow's own save, given the options that plant the kill.
  kwargs["options"] = checkpoint_options(checkpoint_number)
  prefix = _ORIGINALS[(tf.train.CheckpointManager, "save")](
      manager, checkpoint_number=checkpoint_number, **kwargs)
  if _current.hold_after_saving == checkpoint_number:
    while True:
      time.sleep(1)
  return prefix


_PATCHES = {
    (training, "training_input_fn"): _faulty_training_input_fn,
    (training, "_train"): _faulty_train,
    (tf.train.CheckpointManager, "save"): _faulty_save,
}


def activate(faults: Faults) -> None:
  """Puts `faults` in force for the rest of the process; the library's
  functions are patched while any fault is active, and restored after."""
  global _current
  _current = faults
  table = _PATCHES if faults.active else _ORIGINALS
  for (module, name), function in table.items():
    setattr(module, name, function)


@contextlib.contextmanager
def injected(**settings):
  """Puts `Faults(**settings)` in force within a `with` block (tests)."""
  previous = _current
  activate(Faults(**settings))
  try:
    yield _current
  finally:
    activate(previous)


def _step_of_element(context, start_step):
  """Maps element i of this input pipeline to (step, global replica id).

  `distribute_datasets_from_function` hands a pipeline's consecutive
  elements to its replicas in turn, one element per replica per step.
  """
  pipelines = max(context.num_input_pipelines, 1)
  local_replicas = max(context.num_replicas_in_sync // pipelines, 1)

  def locate(index):
    step = start_step + 1 + index // local_replicas
    replica = context.input_pipeline_id * local_replicas + (
        index % local_replicas)
    return step, replica

  return locate


def train_input_fn(input_fn: Callable, *, start_step: int, image_size: int,
                   num_views: int, num_classes: int,
                   global_batch_size: int) -> Callable:
  """The training `input_fn` with the faults in force applied.

  Args:
    input_fn: the real `input_fn(input_context)`.
    start_step: the optimizer step training starts from.
    image_size: image side.
    num_views: views per image on the channel axis.
    num_classes: classes of the one-hot labels.
    global_batch_size: images per step over all replicas.

  Returns:
    `input_fn` itself when no input fault is in force.
  """
  faults = _current
  if not (faults.deterministic_input or faults.nan_at_step):
    return input_fn

  def wrapped(input_context=None):
    context = input_context or tf.distribute.InputContext()
    locate = _step_of_element(context, start_step)
    if faults.deterministic_input:
      batch = context.get_per_replica_batch_size(global_batch_size)

      def make(index):
        step, replica = locate(index)
        seed = tf.stack([tf.cast(step, tf.int64), tf.cast(replica, tf.int64)])
        images = tf.random.stateless_uniform(
            [batch, image_size, image_size, 3 * num_views], seed)
        labels = tf.random.stateless_uniform([batch], seed + 7, 0,
                                             num_classes, tf.int32)
        return images, tf.one_hot(labels, num_classes)

      dataset = tf.data.Dataset.range(2 ** 40).map(make)
    else:
      dataset = input_fn(input_context)
    if faults.nan_at_step:
      def poison(index, element):
        images, labels = element
        step, _ = locate(index)
        bad = tf.equal(step, faults.nan_at_step)
        images = tf.where(bad, tf.fill(tf.shape(images), float("nan")),
                          images)
        return images, labels
      dataset = dataset.enumerate().map(poison)
    return dataset.prefetch(2)

  return wrapped


def checkpoint_options(step: int) -> Optional[tf.train.CheckpointOptions]:
  """Options for saving checkpoint `step`: None unless a kill is planned.

  `CheckpointManager.save` runs the write callbacks it is given before its
  own, which records the new checkpoint in the `checkpoint` state file; so
  the kill lands after the checkpoint's files exist but before it counts.
  """
  if _current.kill_while_saving != step:
    return None

  def kill(save_path):
    del save_path
    os.kill(os.getpid(), signal.SIGKILL)

  return tf.train.CheckpointOptions(experimental_write_callbacks=[kill])


def after_training(model, task_name: str) -> None:
  """Dumps this process's weights when `dump_weights_to` is set."""
  directory = _current.dump_weights_to
  if not directory:
    return
  os.makedirs(directory, exist_ok=True)
  name = (task_name or "chief").replace(" ", "_")
  arrays = {variable.path: np.asarray(variable.numpy())
            for variable in model.weights}
  arrays["__step__"] = np.asarray(int(model.optimizer.iterations.numpy()))
  np.savez(os.path.join(directory, f"{name}.npz"), **arrays)
