"""Runs an experiment: build, train, evaluate, for every train mode.

`run_experiment(config)` is the program behind `python -m simclr_tf.run`. It
takes an `ExperimentConfig` only; flags never reach this module.
"""

import json
import logging
import os
import time
from typing import Callable, List, Optional

import keras
import tensorflow as tf

from simclr_tf.augment import host as augment
from simclr_tf.training import callbacks as callbacks_lib
from simclr_tf.checkpoints import ours as checkpoints
from simclr_tf.checkpoints import pretrained
from simclr_tf import data as data_lib
from simclr_tf.training import distribute
from simclr_tf import export as export_lib
from simclr_tf.training import faults
from simclr_tf.evaluation import health_monitor
from simclr_tf.evaluation import knn
from simclr_tf import optimizers
from simclr_tf.training import precision
from simclr_tf.training import preemption
from simclr_tf.storage import files
from simclr_tf.storage import run_dir as run_dir_lib
from simclr_tf.training import stages
from simclr_tf.training import teacher as teacher_lib
from simclr_tf.models import train_loop
from simclr_tf.config import ConfigError
from simclr_tf.config import ExperimentConfig
from simclr_tf.models import simclr
from simclr_tf.training.stage_result import RESULT_FILE
from simclr_tf.training.stage_result import StageResult

# Each replica's next batches are copied to its device while it computes
# (a buffer of one batch per replica, TensorFlow's default, made explicit).
TRAIN_INPUT_OPTIONS = tf.distribute.InputOptions(
    experimental_fetch_to_device=True, experimental_per_replica_buffer_size=1)


def run_experiment(config: ExperimentConfig,
                   log: Callable[[str], None] = logging.info,
                   strategy=None) -> List[StageResult]:
  """Runs what `config.run.mode` asks, then any linear evaluation after it.

  Args:
    config: a validated `ExperimentConfig`.
    log: where progress lines go.
    strategy: a `tf.distribute.Strategy`; None builds the one the config
      asks for.

  Returns:
    One `StageResult` per stage run.

  Raises:
    ConfigError, data.DataError, checkpoints.CheckpointError,
      run_dir.RunDirError: bad input, with a one-line message.
    faults.NonFiniteLossError: the loss went NaN or infinite.
    faults.WorkerLostError: another worker of a multi-worker job died.
  """
  config.validate()
  if strategy is None:
    strategy = distribute.build_strategy(
        config.run.strategy, tpu=config.run.tpu,
        cpu_replicas=config.run.cpu_replicas)
  stages.check_batches_split(config, strategy.num_replicas_in_sync)
  keras.utils.set_random_seed(config.run.seed)

  # Checked, and locked by the chief, before any work; the lock is released
  # and other workers' temporary files deleted however the run ends.
  with distribute.run_directory(config.run.model_dir, strategy) as run_dir:
    run_dir.prepare(log)
    if run_dir.task_name:
      log(f"This process is {run_dir.task_name}"
          + (", the chief: it writes model_dir." if run_dir.is_chief else
             f"; it writes only temporary files ({run_dir.write_dir})."))
    results = []
    for name, stage_config in stages.plan(config):
      stages.check_batches_split(stage_config,
                                 strategy.num_replicas_in_sync)
      results.append(run_stage(
          stage_config, strategy, log,
          run_dir=run_dir.child(name) if name else run_dir))
    pretraining = stages.pretraining_stage(config)
    if (config.run.probe_baselines and pretraining is not None
        and run_dir.is_chief):
      # Imported here: it needs scikit-learn, which nothing else does.
      from simclr_tf.evaluation import probe_baselines  # pylint: disable=g-import-not-at-top
      start = time.time()
      results[0].probe = probe_baselines.compare(
          pretraining, pretraining.run.model_dir, log=log)
      log(f"[probe] SimCLR and both baselines probed in "
          f"{time.time() - start:.0f} s.")
    if (config.run.write_plots and pretraining is not None
        and run_dir.is_chief):
      # Imported here: it needs matplotlib, which nothing else does.
      from simclr_tf.evaluation import plots  # pylint: disable=g-import-not-at-top
      start = time.time()
      plots.write_for_run(pretraining, log=log)
      log(f"[plots] written in {time.time() - start:.0f} s.")
  return results


