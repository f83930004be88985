"""The fixed teacher of a distillation stage (`train_mode=distill`).

SimCLRv2 (arXiv 2006.10029, section 2) ends its semi-supervised recipe by
distilling the fine-tuned network into a student on every training image.
This module builds that teacher from `--teacher_checkpoint` (a fine-tuning
run, its export, or the authors' fine-tuned checkpoint) with the
architecture the checkpoint was trained with, which need not be the
student's, and checks that it is a classifier of the dataset's classes.
"""

import dataclasses
from typing import Callable, Optional, Tuple

from simclr_tf import config as config_lib
from simclr_tf.checkpoints import authors
from simclr_tf.checkpoints import ours
from simclr_tf.checkpoints import pretrained
from simclr_tf.models import simclr
from simclr_tf.storage import config_file

TeacherError = ours.CheckpointError


def _no_head_error(path: str) -> TeacherError:
  return TeacherError(
      f"--teacher_checkpoint {path} has no supervised head: it is a "
      "pretraining checkpoint, not a classifier. Fine-tune it first "
      "(--train_mode=finetune --checkpoint=...) and give that run as the "
      "teacher.")


def _stored_model_config(stored: Optional[dict],
                         fallback: config_lib.ModelConfig
                         ) -> config_lib.ModelConfig:
  """The model settings of a stored config, or `fallback` without one."""
  if not stored:
    return fallback
  known = {field.name for field in dataclasses.fields(config_lib.ModelConfig)}
  settings = {name: value for name, value in
              config_file.comparable_stored(stored).get("model", {}).items()
              if name in known}
  model = dataclasses.replace(fallback, **settings)
  image_size = stored.get("data", {}).get("image_size")
  if image_size:
    # The stem an automatic choice gave the teacher at its own image size.
    model = dataclasses.replace(
        model, cifar_stem=model.use_cifar_stem(int(image_size)))
  return model


def teacher_architecture(config: config_lib.ExperimentConfig
                         ) -> Tuple[config_lib.ModelConfig, int]:
  """The teacher's model settings and class count, read from its checkpoint.

  Args:
    config: the distillation stage's config (its `run.teacher_checkpoint`).

  Returns:
    (model settings of the teacher, classes of its supervised head).

  Raises:
    TeacherError: no such checkpoint, or one without a supervised head.
  """
  path = config.run.teacher_checkpoint
  if not path:
    raise TeacherError("train_mode=distill needs --teacher_checkpoint.")
  source = authors.open_source(path)
  if source is not None:
    architecture = source.architecture
    if not architecture.num_classes:
      raise _no_head_error(path)
    as_finetune = dataclasses.replace(
        config, run=dataclasses.replace(
            config.run, train_mode="finetune", checkpoint=path,
            teacher_checkpoint=None, from_scratch=False))
    model = authors.adopt_architecture(as_finetune).model
    return model, int(architecture.num_classes)
  try:
    prefix = pretrained.resolve(path)
  except ours.CheckpointError as error:
    # The router names the flag it usually serves.
    raise TeacherError(str(error).replace(
        "--checkpoint", "--teacher_checkpoint", 1)) from error
  shapes = ours.saved_part_shapes(prefix, "supervised_head")
  kernels = [shape for shape in shapes or () if len(shape) == 2]
  if len(kernels) != 1:
    raise _no_head_error(path)
  model = _stored_model_config(pretrained.stored_config(prefix), config.model)
  return model, int(kernels[0][1])


def build_teacher(config: config_lib.ExperimentConfig, *, num_classes: int,
                  log: Optional[Callable[[str], None]] = None):
  """Builds the teacher and loads its weights, in the current scope.

  Call it inside the strategy's scope (and dtype policy) the student is
  built in, so its variables are mirrored the same way.

  Args:
    config: the distillation stage's config.
    num_classes: the dataset's classes, which the teacher must predict.
    log: where the line on what was loaded goes.

  Returns:
    A built `SimCLRModel` with the teacher's weights; it runs only in
    inference mode.

  Raises:
    TeacherError: a missing checkpoint, one without a supervised head, one
      of other classes, or one that does not hold the architecture it
      claims.
  """
  path = config.run.teacher_checkpoint
  model_config, teacher_classes = teacher_architecture(config)
  if teacher_classes != num_classes:
    raise TeacherError(
        f"--teacher_checkpoint {path} predicts {teacher_classes} classes, "
        f"but dataset {config.data.dataset!r} has {num_classes}. Give a "
        "teacher fine-tuned on this dataset.")
  # Inference only: no batch statistics to share, nothing frozen to choose.
  model_config = dataclasses.replace(
      model_config, global_bn=False, fine_tune_after_block=-1,
      zero_init_logits_layer=False)
  teacher = simclr.build_simclr_model(
      model_config, image_size=config.data.image_size,
      num_classes=teacher_classes, train_mode="finetune",
      with_supervised_head=True)
  try:
    pretrained.restore_for_eval(teacher, path)
  except ours.CheckpointError as error:
    raise TeacherError("--teacher_checkpoint: " + str(error).replace(
        "--checkpoint ", "", 1)) from error
  if log is not None:
    log(f"[distill] teacher: {path} ({model_config.resnet_depth}-layer "
        f"ResNet, width {model_config.width_multiplier:g}, "
        f"{teacher_classes} classes), fixed, in inference mode.")
  return teacher
