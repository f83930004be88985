"""The stage plan both trainers follow; TensorFlow-free.

A run is one or more stages, each a training and/or evaluation of one model
in its own directory:

- the stage that `--train_mode` names, in `model_dir` (for
  `train_mode=linear_eval`, with the linear-evaluation settings applied);
- after pretraining with `--linear_eval_after_pretraining`, the linear
  evaluation of the frozen encoder, in `model_dir/linear_eval`;
- with `--semi_supervised`, SimCLRv2's pipeline instead, each stage in a
  subfolder: `pretrain/` (and `pretrain/linear_eval/`), `finetune/`,
  `distill/` and `supervised_baseline/` (`SemiSupervisedConfig`).

This module says which stages run, their configs, how many views a stage's
training batches hold, and the checks of batch sizes against the devices.
The TF trainer (`tf_trainer`) and the Keras trainer for other backends
(`keras_trainer`) each run these stages their own way.
"""

import dataclasses
import os
from typing import List, Tuple

from simclr_tf import optimizers
from simclr_tf.config import ConfigError
from simclr_tf.config import ExperimentConfig
from simclr_tf.storage import run_dir

LINEAR_EVAL_DIR = run_dir.LINEAR_EVAL_DIR
# The semi-supervised pipeline's stage directories, under model_dir.
PRETRAIN_DIR = "pretrain"
FINETUNE_DIR = "finetune"
DISTILL_DIR = "distill"
SUPERVISED_BASELINE_DIR = "supervised_baseline"


def num_views(train_mode: str) -> int:
  """Views per training image: two for the contrastive loss, else one."""
  return 2 if train_mode == "pretrain" else 1


def labelled_only(train_mode: str) -> bool:
  """Whether a stage trains on the labelled examples alone.

  Fine-tuning and linear evaluation do; pretraining and distillation see
  every training image (distillation's labels, with a label subset, only
  on the subset).
  """
  return train_mode in ("finetune", "linear_eval")


def plan(config: ExperimentConfig) -> List[Tuple[str, ExperimentConfig]]:
  """The stages of a run, in order.

  Args:
    config: the run's validated config.

  Returns:
    (directory name relative to model_dir, "" for model_dir itself; the
    stage's config) for each stage.
  """
  if config.semi_supervised.pipeline:
    return _semi_supervised_plan(config)
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


def _semi_supervised_plan(config):
  """SimCLRv2's pipeline: pretrain, fine-tune, self-distil, and a baseline."""
  run, semi = config.run, config.semi_supervised
  model_dir = run.model_dir

  def at(name):
    return os.path.join(model_dir, name)

  pretrain = dataclasses.replace(
      config, semi_supervised=dataclasses.replace(semi, pipeline=False),
      run=dataclasses.replace(run, model_dir=at(PRETRAIN_DIR))).validate()
  # Pretraining and any linear evaluation after it, one level down.
  stages = [(os.path.join(PRETRAIN_DIR, name), stage)
            if name else (PRETRAIN_DIR, stage)
            for name, stage in plan(pretrain)]
  # v2 fine-tunes from the projection head's first layer (section 2; a head
  # without layers leaves the encoder output), as the authors' README
  # command for 1% of ImageNet does: the logits layer at zero (the head
  # trained beside pretraining read h, not this layer), LARS with
  # square-root batch scaling, no weight decay and no warm-up.
  selector = min(1, config.model.num_proj_head_layers)
  model = dataclasses.replace(config.model, ft_proj_selector=selector,
                              zero_init_logits_layer=True)
  schedule = dataclasses.replace(
      config.optimizer, optimizer="lars",
      learning_rate=semi.learning_rate, learning_rate_scaling="sqrt",
      weight_decay=0.0, warmup_epochs=0.0)

  def supervised(name, train_mode, epochs, **run_settings):
    return dataclasses.replace(
        pretrain, model=model, optimizer=schedule,
        linear_eval=dataclasses.replace(config.linear_eval,
                                        after_pretraining=False),
        run=dataclasses.replace(
            pretrain.run, train_mode=train_mode, model_dir=at(name),
            mode="train_then_eval", train_epochs=epochs, train_steps=0,
            lineareval_while_pretraining=False, knn_eval_every_epochs=0,
            grad_cache_chunks=1,
            probe_baselines=False, write_plots=False,
            **run_settings)).validate()

  stages.append((FINETUNE_DIR, supervised(
      FINETUNE_DIR, "finetune", semi.finetune_epochs,
      checkpoint=at(PRETRAIN_DIR))))
  stages.append((DISTILL_DIR, supervised(
      DISTILL_DIR, "distill", semi.distill_epochs,
      checkpoint=at(PRETRAIN_DIR), teacher_checkpoint=at(FINETUNE_DIR))))
  if semi.baseline:
    stages.append((SUPERVISED_BASELINE_DIR, supervised(
        SUPERVISED_BASELINE_DIR, "finetune", semi.finetune_epochs,
        from_scratch=True)))
  return stages


def pretraining_stage(config: ExperimentConfig):
  """The config of the run's pretraining stage, or None without one.

  Probes and plots follow that stage, in its directory.
  """
  if config.run.train_mode != "pretrain" or "train" not in config.run.mode:
    return None
  for _, stage in plan(config):
    if stage.run.train_mode == "pretrain":
      return stage
  return None


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