def run_stage(config: ExperimentConfig, strategy,
              log: Callable[[str], None],
              run_dir: Optional[run_dir_lib.RunDirectory] = None
              ) -> StageResult:
  """Builds one model and trains and/or evaluates it.

  Resumes from the latest checkpoint in `model_dir` when there is one (and
  its stored config allows it); otherwise fine-tuning and linear evaluation
  load `--checkpoint`. Ends by exporting a SavedModel to
  `model_dir/saved_model/<step>/`.

  Args:
    config: a validated config for this stage.
    strategy: the `tf.distribute.Strategy`.
    log: where progress lines go.
    run_dir: where this process writes (`run_dir.write_dir`: `model_dir` on
      the chief, a temporary directory on other workers); None makes one
      for `config.run.model_dir`.

  Returns:
    The `StageResult`.
  """
  run = config.run
  info = data_lib.get_dataset_info(
      config.data, supervised=stages.labelled_only(run.train_mode))
  if run.train_mode != "pretrain" or run.lineareval_while_pretraining:
    if info.num_classes < 1:
      raise ConfigError(
          f"train_mode={run.train_mode} needs labels, but dataset "
          f"{config.data.dataset!r} has none. Pretrain without "
          "--lineareval_while_pretraining, or give a labeled dataset.")
  if run_dir is None:
    run_dir = distribute.run_directory(run.model_dir, strategy)
  tf.io.gfile.makedirs(run_dir.write_dir)
  latest = _resumable_checkpoint(run.model_dir, strategy, run_dir.is_chief,
                                 log)
  resuming = run_dir_lib.check_resume_config(
      config, log, has_checkpoint=latest is not None)

  steps_per_epoch, total_steps = stages.step_counts(
      config, info.num_train_examples)
  # Seeded again here: preparing data (e.g. generating synthetic_shapes)
  # draws Python random numbers, and initial weights must depend on the
  # seed alone, or a worker that generated data would start elsewhere.
  keras.utils.set_random_seed(run.seed)
  model = build_model(config, strategy, info, total_steps, log=log)
  emulated = precision.emulation_warning(config.run.precision)
  if emulated:
    log(f"[{config.run.train_mode}] {emulated}")
  run_dir_lib.check_free_space(
      run_dir.write_dir, run_dir_lib.CHECKPOINT_SPACE_FACTOR *
      run_dir_lib.checkpoint_bytes(list(model.variables) +
                                   list(model.optimizer.variables)))
  if not (resuming and run.mode == "eval"):
    # Written only after the checks: settings a resumed run may not change
    # are the stored ones, so this never rewrites them.
    run_dir_lib.write_config(run_dir, config)
  # Non-chief workers save into their temporary directory (saving runs
  # collective ops every worker must join), keeping only the newest.
  manager = checkpoints.make_manager(
      model, run_dir.write_dir,
      run.keep_checkpoint_max if run_dir.is_chief else 1)
  random_init = _initialise(model, latest, config, log)

  result = StageResult(run.train_mode, run.model_dir, _step(model),
                       random_init=random_init)
  writer = distribute.summary_writer(run_dir)
  probe = health_monitor.build_probe(model, config, strategy)
  try:
    if "train" in run.mode:
      _train(model, manager, config, strategy, writer, log,
             total_steps=total_steps, steps_per_epoch=steps_per_epoch,
             run_dir=run_dir, num_classes=max(info.num_classes, 1),
             probe=probe)
      result.global_step = _step(model)
    if run.mode == "eval" and latest is None:
      if not run.checkpoint:
        raise checkpoints.CheckpointError(
            f"Nothing to evaluate: {run.model_dir} holds no checkpoint "
            "and no --checkpoint was given.")
      pretrained.restore_for_eval(model, run.checkpoint, log=log)
    if probe is not None:
      # The encoder the stage ends with, the one evaluated and exported.
      result.health = health_monitor.measure_and_report(
          probe, step=_step(model), summary_writer=writer, log=log,
          stage=run.train_mode)
    if "eval" in run.mode:
      result.eval_results = evaluate(
          model, config, strategy, writer, log,
          num_eval_examples=info.num_eval_examples,
          write_dir=run_dir.write_dir, extra_results=result.health)
    elif result.health:
      write_results(dict(result.health, global_step=_step(model)),
                    run_dir.write_dir)
  finally:
    # Also on errors (a NaN, a lost worker): the summaries that led up to
    # it are what the user will look at.
    writer.close()
    skipped = data_lib.take_skipped_files_report()
    if skipped:
      log(f"[{run.train_mode}] {skipped}")
  # Every worker exports, as TensorFlow asks of savers under a multi-worker
  # strategy; only the chief's lands in model_dir.
  if config.run.keep_hub_module_max:
    export_lib.export_to_model_dir(model, config, global_step=_step(model),
                                   log=log, model_dir=run_dir.write_dir)
  return result


