"""train_mode=distill: SimCLRv2's distillation loss, its teacher, its stage.

The loss is checked against numpy written from the paper's eq. 2 and 3
(arXiv 2006.10029, section 2), never against the code itself.
"""

import dataclasses
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf import losses
from simclr_tf import export
from simclr_tf.checkpoints import ours as checkpoints
from simclr_tf.checkpoints import pretrained
from simclr_tf.models import simclr
from simclr_tf.training import teacher as teacher_lib
from simclr_tf.training import tf_trainer as training

sys.path.insert(0, os.path.dirname(__file__))
from test_training import tiny_config  # noqa: E402

SIZE = 16
CLASSES = 5
BATCH = 8


def numpy_log_softmax(logits):
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def numpy_distillation(teacher, student, tau):
  """Eq. 2, as a mean over examples, in float64."""
  teacher = np.asarray(teacher, np.float64)
  student = np.asarray(student, np.float64)
  targets = np.exp(numpy_log_softmax(teacher / tau))
  return float(np.mean(-(targets * numpy_log_softmax(student / tau)).sum(-1)))


def numpy_labelled(labels, logits):
  """Cross-entropy at temperature 1, mean over the labelled rows."""
  labels = np.asarray(labels, np.float64)
  mask = labels.sum(-1) > 0
  per_example = -(labels * numpy_log_softmax(
      np.asarray(logits, np.float64))).sum(-1)
  return float(per_example[mask].mean()) if mask.any() else 0.0


@pytest.mark.parametrize("tau", [0.25, 1.0, 4.0])
def test_the_loss_and_its_gradient_equal_numpy(tau):
  rng = np.random.default_rng(int(tau * 4))
  teacher = rng.normal(0, 3, (6, CLASSES)).astype(np.float32)
  student = tf.Variable(rng.normal(0, 3, (6, CLASSES)).astype(np.float32))
  with tf.GradientTape() as tape:
    loss = losses.distillation_loss(teacher, student, temperature=tau)
  np.testing.assert_allclose(float(loss),
                             numpy_distillation(teacher, student.numpy(), tau),
                             rtol=1e-5)
  # d/ds of the mean cross-entropy: (softmax(s / tau) - softmax(t / tau))
  # / (tau * batch), the paper's loss differentiated by hand.
  expected = (np.exp(numpy_log_softmax(student.numpy() / tau)) -
              np.exp(numpy_log_softmax(teacher / tau))) / (tau * 6)
  np.testing.assert_allclose(tape.gradient(loss, student).numpy(), expected,
                             atol=1e-6)


def test_the_loss_refuses_other_classes_and_a_bad_temperature():
  with pytest.raises(ValueError, match="same classes"):
    losses.distillation_loss(np.zeros((2, 3)), np.zeros((2, 4)),
                             temperature=1.0)
  with pytest.raises(ValueError, match="temperature=0"):
    losses.distillation_loss(np.zeros((2, 3)), np.zeros((2, 3)),
                             temperature=0)


def model_config(global_bn=True):
  return config_lib.ModelConfig(resnet_depth=18, width_multiplier=0.125,
                                proj_out_dim=16, global_bn=global_bn)


def build(train_mode, *, seed, label_weight=0.0, tau=1.0, global_bn=True):
  keras.utils.set_random_seed(seed)
  model = simclr.build_simclr_model(
      model_config(global_bn), image_size=SIZE, num_classes=CLASSES,
      train_mode=train_mode, with_supervised_head=True,
      optimizer_name="momentum", distill_temperature=tau,
      distill_label_weight=label_weight)
  # Moving statistics away from 0/1, so inference differs from training.
  rng = np.random.default_rng(seed)
  for variable in model.non_trainable_variables:
    if "moving_mean" in variable.path:
      variable.assign(rng.normal(0, 0.2, variable.shape))
    elif "moving_variance" in variable.path:
      variable.assign(rng.uniform(0.5, 2.0, variable.shape))
  return model


