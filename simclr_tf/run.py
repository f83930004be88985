"""The SimCLR program: `python -m simclr_tf.run [--preset=NAME] [--flags]`
(installed as `simclr-tf`).

Every flag is derived from a setting declared once in `simclr_tf.config`, so
flags and library share one set of defaults: the authors' (the paper's
ImageNet recipe). `--preset` (or `--flagfile`) puts a shipped preset from
`simclr_tf/presets/` underneath the command line. With no flags, or only
run-location flags (`--model_dir`, `--data_dir`, the hardware), the offline
demo preset runs: pretraining on the built-in `synthetic_shapes` dataset, then
a linear evaluation of the frozen encoder.

Flags are read here and in `tools/` and nowhere else: they become one
validated `ExperimentConfig`, written to `model_dir/config.json`, and the
library takes it from there. Bad input ends the program with one line on
stderr and exit code 2.
"""

import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from simclr_tf import config as config_lib  # noqa: E402
from simclr_tf.evaluation import health  # noqa: E402
from simclr_tf.tools import cli  # noqa: E402
from simclr_tf.tools import program_flags  # noqa: E402
from simclr_tf.tools import setting_flags  # noqa: E402

USAGE_ERROR = cli.USAGE_ERROR
TRAINING_FAILED = cli.TRAINING_FAILED
STOPPED_BY_SIGNAL = cli.STOPPED_BY_SIGNAL

FLAGS = flags.FLAGS
# The program's flags and presets (also read by tools), under their names
# here for `simclr_tf.run`'s users.
PRESETS_DIR = program_flags.PRESETS_DIR
DEMO_PRESET = program_flags.DEMO_PRESET
RUN_LOCATION_FLAGS = program_flags.RUN_LOCATION_FLAGS
SETTING_FLAGS = program_flags.SETTING_FLAGS
config_from_flags = program_flags.config_from_flags
preset_path = program_flags.preset_path
argv_with_preset = program_flags.argv_with_preset
# Defined in setting_flags and program_flags, listed by --help as this
# program's own.
flags.adopt_module_key_flags(setting_flags)
flags.adopt_module_key_flags(program_flags)

def _say(line):
  print(line, flush=True)


_fail = cli.fail


def _probe_line(name, result):
  return (f"{name:<12} top-1 {100 * result['top_1']:6.2f}%  top-5 "
          f"{100 * result['top_5']:6.2f}%  (C {result['C']:.3g})")


def format_summary(config, results, saved_models=True):
  """The closing summary: each stage's result and where its files are.

  Args:
    config: the run's config.
    results: its `StageResult`s.
    saved_models: list the SavedModel exports (the TensorFlow backend's).
  """
  lines = ["", "==== summary ===="]
  for result in results:
    line = f"{result.stage:<12} step {result.global_step:<7} " \
           f"{result.model_dir}"
    if result.eval_results:
      line += (f"\n{'':12} top-1 "
               f"{100 * result.eval_results['label_top_1_accuracy']:.2f}%  "
               f"top-5 "
               f"{100 * result.eval_results['label_top_5_accuracy']:.2f}% "
               f"on {result.eval_results['num_eval_examples']} "
               f"{config.data.eval_split} examples")
      if result.stage == "pretrain":
        line += " (linear head trained while pretraining)"
      elif result.stage == "linear_eval":
        line += (" (linear eval of a RANDOMLY INITIALISED encoder)"
                 if result.random_init else
                 " (linear eval of the frozen encoder)")
      elif result.stage == "distill":
        teacher = result.eval_results.get("teacher_top_1_accuracy")
        line += (" (the distilled student"
                 + (f"; its teacher {100 * teacher:.2f}%)"
                    if teacher is not None else ")"))
      elif result.stage == "finetune" and result.random_init:
        line += " (supervised from scratch on the same labels)"
    lines.append(line)
    if getattr(result, "health", None):
      lines.append(f"{'':12} health (eval split, docs/evaluation.md): "
                   f"{health.describe(result.health)}")
    if getattr(result, "probe", None):
      lines.append(f"{'':12} linear probe (L-BFGS logistic regression on "
                   f"frozen features, {config.data.eval_split} split):")
      for name, probed in result.probe.items():
        lines.append(f"{'':14}{_probe_line(name, probed)}")
  lines.append(f"TensorBoard:  tensorboard --logdir {config.run.model_dir}")
  lines.append(f"Checkpoints and results: {config.run.model_dir}")
  if not config.run.keep_hub_module_max:
    lines.append("SavedModel exports: none (keep_hub_module_max=0).")
    return "\n".join(lines)
  if not saved_models:
    lines.append("SavedModel export is a TensorFlow-backend feature; see "
                 "docs/jax.md.")
    return "\n".join(lines)
  from simclr_tf.storage import export_layout  # pylint: disable=g-import-not-at-top
  lines.append("SavedModel exports: " + ", ".join(
      export_layout.step_export_dir(result.model_dir, result.global_step)
      for result in results) + " (docs/export.md)")
  return "\n".join(lines)