def build_model(config: ExperimentConfig, strategy, info, total_steps: int,
                log: Optional[Callable[[str], None]] = None):
  """The stage's compiled model, its optimizer and slots, in `strategy`.

  A distillation stage's model gets its teacher (`teacher.build_teacher`)
  from `run.teacher_checkpoint`; a distillation evaluated without one
  reports the student alone.

  Args:
    config: the stage's config.
    strategy: the `tf.distribute.Strategy`.
    info: the dataset's `DatasetInfo` (classes, examples per epoch).
    total_steps: the run's optimizer steps, for the learning-rate schedule.
    log: where the line on the teacher goes.

  Returns:
    A compiled `SimCLRModel` (optimizer loss-scaled for float16).
  """
  run = config.run
  # Layers take the dtype policy when built; variables stay float32.
  with strategy.scope(), precision.policy_scope(run.precision):
    model = simclr.build_from_experiment(
        config, num_classes=max(info.num_classes, 1),
        with_supervised_head=run.lineareval_while_pretraining)
    if run.train_mode == "distill" and run.teacher_checkpoint:
      model.set_teacher(teacher_lib.build_teacher(
          config, num_classes=max(info.num_classes, 1), log=log))
    schedule = optimizers.schedule_from_config(
        config.optimizer, batch_size=run.train_batch_size,
        num_examples=info.num_train_examples, total_steps=total_steps)
    optimizer = precision.wrap_optimizer(
        optimizers.build_optimizer(config.optimizer, schedule), run.precision)
    # With `augment.on_device` the pipeline yields uint8 images and the
    # views are made in the step.
    model.compile(optimizer, steps_per_loop=run.steps_per_loop,
                  jit_compile=run.jit_compile,
                  train_augmentation=(on_device_augmentation(config)
                                      if train_augment_config(config).on_device
                                      else None),
                  stop_at_step=total_steps)
    model.build_optimizer_slots()
  return model


def _step(model):
  return int(model.optimizer.iterations.numpy())


# What the chief sends instead of a step when it cannot choose one.
_CHIEF_FAILED = 2 ** 52 - 1