def batch(seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(0, 1, (BATCH, SIZE, SIZE, 3)).astype(np.float32)
  labels = np.zeros((BATCH, CLASSES), np.float32)
  classes = rng.integers(0, CLASSES, BATCH)
  # Labels on 2 of each replica's 4 examples (a label subset), so the
  # replicas' masked means average to the global one.
  for row in (0, 2, 4, 6):
    labels[row, classes[row]] = 1.0
  return images, labels


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("label_weight,tau", [(0.0, 1.0), (0.3, 2.0)])
def test_a_step_reports_the_numpy_loss_and_leaves_the_teacher_alone(
    replicas, label_weight, tau, two_replica_strategy):
  strategy = (two_replica_strategy if replicas == 2
              else tf.distribute.get_strategy())
  images, labels = batch()
  with strategy.scope():
    teacher = build("finetune", seed=1, global_bn=False)
    student = build("distill", seed=2, label_weight=label_weight, tau=tau)
    student.set_teacher(teacher)
    student.compile(keras.optimizers.SGD(0.1))
    student.build_optimizer_slots()
  teacher_logits = teacher(images, training=False)["logits_sup"].numpy()
  # Synchronised BatchNorm: the replicas normalise with the global batch's
  # statistics, as one call on the whole batch does.
  student_logits = student(images, training=True)["logits_sup"].numpy()
  distill = numpy_distillation(teacher_logits, student_logits, tau)
  labelled = numpy_labelled(labels, student_logits)
  expected_total = (1 - label_weight) * distill + label_weight * labelled
  teacher_before = [v.numpy().copy() for v in teacher.variables]
  student_before = [v.numpy().copy() for v in student.trainable_variables]

  dataset = tf.data.Dataset.from_tensors((images, labels))
  history = student.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)
  logs = {name: values[-1] for name, values in history.history.items()}
  assert logs[simclr.DISTILL_LOSS] == pytest.approx(distill, rel=1e-4)
  assert logs[simclr.SUPERVISED_LOSS] == pytest.approx(labelled, rel=1e-4)
  assert logs[simclr.TOTAL_LOSS] == pytest.approx(expected_total, rel=1e-4)
  agreement = np.mean(teacher_logits.argmax(-1) == student_logits.argmax(-1))
  assert logs[simclr.DISTILL_AGREEMENT] == pytest.approx(agreement)
  # The teacher: every weight and moving statistic bit-identical.
  assert teacher.trainable_variables == []
  for variable, before in zip(teacher.variables, teacher_before):
    np.testing.assert_array_equal(variable.numpy(), before,
                                  err_msg=variable.path)
  moved = {v.path for v, b in zip(student.trainable_variables,
                                  student_before)
           if not np.array_equal(v.numpy(), b)}
  # The student trains: its head and, through it, the encoder (the blocks'
  # inner layers wait a step behind the zero-initialised last gamma).
  head = {v.path for v in student.supervised_head.trainable_variables}
  assert head <= moved
  assert len(moved) >= 0.4 * len(student.trainable_variables)
  # And it is no part of the student: not its variables, nor its checkpoint.
  teacher_ids = {id(v) for v in teacher.variables}
  assert not teacher_ids & {id(v) for v in student.variables}


def test_a_student_equal_to_its_teacher_has_zero_gradient():
  # teacher = student: the loss is the teacher's own entropy, a minimum of
  # the cross-entropy, so the gradient at the teacher's weights is zero.
  teacher = build("finetune", seed=3, global_bn=False)
  student = build("distill", seed=4, tau=2.0, global_bn=False)
  student.set_weights(teacher.get_weights())
  student.set_teacher(teacher)
  images, labels = batch(1)
  teacher_logits = teacher(images, training=False)["logits_sup"].numpy()
  probabilities = np.exp(numpy_log_softmax(teacher_logits / 2.0))
  entropy = float(np.mean(-(probabilities *
                            np.log(probabilities)).sum(-1)))

  def loss_at_inference():
    outputs = student(images, training=False)
    return student.compute_losses(images, labels,
                                  outputs)[simclr.DISTILL_LOSS]

  with tf.GradientTape() as tape:
    loss = loss_at_inference()
  assert float(loss) == pytest.approx(entropy, rel=1e-5)
  gradients = tape.gradient(loss, student.trainable_variables)
  scale = max(float(tf.norm(v)) for v in student.trainable_variables)
  assert max(float(tf.norm(g)) for g in gradients if g is not None) < (
      1e-4 * scale)
  # Numerically too: a step either way along a random direction raises the
  # loss by second order only (it is a minimum), never lowers it.
  rng = np.random.default_rng(5)
  directions = [rng.normal(0, 1, v.shape).astype(np.float32)
                for v in student.trainable_variables]
  norm = np.sqrt(sum(float((d ** 2).sum()) for d in directions))
  changes = []
  for sign in (1, -1):
    for variable, direction in zip(student.trainable_variables, directions):
      variable.assign_add(sign * 1e-3 * direction / norm)
    changes.append(float(loss_at_inference()) - entropy)
    for variable, direction in zip(student.trainable_variables, directions):
      variable.assign_sub(sign * 1e-3 * direction / norm)
  assert all(change > -1e-5 for change in changes), changes
  # A first-order change would show as opposite signs of similar size.
  assert abs(changes[0] - changes[1]) < 1e-4, changes