def main(argv):
  status = cli.reject_positional(argv)
  if status is not None:
    return status
  try:
    config = config_from_flags().validate()
  except config_lib.ConfigError as error:
    return _fail(str(error))
  if config.run.train_mode == "linear_eval":
    linear = config.linear_eval
    _say(f"linear_eval uses the --linear_eval_* settings: "
         f"{linear.optimizer}, learning rate {linear.learning_rate} "
         f"({linear.learning_rate_scaling} scaling), batch "
         f"{linear.train_batch_size}, "
         f"{linear.train_steps or f'{linear.train_epochs} epochs'}.")
  backend = config.run.backend or os.environ.get("KERAS_BACKEND",
                                                  "tensorflow")
  if backend not in config_lib.BACKENDS:
    return _fail(f"KERAS_BACKEND must be one of "
                 f"{', '.join(config_lib.BACKENDS)} (or pass --backend). "
                 f"Received: KERAS_BACKEND={backend!r}")
  # Keras reads the variable once, when it is first imported: here.
  os.environ["KERAS_BACKEND"] = backend
  if backend != "tensorflow":
    return _run_keras_trainer(config)
  # Imported late: TensorFlow starts here, after flag errors are reported.
  import tensorflow_datasets as tfds
  from simclr_tf.checkpoints import ours as checkpoints
  from simclr_tf import data as data_lib
  from simclr_tf.training import distribute
  from simclr_tf.training import faults
  from simclr_tf.storage import run_dir
  from simclr_tf.training import tf_trainer as training
  from simclr_tf.storage import write_errors
  tfds.disable_progress_bar()
  cli.quiet_library_logs()
  from simclr_tf import tools  # pylint: disable=g-import-not-at-top
  if tools.XLA_CACHE_DIR:
    _say(f"XLA compiles the batched augmentation once per shape on this "
         f"machine and keeps it in {tools.XLA_CACHE_DIR} "
         f"({tools.xla_cache.ENV_VAR}; TensorFlow logs a false SIGILL "
         f"warning for each program it loads from there).")
  # Keras warns when an evaluation dataset ends, which is how ours end.
  warnings.filterwarnings("ignore", message="Your input ran out of data")

  def train():
    # The authors' checkpoints carry their architecture: flags given on
    # purpose must agree with it, the others take it.
    from simclr_tf.checkpoints import authors as authors_checkpoint
    adopted = authors_checkpoint.adopt_architecture(config, given=[
        name for name in authors_checkpoint.ARCHITECTURE_SETTINGS +
        ("ft_proj_selector",) if FLAGS[name].present])
    return adopted, training.run_experiment(adopted, log=_say)

  return _train_and_report(
      train,
      user_errors=(config_lib.ConfigError, data_lib.DataError,
                   checkpoints.CheckpointError, distribute.StrategyError,
                   run_dir.RunDirError),
      training_errors=(faults.NonFiniteLossError, faults.WorkerLostError,
                       write_errors.WriteFailedError))


def _train_and_report(train, user_errors, training_errors, **summary):
  """Runs `train() -> (config, results)` and turns its end into a status.

  Bad input is one line and exit 2; a fault in training one line and exit
  1; a stop on a signal its line and exit 75; else the summary and 0.
  """
  from simclr_tf.training import preemption
  try:
    config, results = train()
  except user_errors as error:
    return _fail(str(error))
  except training_errors as error:
    return _fail(str(error), TRAINING_FAILED)
  except preemption.StoppedBySignal as stop:
    print(stop, file=sys.stderr, flush=True)
    return STOPPED_BY_SIGNAL
  except KeyboardInterrupt:
    # Ctrl-C outside the training steps (start-up, evaluation, export): no
    # step was taken since the last checkpoint, so none is lost.
    print("stopped by SIGINT outside training; the last checkpoint is kept; "
          "rerun the same command to resume", file=sys.stderr, flush=True)
    return STOPPED_BY_SIGNAL
  _say(format_summary(config, results, **summary))
  return 0


def _run_keras_trainer(config):
  """The run on a non-TensorFlow backend (`training.keras_trainer`)."""
  from simclr_tf.checkpoints import keras_weights as keras_checkpoints
  from simclr_tf.data.errors import DataError
  from simclr_tf.storage import run_dir
  from simclr_tf.storage import write_errors
  from simclr_tf.training import faults
  from simclr_tf.training import keras_trainer as keras_training
  return _train_and_report(
      lambda: (config, keras_training.run_experiment(config, log=_say)),
      user_errors=(config_lib.ConfigError, DataError,
                   keras_checkpoints.CheckpointError, run_dir.RunDirError),
      training_errors=(faults.NonFiniteLossError,
                       write_errors.WriteFailedError),
      saved_models=False)


def run():
  """Entry point (`python -m simclr_tf.run`, `simclr-tf`); exits with
  main's status."""
  try:
    argv = argv_with_preset(sys.argv)
  except config_lib.ConfigError as error:
    sys.exit(_fail(str(error)))
  app.run(main, argv=argv, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