def _resumable_checkpoint(model_dir, strategy, is_chief, log):
  """The checkpoint every process of the job resumes from, or None.

  The chief alone verifies the checkpoints of `model_dir` (and sets damaged
  ones aside); the other workers restore the one it chose. A worker that
  judged for itself could see a checkpoint the chief is renaming, or a
  transient read error the chief did not, and resume from another step.
  """
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return checkpoints.resumable_checkpoint(model_dir, log=log, repair=True)
  # The code sent: the chosen step + 1, 0 for none, or _CHIEF_FAILED, so
  # that the other workers stop with the chief rather than wait for it.
  chosen, code, failure = None, 0, None
  if is_chief:
    try:
      chosen = checkpoints.resumable_checkpoint(model_dir, log=log,
                                                repair=True)
      if chosen is not None:
        code = checkpoints.checkpoint_step(chosen) + 1
    except checkpoints.CheckpointError as error:
      code, failure = _CHIEF_FAILED, error
  code = distribute.chiefs_value(strategy, code, is_chief=is_chief)
  if failure is not None:
    raise failure
  if code == _CHIEF_FAILED:
    raise checkpoints.CheckpointError(
        f"the chief could not choose a checkpoint of {model_dir} to resume "
        "from; its output says why.")
  if is_chief or code == 0:
    return chosen
  return checkpoints.prefix_of_step(model_dir, code - 1)


def _initialise(model, latest, config, log):
  """Resumes from `latest`, or loads the pretrained encoder.

  Returns:
    True if the encoder is left at its random initialisation.
  """
  run = config.run
  if latest:
    checkpoints.restore_latest(model, latest)
    log(f"Resumed from {latest} at step {_step(model)}.")
    # A resumed stage that started from random weights still did.
    return (run.train_mode != "pretrain" and not run.checkpoint
            and "train" in run.mode)
  if run.mode == "eval" or run.train_mode == "pretrain":
    return run.train_mode == "pretrain" and run.mode == "eval"
  if run.checkpoint:
    pretrained.load_pretrained(model, run.checkpoint, config.model,
                                log=log, image_size=config.data.image_size)
    return False
  if run.train_mode == "linear_eval":
    log("NOTE: linear_eval without --checkpoint: the encoder stays at its "
        "RANDOM initialisation. This is the baseline, not a trained model.")
  elif run.train_mode == "distill":
    log("[distill] the student starts at random initialisation (no "
        "--checkpoint).")
  else:
    log("Training the supervised baseline from scratch (--from_scratch).")
  return True


def train_augment_config(config):
  """The augmentation settings of the stage's training data
  (`ExperimentConfig.train_augment`).

  Args:
    config: the stage's `ExperimentConfig`.

  Returns:
    An `AugmentConfig`.
  """
  return config.train_augment()


def on_device_augmentation(config):
  """What the train step runs on each batch with `augment.on_device`.

  The host pipeline takes the crops from the full-resolution images; this
  is the rest of the batched transform of `simclr_tf.augment.host`, with the
  same settings as the tf.data path of this train mode: flip, colour
  distortion and blur when pretraining (two views), flips only when
  fine-tuning or training a linear head (one view).

  Args:
    config: the stage's `ExperimentConfig`.

  Returns:
    A function `(crops, replica_id=0, step=0)` from uint8 (B, size, size,
    3 * views) crops to float32 (B, size, size, 3 * views) views in [0, 1].
    Its draws are stateless, from `augment.device_seed` of the run's seed,
    the replica (over all workers) and the step.
  """
  num_views = stages.num_views(config.run.train_mode)
  augment_config = train_augment_config(config)

  def augmentation(crops, replica_id=0, step=0):
    return augment.distort_batch_views(
        crops, config.data.image_size, augment_config, num_views,
        seed=augment.device_seed(config.run.seed, replica_id, step))

  return augmentation


def training_input_fn(config: ExperimentConfig, *, start_step: int,
                      num_classes: int):
  """The stage's training `input_fn(input_context)`.

  Args:
    config: the stage's config.
    start_step: the optimizer step training starts (or resumes) from: the
      input continues the data stream there (order and crop draws of an
      uninterrupted run), rather than replaying its first batches.
    num_classes: classes of the one-hot labels.

  Returns:
    A function from a `tf.distribute.InputContext` to the dataset of
    (views, one-hot labels) batches of one replica.
  """
  del num_classes  # The one-hot width comes from the source.
  num_views = stages.num_views(config.run.train_mode)
  return data_lib.build_input_fn(
      config.data, train_augment_config(config), training=True,
      num_views=num_views, global_batch_size=config.run.train_batch_size,
      seed=config.run.seed,
      supervised=stages.labelled_only(config.run.train_mode),
      start_step=start_step)