def test_set_teacher_refuses_other_classes():
  student = build("distill", seed=2)
  keras.utils.set_random_seed(0)
  other = simclr.build_simclr_model(
      model_config(False), image_size=SIZE, num_classes=CLASSES + 1,
      train_mode="finetune", with_supervised_head=True)
  with pytest.raises(ValueError, match="teacher classes=6, student classes=5"):
    student.set_teacher(other)


def test_config_refuses_distill_without_a_teacher_and_a_stray_teacher():
  with pytest.raises(config_lib.ConfigError, match="--teacher_checkpoint"):
    config_lib.ExperimentConfig(run=config_lib.RunConfig(
        train_mode="distill")).validate()
  with pytest.raises(config_lib.ConfigError,
                     match="teacher of train_mode=distill"):
    config_lib.ExperimentConfig(run=config_lib.RunConfig(
        train_mode="finetune", from_scratch=True,
        teacher_checkpoint="/x")).validate()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A pretraining run and a fine-tuning run from it, on 25% of the labels."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  root = tmp_path_factory.mktemp("runs")
  quiet = lambda _: None  # noqa: E731
  pretrain = tiny_config(data_dir, root / "pretrain",
                         lineareval_while_pretraining=False,
                         mode="train")
  training.run_experiment(pretrain, log=quiet)
  finetune = with_labels(tiny_config(data_dir, root / "finetune",
                                     train_mode="finetune",
                                     checkpoint=str(root / "pretrain")))
  training.run_experiment(finetune, log=quiet)
  return dict(data_dir=data_dir, root=root, pretrain=str(root / "pretrain"),
              finetune=str(root / "finetune"))


def with_labels(config, fraction=0.25):
  return dataclasses.replace(config, data=dataclasses.replace(
      config.data, label_fraction=fraction)).validate()


def distill_config(runs, name, **run_overrides):
  run = dict(train_mode="distill", checkpoint=runs["pretrain"],
             teacher_checkpoint=runs["finetune"])
  run.update(run_overrides)
  return with_labels(tiny_config(runs["data_dir"], runs["root"] / name,
                                 **run))


def test_a_distillation_stage_trains_evaluates_and_exports_the_student(runs):
  lines = []
  config = distill_config(runs, "distill")
  [result] = training.run_experiment(config, log=lines.append)
  text = "\n".join(lines)
  assert "[distill] teacher: " in text
  assert "distill_loss" in text
  results = result.eval_results
  assert 0.0 <= results[simclr.TEACHER_TOP_1] <= 1.0
  # The teacher's top-1 is the fine-tuning run's own evaluation.
  with open(os.path.join(runs["finetune"], "result.json")) as handle:
    import json  # pylint: disable=g-import-not-at-top
    finetuned = json.load(handle)
  assert results[simclr.TEACHER_TOP_1] == pytest.approx(
      finetuned[simclr.EVAL_TOP_1])
  # Distillation sees every training image: 4 steps of 32 of 128, not of
  # the 25% subset (32 images, one step per epoch).
  assert "1.0 epochs of 4 steps" in text
  tags = set()
  for name in tf.io.gfile.listdir(config.run.model_dir):
    if name.startswith("events.out.tfevents"):
      for event in tf.compat.v1.train.summary_iterator(
          os.path.join(config.run.model_dir, name)):
        tags.update(value.tag for value in event.summary.value)
  assert {"train/distill_loss", "eval/label_top_1_accuracy",
          "eval/teacher_top_1_accuracy"} <= tags
  # The student's checkpoint and export hold the student only.
  prefix = tf.train.latest_checkpoint(config.run.model_dir)
  keys = [name for name, _ in tf.train.list_variables(prefix)]
  assert not [key for key in keys if "teacher" in key]
  export_dir = os.path.join(config.run.model_dir, "saved_model", "4")
  module = tf.saved_model.load(export_dir)
  images = np.random.default_rng(0).uniform(
      0, 1, (3, SIZE, SIZE, 3)).astype(np.float32)
  assert module(images)["logits_sup"].shape == (3, 10)
  # Exactly the student's variables: a teacher inside would double them.
  student = simclr.build_from_experiment(config, num_classes=10,
                                         with_supervised_head=True)
  assert len(module.variables) == len(student.weights)
  # Every client serves the student's own logits, those of its checkpoint.
  pretrained.restore_for_eval(student, config.run.model_dir)
  expected = student(images, training=False)[simclr.LOGITS_SUP].numpy()
  served = {"tf.saved_model.load": module(images)[simclr.LOGITS_SUP],
            "TFSMLayer": keras.layers.TFSMLayer(
                export_dir, call_endpoint=export.SERVING_SIGNATURE)(
                    images)[simclr.LOGITS_SUP]}
  try:
    import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
    served["hub.KerasLayer"] = hub.KerasLayer(export_dir)(
        images, training=False)[simclr.LOGITS_SUP]
  except ImportError:  # test-only dependency (requirements-test.txt)
    pass
  for client, logits in served.items():
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5,
                               err_msg=client)
  # And the program evaluates the export as --checkpoint to the student's
  # own top-1 on the same split.
  evaluated = dataclasses.replace(config, run=dataclasses.replace(
      config.run, mode="eval", checkpoint=export_dir,
      teacher_checkpoint=None, train_mode="finetune",
      model_dir=str(runs["root"] / "distill_export_eval"))).validate()
  [from_export] = training.run_experiment(evaluated, log=lambda _: None)
  assert from_export.eval_results[simclr.EVAL_TOP_1] == pytest.approx(
      results[simclr.EVAL_TOP_1])


