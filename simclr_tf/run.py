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

import dataclasses
import os
import pathlib
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from simclr_tf import config as config_lib  # noqa: E402
from simclr_tf import settings  # noqa: E402
from simclr_tf.tools import _cli  # noqa: E402
from simclr_tf.tools import _setting_flags  # noqa: E402

USAGE_ERROR = _cli.USAGE_ERROR
# Training ran but could not finish (a non-finite loss, a lost worker, a
# checkpoint or export that could not be written, e.g. a full disk).
TRAINING_FAILED = 1
# SIGTERM or SIGINT stopped training after a checkpoint of the step it was
# at: rerun the same command to resume. 75 is EX_TEMPFAIL of sysexits.h
# ("temporary failure; the user is invited to retry"), so schedulers and
# scripts can tell it from a failure.
STOPPED_BY_SIGNAL = 75

FLAGS = flags.FLAGS

PRESETS_DIR = pathlib.Path(__file__).resolve().parent / "presets"
DEMO_PRESET = "demo"
# Settings that say where and on what a run happens, not what it trains:
# with only these (or nothing) on the command line the demo preset runs.
RUN_LOCATION_FLAGS = tuple(
    settings.flag_name(section.type, field)
    for section in dataclasses.fields(config_lib.ExperimentConfig)
    for field in settings.fields(section.type)
    if settings.has_role(field, settings.RUN_LOCATION))

flags.DEFINE_string(
    "preset", None, "A shipped preset (simclr_tf/presets/NAME.cfg, also "
    "reachable as flags/NAME.cfg in a checkout), applied before the other "
    "flags, which override it: demo, cifar10_pretrain, imagenet_pretrain, "
    "... 'none' runs the built-in defaults (the authors' ImageNet recipe). "
    "Unset: the demo when no flag other than "
    f"{', '.join('--' + name for name in RUN_LOCATION_FLAGS)} is given and "
    "there is no --flagfile, else none.")


def define_setting_flags(flag_values=FLAGS):
  """Defines one flag per declared setting of `ExperimentConfig`.

  Args:
    flag_values: the `FlagValues` to define them in.

  Returns:
    {flag name: (section name, field name)}.
  """
  return _setting_flags.define_setting_flags(
      config_lib.ExperimentConfig.sections(), flag_values)


SETTING_FLAGS = define_setting_flags()
# Defined in _setting_flags, listed by --help as this program's own.
flags.adopt_module_key_flags(_setting_flags)


def config_from_flags(values=FLAGS) -> config_lib.ExperimentConfig:
  """Turns parsed flags into one `ExperimentConfig` (not yet validated).

  Args:
    values: parsed absl flag values.

  Returns:
    The config.
  """
  sections = _setting_flags.section_values(SETTING_FLAGS, values)
  return config_lib.ExperimentConfig(**{
      section_name: section_type(**sections.get(section_name, {}))
      for section_name, section_type in
      config_lib.ExperimentConfig.sections()})


def _say(line):
  print(line, flush=True)


_fail = _cli.fail


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
    lines.append(line)
    if getattr(result, "probe", None):
      lines.append(f"{'':12} linear probe (L-BFGS logistic regression on "
                   f"frozen features, {config.data.eval_split} split):")
      for name, probed in result.probe.items():
        lines.append(f"{'':14}{_probe_line(name, probed)}")
  lines.append(f"TensorBoard:  tensorboard --logdir {config.run.model_dir}")
  lines.append(f"Checkpoints and results: {config.run.model_dir}")
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
  status = _cli.reject_positional(argv)
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
  _cli.quiet_library_logs()
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


def preset_path(name: str) -> pathlib.Path:
  """The flagfile of a shipped preset.

  Raises:
    config_lib.ConfigError: for a name that is not shipped.
  """
  path = PRESETS_DIR / f"{name}.cfg"
  if not path.is_file():
    known = sorted(p.stem for p in PRESETS_DIR.glob("*.cfg"))
    raise config_lib.ConfigError(
        f"--preset must be none or one of {', '.join(known)}. "
        f"Received: preset={name!r}")
  return path


def _named_flags(argv):
  """The flag names on a command line ("--nofoo" and "--foo=1" name foo)."""
  names = []
  for argument in argv[1:]:
    if not argument.startswith("-") or argument in ("-", "--"):
      continue
    name = argument.lstrip("-").split("=", 1)[0]
    if name.startswith("no") and name[2:] in FLAGS and \
        isinstance(FLAGS[name[2:]], flags.BooleanFlag):
      name = name[2:]
    names.append(name)
  return names


def _preset_of(argv, demo_by_default):
  """The preset a command line asks for, or None; see the --preset help."""
  for argument in argv[1:]:
    if argument.startswith("--preset="):
      value = argument.split("=", 1)[1]
      return None if value == "none" else value
  if not demo_by_default:
    return None
  named = _named_flags(argv)
  if "flagfile" in named:
    return None
  if all(name in RUN_LOCATION_FLAGS or name not in SETTING_FLAGS
         for name in named):
    return DEMO_PRESET
  return None


def argv_with_preset(argv, demo_by_default: bool = True):
  """Puts the preset's flagfile first, so the command line overrides it.

  Args:
    argv: the command line, program name first.
    demo_by_default: without --preset, a command line of run-location flags
      only runs the demo preset (the program); False: only an explicit
      --preset applies (tools with their own defaults).

  Returns:
    The command line to parse.

  Raises:
    config_lib.ConfigError: for an unknown preset.
  """
  preset = _preset_of(argv, demo_by_default)
  if preset is None:
    return list(argv)
  path = preset_path(preset)
  if preset == DEMO_PRESET and "--preset=demo" not in argv:
    print(f"Running the offline demo preset ({path}); any flag other than "
          f"{', '.join('--' + n for n in RUN_LOCATION_FLAGS)} turns it off "
          "(or pass --preset=demo).", flush=True)
  return [argv[0], f"--flagfile={path}"] + list(argv[1:])


def run():
  """Entry point (`python -m simclr_tf.run`, `simclr-tf`); exits with
  main's status."""
  try:
    argv = argv_with_preset(sys.argv)
  except config_lib.ConfigError as error:
    sys.exit(_fail(str(error)))
  app.run(main, argv=argv, flags_parser=_cli.parse_flags)


if __name__ == "__main__":
  run()