def _train(model, manager, config, strategy, writer, log, *, total_steps,
           steps_per_epoch, run_dir, num_classes, probe=None):
  run = config.run
  start_step = _step(model)
  if start_step >= total_steps:
    log(f"[{run.train_mode}] already at step {start_step} of "
        f"{total_steps}: nothing to train.")
    return
  augment_config = train_augment_config(config)
  input_fn = training_input_fn(config, start_step=start_step,
                               num_classes=num_classes)
  if (run.jit_compile and
      train_loop.xla_scope(strategy) == train_loop.XLA_AUGMENTATION):
    compiled = ("only the on-device augmentation" if augment_config.on_device
                else "nothing (no --augment_on_device)")
    log(f"NOTE: jit_compile under {type(strategy).__name__} on CPU devices "
        f"compiles {compiled}: XLA on CPU cannot hold the cross-replica sums "
        "and gathers. The rest of the step runs uncompiled.")
  if run.grad_cache_chunks > 1:
    replicas = strategy.num_replicas_in_sync
    per_replica = run.train_batch_size // replicas
    where = (f"gathered over the {replicas} replicas' chunks"
             if config.model.global_bn and replicas > 1 else
             "per replica")
    log(f"NOTE: grad_cache_chunks={run.grad_cache_chunks}: BatchNorm "
        f"normalises each chunk of {2 * per_replica // run.grad_cache_chunks}"
        f" views (never both views of an image) on its own, {where}, not "
        "the whole batch; "
        "the loss and its negatives still span the global batch.")
  contexts, pipelines = [], []

  def recorded_input_fn(input_context):
    contexts.append(input_context)
    pipelines.append(input_fn(input_context))
    return pipelines[-1]

  dataset = strategy.distribute_datasets_from_function(
      recorded_input_fn, options=TRAIN_INPUT_OPTIONS)
  if run_dir.is_chief and pipelines:
    # From the training pipeline itself, in an iterator of its own: its
    # functions are traced and its XLA programs compiled once for both (a
    # second pipeline cost ~3 s per stage at 32 px, and a compile of the
    # augmentation more at 224 px). The draws are stateless, so the
    # training batches are the same as without it.
    _write_example_views(pipelines[0], writer, start_step,
                         model.train_augmentation)
  if contexts and contexts[0].num_input_pipelines > 1:
    log(f"[{run.train_mode}] this process reads input shard(s) "
        f"{[c.input_pipeline_id for c in contexts]} of "
        f"{contexts[0].num_input_pipelines}.")
  checkpoint_every = run.checkpoint_steps or (run.checkpoint_epochs *
                                              steps_per_epoch)
  stop_request = preemption.StopOnSignal(strategy)
  monitor = callbacks_lib.TrainingMonitor(
      stage=run.train_mode, total_steps=total_steps,
      global_batch_size=run.train_batch_size, checkpoint_manager=manager,
      checkpoint_every=max(checkpoint_every, 1), summary_writer=writer,
      log=log, stop_request=stop_request)
  knn_monitor = knn.build_monitor(
      config, strategy, steps_per_epoch=steps_per_epoch,
      summary_writer=writer, log=log)
  extra_callbacks = [knn_monitor] if knn_monitor else []
  if probe is not None and run.knn_eval_every_epochs:
    # At the kNN monitor's steps (it needs labels; these do not).
    extra_callbacks.append(health_monitor.HealthMonitor(
        probe, every_steps=max(1, run.knn_eval_every_epochs *
                               steps_per_epoch),
        summary_writer=writer, log=log, stage=run.train_mode))
  log(f"[{run.train_mode}] training steps {start_step}..{total_steps} "
      f"({total_steps / steps_per_epoch:.1f} epochs of {steps_per_epoch} "
      f"steps, batch {run.train_batch_size}, "
      f"{strategy.num_replicas_in_sync} replica(s)).")
  try:
    # SIGTERM and SIGINT are caught only while training: elsewhere there is
    # nothing newer than the last checkpoint to save.
    with stop_request:
      model.fit(dataset, epochs=1, steps_per_epoch=total_steps - start_step,
                shuffle=False,
                callbacks=[monitor] + extra_callbacks,
                verbose=0)
  except preemption.StoppedBySignal as stop:
    raise stop.with_checkpoint(os.path.join(
        run.model_dir, f"{checkpoints.CHECKPOINT_NAME}-{stop.step}")) from None
  except faults.NonFiniteLossError as error:
    raise error.with_checkpoint(
        tf.train.latest_checkpoint(run.model_dir)) from None
  except (tf.errors.UnavailableError, tf.errors.AbortedError) as error:
    if not run_dir.task_name:
      raise
    # A peer died (preemption, crash): collectives abort on every survivor.
    raise faults.WorkerLostError(
        getattr(error, "message", str(error)),
        tf.train.latest_checkpoint(run.model_dir)) from None