def test_a_teacher_without_a_supervised_head_is_refused(runs):
  config = distill_config(runs, "no_head",
                          teacher_checkpoint=runs["pretrain"])
  with pytest.raises(checkpoints.CheckpointError,
                     match="has no supervised head: it is a pretraining"):
    training.run_experiment(config, log=lambda _: None)


def test_a_teacher_of_other_classes_is_refused(runs):
  config = distill_config(runs, "classes")
  # The teacher learnt synthetic_shapes' 10 classes; no built-in dataset
  # has another count, so the loader is asked with one directly.
  with pytest.raises(checkpoints.CheckpointError,
                     match="predicts 10 classes, but dataset "
                           "'synthetic_shapes' has 7"):
    teacher_lib.build_teacher(config, num_classes=7)


def test_the_teacher_architecture_comes_from_its_run(runs):
  # A student of another width still gets the teacher the run trained.
  config = distill_config(runs, "wider")
  config = dataclasses.replace(config, model=dataclasses.replace(
      config.model, width_multiplier=0.25)).validate()
  model, classes = teacher_lib.teacher_architecture(config)
  assert (model.width_multiplier, classes) == (0.125, 10)


def pipeline_config(model_dir, **semi):
  config = config_lib.ExperimentConfig(
      data=config_lib.DataConfig(dataset="synthetic_shapes",
                                 label_fraction=0.1),
      linear_eval=config_lib.LinearEvalConfig(after_pretraining=True),
      semi_supervised=config_lib.SemiSupervisedConfig(pipeline=True, **semi),
      run=config_lib.RunConfig(model_dir=str(model_dir)))
  return config.validate()


def test_the_pipeline_plans_its_stages_in_subfolders(tmp_path):
  from simclr_tf.training import stages  # pylint: disable=g-import-not-at-top
  config = pipeline_config(tmp_path, finetune_epochs=7, distill_epochs=9,
                           learning_rate=0.2)
  planned = stages.plan(config)
  assert [name for name, _ in planned] == [
      "pretrain", os.path.join("pretrain", "linear_eval"), "finetune",
      "distill", "supervised_baseline"]
  by_name = dict(planned)
  assert by_name["pretrain"].run.model_dir == str(tmp_path / "pretrain")
  assert not by_name["pretrain"].semi_supervised.pipeline
  finetune, distill = by_name["finetune"], by_name["distill"]
  baseline = by_name["supervised_baseline"]
  assert (finetune.run.train_mode, finetune.run.checkpoint) == (
      "finetune", str(tmp_path / "pretrain"))
  assert (distill.run.train_mode, distill.run.teacher_checkpoint) == (
      "distill", str(tmp_path / "finetune"))
  assert baseline.run.from_scratch and baseline.run.checkpoint is None
  for stage in (finetune, distill, baseline):
    # v2: fine-tune from the projection head's first layer, the logits
    # layer at zero, LARS with square-root scaling (the authors' command).
    assert stage.model.ft_proj_selector == 1
    assert stage.model.zero_init_logits_layer
    assert (stage.optimizer.optimizer, stage.optimizer.learning_rate,
            stage.optimizer.learning_rate_scaling,
            stage.optimizer.weight_decay, stage.optimizer.warmup_epochs) == (
                "lars", 0.2, "sqrt", 0.0, 0.0)
    assert stage.data.label_fraction == 0.1
  assert finetune.run.train_epochs == baseline.run.train_epochs == 7
  assert distill.run.train_epochs == 9
  assert stages.pretraining_stage(config) == by_name["pretrain"]
  without = pipeline_config(tmp_path, baseline=False)
  assert "supervised_baseline" not in dict(stages.plan(without))


