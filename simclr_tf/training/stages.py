"""The stage plan both trainers follow; TensorFlow-free.

A run is one or more stages, each a training and/or evaluation of one model
in its own directory:

- the stage that `--train_mode` names, in `model_dir` (for
  `train_mode=linear_eval`, with the linear-evaluation settings applied);
- after pretraining with `--linear_eval_after_pretraining`, the linear
  evaluation of the frozen encoder, in `model_dir/linear_eval`.

This module says which stages run, their configs, how many views a stage's
training batches hold, and the checks of batch sizes against the devices.
The TF trainer (`tf_trainer`) and the Keras trainer for other backends
(`keras_trainer`) each run these stages their own way.
"""

import os
from typing import List, Tuple

from simclr_tf import optimizers
from simclr_tf.config import ConfigError
from simclr_tf.config import ExperimentConfig
from simclr_tf.storage import run_dir

LINEAR_EVAL_DIR = run_dir.LINEAR_EVAL_DIR


def num_views(train_mode: str) -> int:
  """Views per training image: two for the contrastive loss, else one."""
  return 2 if train_mode == "pretrain" else 1


def plan(config: ExperimentConfig) -> List[Tuple[str, ExperimentConfig]]:
  """The stages of a run, in order.

  Args:
    config: the run's validated config.

  Returns:
    (directory name relative to model_dir, "" for model_dir itself; the
    stage's config) for each stage.
  """
  run = config.run
  first = config
  if run.train_mode == "linear_eval":
    first = config.for_linear_eval(model_dir=run.model_dir,
                                   checkpoint=run.checkpoint)
  stages = [("", first)]
  if (config.linear_eval.after_pretraining and "train" in run.mode
      and run.train_mode == "pretrain"):
    stages.append((LINEAR_EVAL_DIR, config.for_linear_eval(
        model_dir=os.path.join(run.model_dir, LINEAR_EVAL_DIR),
        checkpoint=run.model_dir)))
  return stages


def pretrains(config: ExperimentConfig) -> bool:
  """Whether the run trains a pretraining stage (probes and plots follow)."""
  return config.run.train_mode == "pretrain" and "train" in config.run.mode


def check_batches_split(config: ExperimentConfig, devices: int,
                        unit: str = "replicas") -> None:
  """Refuses batch sizes that do not split evenly over the devices.

  Also refuses a `grad_cache_chunks` that does not divide the per-replica
  training batch.

  Args:
    config: a stage's config.
    devices: replicas (TF) or devices (other backends) the batch spans.
    unit: what the devices are called in the message.

  Raises:
    ConfigError: naming the batch size.
  """
  for name, batch in (("train_batch_size", config.run.train_batch_size),
                      ("eval_batch_size", config.run.eval_batch_size)):
    if batch % devices:
      raise ConfigError(
          f"`{name}` must split evenly over the {devices} {unit}. "
          f"Received: {name}={batch}")
  chunks = config.run.grad_cache_chunks
  per_replica = config.run.train_batch_size // devices
  if per_replica % chunks:
    raise ConfigError(
        f"`grad_cache_chunks` must divide the per-replica batch "
        f"({config.run.train_batch_size} over {devices} {unit} = "
        f"{per_replica}). Received: grad_cache_chunks={chunks}")


def step_counts(config: ExperimentConfig,
                num_train_examples: int) -> Tuple[int, int]:
  """(steps per epoch, total steps) of a stage's training.

  Args:
    config: the stage's config.
    num_train_examples: images in its training split.

  Returns:
    Steps per epoch (at least 1) and the total from `train_steps` or
    `train_epochs`.
  """
  run = config.run
  steps_per_epoch = max(1, num_train_examples // run.train_batch_size)
  total_steps = optimizers.total_train_steps(
      num_train_examples, run.train_epochs, run.train_batch_size,
      run.train_steps)
  return steps_per_epoch, total_steps