def _write_example_views(pipeline, writer, step, augmentation=None):
  images, _ = next(iter(pipeline))
  if augmentation is not None:
    images = augmentation(images)
  if images.dtype == tf.float32:
    callbacks_lib.write_view_pairs(writer, images.numpy(), step)


def write_results(results, write_dir):
  """Writes `result.json` and `result_<step>.json` in `write_dir`.

  Args:
    results: the stage's metrics, with "global_step".
    write_dir: this process's `RunDirectory.write_dir`.
  """
  for name in (RESULT_FILE, f"result_{results['global_step']}.json"):
    files.atomic_write_text(os.path.join(write_dir, name),
                            json.dumps(results, indent=2, sort_keys=True))


def evaluate(model, config, strategy, writer, log, *, num_eval_examples,
             write_dir=None, extra_results=None):
  """Evaluates top-1/top-5 on the eval split and writes the results.

  Writes `result.json` and `result_<step>.json` in `write_dir` and the
  `eval/` TensorBoard scalars.

  Args:
    model: a `SimCLRModel` with a supervised head.
    config: the stage's config.
    strategy: the `tf.distribute.Strategy`.
    writer: a `tf.summary` writer.
    log: where to report.
    num_eval_examples: examples in the eval split.
    write_dir: where the result files go (this process's
      `RunDirectory.write_dir`); None is `model_dir`.
    extra_results: more metrics for the result files (the health
      signals), or None.

  Returns:
    The metrics, with "global_step", "num_eval_examples" and
    `extra_results`.
  """
  run = config.run
  input_fn = data_lib.build_input_fn(
      config.data, config.augment, training=False, num_views=1,
      global_batch_size=run.eval_batch_size, seed=run.seed)
  dataset = strategy.distribute_datasets_from_function(input_fn)
  metrics = model.evaluate(dataset, steps=run.eval_steps or None,
                           return_dict=True, verbose=0)
  step = _step(model)
  evaluated = (min(num_eval_examples, run.eval_steps * run.eval_batch_size)
               if run.eval_steps else num_eval_examples)
  results = {name: float(value) for name, value in metrics.items()}
  callbacks_lib.write_eval_summaries(writer, results, step)
  results.update(extra_results or {})
  results.update(global_step=step, num_eval_examples=evaluated)
  write_results(results, write_dir or run.model_dir)
  teacher = (f"  teacher top-1 {100 * results[simclr.TEACHER_TOP_1]:.2f}%"
             if simclr.TEACHER_TOP_1 in results else "")
  log(f"[{run.train_mode}] eval at step {step} on {evaluated} examples: "
      f"top-1 {100 * results[simclr.EVAL_TOP_1]:.2f}%  "
      f"top-5 {100 * results[simclr.EVAL_TOP_5]:.2f}%{teacher}")
  return results