def test_the_pipeline_refuses_what_contradicts_it(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="label subset"):
    config_lib.ExperimentConfig(
        semi_supervised=config_lib.SemiSupervisedConfig(pipeline=True),
        run=config_lib.RunConfig(model_dir=str(tmp_path))).validate()
  with pytest.raises(config_lib.ConfigError, match="from pretraining"):
    config_lib.ExperimentConfig(
        data=config_lib.DataConfig(label_fraction=0.1),
        semi_supervised=config_lib.SemiSupervisedConfig(pipeline=True),
        run=config_lib.RunConfig(train_mode="finetune", from_scratch=True,
                                 model_dir=str(tmp_path))).validate()


def test_the_pipeline_killed_while_distilling_resumes_there_and_finishes(
    tmp_path):
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  import command_line  # pylint: disable=g-import-not-at-top
  model_dir = tmp_path / "run"
  args = command_line.tiny_flags(
      str(tmp_path / "tfds"), str(model_dir), semi_supervised="true",
      label_fraction=0.25, semi_supervised_finetune_epochs=2,
      semi_supervised_distill_epochs=3, checkpoint_steps=2,
      keep_hub_module_max=0, linear_eval_after_pretraining="false",
      train_epochs=1)
  process = subprocess.Popen(
      command_line.PROGRAM + args, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL, cwd=command_line.REPO,
      env=dict(os.environ, PYTHONPATH=command_line.REPO))
  distill_dir = model_dir / "distill"
  deadline = time.time() + 400
  try:
    while (command_line.latest_checkpoint_step(distill_dir) or 0) < 2:
      assert process.poll() is None, "the run ended before distilling"
      assert time.time() < deadline, "no distillation checkpoint in time"
      time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
  finally:
    process.wait()
  killed_at = command_line.latest_checkpoint_step(distill_dir)
  # 3 epochs of 128 images at batch 32: 13 steps (the authors' + 1).
  assert 2 <= killed_at < 13

  result = command_line.run_program(args, timeout=400)
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-3000:]
  assert "[pretrain] already at step" in output
  assert "[finetune] already at step" in output
  assert f"Resumed from {distill_dir}/ckpt-{killed_at}" in output
  assert command_line.latest_checkpoint_step(distill_dir) == 13
  summary = output.split("==== summary ====")[1]
  for name in ("pretrain", "finetune", "distill", "supervised_baseline"):
    assert str(model_dir / name) in summary, summary
  assert "the distilled student; its teacher" in summary
  assert "supervised from scratch on the same labels" in summary


AUTHORS_FINETUNED = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "..", "shared", "fixtures", "authors_tf2",
                                 "r18_cifar_finetune")


@pytest.mark.skipif(
    not os.path.isdir(AUTHORS_FINETUNED),
    reason=f"the authors' TF2 fixture is not here ({AUTHORS_FINETUNED}): a "
    "clone without ../shared")
def test_the_authors_finetuned_checkpoint_is_a_teacher():
  config = config_lib.ExperimentConfig(
      data=config_lib.DataConfig(dataset="synthetic_shapes", image_size=32),
      run=config_lib.RunConfig(train_mode="distill",
                               teacher_checkpoint=AUTHORS_FINETUNED)
  ).validate()
  teacher = teacher_lib.build_teacher(config, num_classes=10)
  reference = np.load(os.path.join(AUTHORS_FINETUNED,
                                   "reference_outputs.npz"))
  logits = teacher(reference["images"], training=False)["logits_sup"]
  expected = reference["inference/logits_sup"]
  scale = float(np.abs(expected).max())
  assert float(np.abs(logits.numpy() - expected).max()) <= 1e-5 * max(
      scale, 1.0)
  with pytest.raises(checkpoints.CheckpointError, match="predicts 10"):
    teacher_lib.build_teacher(config, num_classes=3)


@pytest.mark.parametrize("extra,message", [
    ([], "train_mode=distill needs --teacher_checkpoint"),
    (["--teacher_checkpoint=/nonexistent/run"],
     "--teacher_checkpoint /nonexistent/run: no such file or directory"),
])
def test_the_program_refuses_a_missing_teacher_in_one_line(tmp_path, extra,
                                                           message):
  import command_line  # pylint: disable=g-import-not-at-top
  result = command_line.run_program(command_line.tiny_flags(
      str(tmp_path / "tfds"), str(tmp_path / "run"), train_mode="distill",
      train_steps=1) + extra)
  assert message in command_line.one_error_line(result)
