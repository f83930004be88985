"""The SimCLR program: `python -m simclr_tf.run [--flagfile=...] [--flags]`.

With no arguments at all it runs the offline demo, `flags/demo.cfg`:
pretraining on the built-in `synthetic_shapes` dataset, then a linear
evaluation of the frozen encoder. Otherwise flag defaults are the paper's
ImageNet settings; presets live in `flags/*.cfg`.

Flags are read here and nowhere else: they become one validated
`ExperimentConfig`, written to `model_dir/config.json`, and the library takes
it from there. Bad input ends the program with one line on stderr and exit
code 2.
"""

import logging as logging_std
import os
import pathlib
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from simclr_tf import config as config_lib  # noqa: E402

DEMO_FLAGFILE = pathlib.Path(__file__).resolve().parent.parent / "flags" / \
    "demo.cfg"
USAGE_ERROR = 2
# Training ran but could not finish (a non-finite loss, a lost worker).
TRAINING_FAILED = 1

FLAGS = flags.FLAGS

# --- learning and optimizer
flags.DEFINE_float("learning_rate", 0.3, "Base learning rate, before batch "
                   "scaling (lr * batch / 256, or lr * sqrt(batch)).")
flags.DEFINE_enum("learning_rate_scaling", "linear", config_lib.LR_SCALINGS,
                  "How the learning rate scales with the batch size.")
flags.DEFINE_float("warmup_epochs", 10, "Epochs of linear warm-up.")
flags.DEFINE_float("weight_decay", 1e-6, "Weight decay (BatchNorm "
                   "parameters and biases excluded).")
flags.DEFINE_float("batch_norm_decay", 0.9, "BatchNorm moving-average decay.")
flags.DEFINE_enum("optimizer", "lars", config_lib.OPTIMIZERS, "Optimizer.")
flags.DEFINE_float("momentum", 0.9, "Momentum of the optimizer.")
# --- steps and data
flags.DEFINE_integer("train_batch_size", 512, "Global training batch.")
flags.DEFINE_integer("train_epochs", 100, "Training epochs (when "
                     "train_steps is 0).")
flags.DEFINE_integer("train_steps", 0, "Training steps; 0 derives them from "
                     "train_epochs.")
flags.DEFINE_integer("eval_steps", 0, "Evaluation batches; 0 evaluates the "
                     "whole eval split.")
flags.DEFINE_integer("eval_batch_size", 256, "Global evaluation batch.")
flags.DEFINE_integer("checkpoint_epochs", 1, "Save a checkpoint every this "
                     "many epochs (when checkpoint_steps is 0).")
flags.DEFINE_integer("checkpoint_steps", 0, "Save a checkpoint every this "
                     "many steps.")
flags.DEFINE_string("train_split", "train", "Split to train on.")
flags.DEFINE_string("eval_split", "test", "Split to evaluate on.")
flags.DEFINE_string("dataset", "imagenet2012", "A tfds dataset name, "
                    "synthetic_shapes (built in, offline) or image_folder.")
flags.DEFINE_string("data_dir", None, "tfds data directory; for "
                    "image_folder, the folder root "
                    "(root/<split>/<class>/<image>).")
flags.DEFINE_bool("cache_dataset", None, "Cache decoded images in memory "
                  "(default: on for datasets that fit comfortably).")
flags.DEFINE_bool("shuffle_files", True, "Shuffle the files of tfds "
                  "datasets.")
flags.DEFINE_integer("shuffle_buffer", None, "Training shuffle buffer, in "
                     "examples (default: 10x the per-replica batch, 50x at "
                     "32 px and below, as the authors).")
flags.DEFINE_integer("max_image_pixels", 89478485, "Skip (and count) image "
                     "files with more pixels than this, read from their "
                     "header (default: Pillow's decompression-bomb limit).")
flags.DEFINE_float("label_fraction", None, "Keep this fraction of each "
                   "class's training labels (semi-supervised fine-tuning).")
flags.DEFINE_integer("labels_per_class", None, "Keep this many training "
                     "labels per class instead.")
flags.DEFINE_integer("label_seed", 0, "Seed of the label subset.")
flags.DEFINE_integer("synthetic_train_examples", 10000, "Train examples of "
                     "the built-in synthetic_shapes dataset.")
flags.DEFINE_integer("synthetic_test_examples", 2000, "Test examples of "
                     "the built-in synthetic_shapes dataset.")
flags.DEFINE_integer("synthetic_seed", 0, "Seed synthetic_shapes is "
                     "generated from.")
# --- modes and checkpoints
flags.DEFINE_enum("mode", "train_then_eval", config_lib.RUN_MODES,
                  "Train, evaluate, or both.")
flags.DEFINE_enum("train_mode", "pretrain", config_lib.TRAIN_MODES,
                  "pretrain (contrastive), finetune, or linear_eval (frozen "
                  "encoder, linear head).")
flags.DEFINE_bool("lineareval_while_pretraining", True, "Train a linear head "
                  "on stop_gradient features while pretraining.")
flags.DEFINE_bool("linear_eval_after_pretraining", False, "After "
                  "pretraining, train and evaluate a linear head on the "
                  "frozen encoder (in model_dir/linear_eval).")
flags.DEFINE_string("checkpoint", None, "Checkpoint to start fine-tuning or "
                    "linear eval from (a pretraining model_dir, checkpoint "
                    "prefix or SavedModel export), or to evaluate.")
flags.DEFINE_bool("from_scratch", False, "Fine-tune from random "
                  "initialisation: the supervised baseline.")
flags.DEFINE_bool("zero_init_logits_layer", False, "Start the supervised "
                  "head at zero.")
flags.DEFINE_bool("supervised_head_feature_norm", False, "Normalise "
                  "features with a parameter-free BatchNorm before the "
                  "supervised head (MAE's linear probe; off matches the "
                  "authors).")
flags.DEFINE_integer("fine_tune_after_block", -1, "Freeze the encoder up to "
                     "this block when fine-tuning: -1 none, 0 the stem, "
                     "4 all.")
flags.DEFINE_string("model_dir", "runs/simclr", "Where checkpoints, "
                    "TensorBoard logs and results go.")
flags.DEFINE_integer("keep_checkpoint_max", 5, "Checkpoints to keep.")
flags.DEFINE_integer("keep_hub_module_max", 1, "SavedModel exports to "
                     "keep in model_dir/saved_model/ (one is written at the "
                     "end of each training or evaluation).")
# --- loss and heads
flags.DEFINE_float("temperature", 0.1, "NT-Xent temperature.")
flags.DEFINE_bool("hidden_norm", True, "L2-normalise projections in the "
                  "loss.")
flags.DEFINE_enum("proj_head_mode", "nonlinear", config_lib.PROJ_HEAD_MODES,
                  "Projection head.")
flags.DEFINE_integer("proj_out_dim", 128, "Projection output size.")
flags.DEFINE_integer("num_proj_layers", 3, "Layers of the nonlinear "
                     "projection head (2 for SimCLR v1, 3 for v2).")
flags.DEFINE_integer("ft_proj_selector", 0, "Projection-head layer that "
                     "fine-tuning starts from (0: the encoder output).")
# --- model
flags.DEFINE_bool("global_bn", True, "Synchronise BatchNorm statistics "
                  "across replicas.")
flags.DEFINE_float("width_multiplier", 1, "ResNet width multiplier.")
flags.DEFINE_integer("resnet_depth", 50, "ResNet depth: 18, 34, 50, 101, "
                     "152 or 200.")
flags.DEFINE_float("sk_ratio", 0.0, "Selective-kernel ratio (0.0625 in "
                   "SimCLRv2); 0 for none.")
flags.DEFINE_float("se_ratio", 0.0, "Squeeze-excite ratio; 0 for none.")
flags.DEFINE_enum("cifar_stem", "auto", ["auto", "true", "false"],
                  "ResNet stem: true is the CIFAR stem (3x3 stride-1 conv, no "
                  "max-pool), false the ImageNet one (7x7 stride-2 conv and "
                  "max-pool, 16x fewer activations); auto picks the CIFAR "
                  "stem for --image_size <= 32, as the authors do.")
# --- augmentation
flags.DEFINE_integer("image_size", 224, "Input image side.")
flags.DEFINE_float("color_jitter_strength", 1.0, "Colour jitter strength s.")
flags.DEFINE_bool("use_blur", True, "Gaussian blur while pretraining.")
flags.DEFINE_list("crop_area_range", ["0.08", "1.0"], "Random crop: "
                  "smallest and largest area as fractions of the image, "
                  "LOW,HIGH (the paper's 0.08,1.0).")
flags.DEFINE_enum("crop_sampler", "authors", ["authors", "area_uniform"],
                  "Random crop distribution: authors = "
                  "tf.image.sample_distorted_bounding_box as the authors' "
                  "code calls it; area_uniform = the paper's wording (area "
                  "uniform, log-uniform aspect ratio).")
flags.DEFINE_bool("augment_on_device", False, "Augment inside the train "
                  "step on the accelerator (batched ops) instead of in the "
                  "tf.data pipeline, which then only decodes, takes the "
                  "random crops from the full-resolution images and batches "
                  "them as uint8 views of --image_size.")
# --- linear evaluation (train_mode=linear_eval and after pretraining)
flags.DEFINE_enum("linear_eval_optimizer", "momentum", config_lib.OPTIMIZERS,
                  "Linear eval: optimizer.")
flags.DEFINE_float("linear_eval_learning_rate", 0.1, "Linear eval: base "
                   "learning rate.")
flags.DEFINE_enum("linear_eval_learning_rate_scaling", "sqrt",
                  config_lib.LR_SCALINGS, "Linear eval: batch scaling.")
flags.DEFINE_float("linear_eval_momentum", 0.9, "Linear eval: momentum.")
flags.DEFINE_float("linear_eval_weight_decay", 0.0, "Linear eval: weight "
                   "decay.")
flags.DEFINE_float("linear_eval_warmup_epochs", 0.0, "Linear eval: warm-up "
                   "epochs.")
flags.DEFINE_integer("linear_eval_train_batch_size", 512, "Linear eval: "
                     "global batch.")
flags.DEFINE_integer("linear_eval_train_epochs", 100, "Linear eval: epochs "
                     "(when linear_eval_train_steps is 0).")
flags.DEFINE_integer("linear_eval_train_steps", 0, "Linear eval: steps.")
flags.DEFINE_string("linear_eval_train_split", None, "Linear eval: labeled "
                    "split to train the head on (default: train_split).")
# --- hardware and running
flags.DEFINE_enum("strategy", "auto", config_lib.STRATEGIES,
                  "tf.distribute strategy.")
flags.DEFINE_string("tpu", None, "TPU name or address (--tpu=local on a "
                    "TPU VM).")
flags.DEFINE_integer("cpu_replicas", 0, "Split the host CPU into this many "
                     "logical devices to try multi-replica runs.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("steps_per_loop", 1, "Optimizer steps per host call; "
                     "progress, summaries and checkpoints happen between "
                     "loops.")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_enum("precision", "float32", config_lib.PRECISIONS,
                  "Keras dtype policy: float32, mixed_bfloat16, or "
                  "mixed_float16 (with dynamic loss scaling). Losses, "
                  "BatchNorm statistics and LARS stay float32.")


_CIFAR_STEM = {"auto": None, "true": True, "false": False}


def _float_pair(name, values):
  try:
    low, high = (float(value) for value in values)
  except ValueError:
    raise config_lib.ConfigError(
        f"--{name} takes two numbers, LOW,HIGH. Received: "
        f"{name}={','.join(values)}") from None
  return (low, high)


def config_from_flags(values=FLAGS) -> config_lib.ExperimentConfig:
  """Turns parsed flags into one `ExperimentConfig` (not yet validated).

  Args:
    values: parsed absl flag values.

  Returns:
    The config.
  """
  v = values
  return config_lib.ExperimentConfig(
      data=config_lib.DataConfig(
          dataset=v.dataset, data_dir=v.data_dir, train_split=v.train_split,
          eval_split=v.eval_split, image_size=v.image_size,
          cache_dataset=v.cache_dataset, shuffle_files=v.shuffle_files,
          shuffle_buffer=v.shuffle_buffer, label_fraction=v.label_fraction,
          labels_per_class=v.labels_per_class, label_seed=v.label_seed,
          synthetic_train_examples=v.synthetic_train_examples,
          synthetic_test_examples=v.synthetic_test_examples,
          synthetic_seed=v.synthetic_seed,
          max_image_pixels=v.max_image_pixels),
      augment=config_lib.AugmentConfig(
          crop_area_range=_float_pair("crop_area_range", v.crop_area_range),
          color_jitter_strength=v.color_jitter_strength,
          use_blur=v.use_blur, on_device=v.augment_on_device,
          crop_sampler=v.crop_sampler),
      model=config_lib.ModelConfig(
          resnet_depth=v.resnet_depth, width_multiplier=v.width_multiplier,
          sk_ratio=v.sk_ratio, se_ratio=v.se_ratio,
          cifar_stem=_CIFAR_STEM[v.cifar_stem], global_bn=v.global_bn,
          batch_norm_decay=v.batch_norm_decay,
          proj_head_mode=v.proj_head_mode, proj_out_dim=v.proj_out_dim,
          num_proj_layers=v.num_proj_layers,
          ft_proj_selector=v.ft_proj_selector,
          zero_init_logits_layer=v.zero_init_logits_layer,
          supervised_head_feature_norm=v.supervised_head_feature_norm,
          fine_tune_after_block=v.fine_tune_after_block),
      loss=config_lib.LossConfig(temperature=v.temperature,
                                 hidden_norm=v.hidden_norm),
      optimizer=config_lib.OptimizerConfig(
          optimizer=v.optimizer, learning_rate=v.learning_rate,
          learning_rate_scaling=v.learning_rate_scaling,
          warmup_epochs=v.warmup_epochs, weight_decay=v.weight_decay,
          momentum=v.momentum),
      linear_eval=config_lib.LinearEvalConfig(
          after_pretraining=v.linear_eval_after_pretraining,
          optimizer=v.linear_eval_optimizer,
          learning_rate=v.linear_eval_learning_rate,
          learning_rate_scaling=v.linear_eval_learning_rate_scaling,
          momentum=v.linear_eval_momentum,
          weight_decay=v.linear_eval_weight_decay,
          warmup_epochs=v.linear_eval_warmup_epochs,
          train_batch_size=v.linear_eval_train_batch_size,
          train_epochs=v.linear_eval_train_epochs,
          train_steps=v.linear_eval_train_steps,
          train_split=v.linear_eval_train_split),
      run=config_lib.RunConfig(
          mode=v.mode, train_mode=v.train_mode, model_dir=v.model_dir,
          checkpoint=v.checkpoint, from_scratch=v.from_scratch,
          lineareval_while_pretraining=v.lineareval_while_pretraining,
          train_batch_size=v.train_batch_size, train_epochs=v.train_epochs,
          train_steps=v.train_steps, eval_batch_size=v.eval_batch_size,
          eval_steps=v.eval_steps, checkpoint_epochs=v.checkpoint_epochs,
          checkpoint_steps=v.checkpoint_steps,
          keep_checkpoint_max=v.keep_checkpoint_max,
          keep_hub_module_max=v.keep_hub_module_max,
          steps_per_loop=v.steps_per_loop, seed=v.seed, strategy=v.strategy,
          tpu=v.tpu, cpu_replicas=v.cpu_replicas,
          precision=v.precision, jit_compile=v.jit_compile))


class _DropRoutineTfdsNotices(logging_std.Filter):
  """tfds warns that every built-in synthetic_shapes size is a "custom data
  configuration"; that is expected, not a problem for the user."""

  def filter(self, record):
    return not record.getMessage().startswith(
        "Using custom data configuration")


def _quiet_library_logs():
  # Library INFO lines (tfds reading files, checkpoint sharding) drown the
  # progress lines; warnings, such as skipped corrupt images, stay.
  absl_logging.set_verbosity(absl_logging.WARNING)
  absl_logging.get_absl_handler().addFilter(_DropRoutineTfdsNotices())


def _say(line):
  print(line, flush=True)


def _fail(message, status=USAGE_ERROR):
  print(f"error: {message}", file=sys.stderr, flush=True)
  return status


def _activate_test_faults():
  """Reads the TEST-ONLY fault injection variable (see fault_injection)."""
  from simclr_tf import fault_injection
  spec = os.environ.get(fault_injection.ENV_VAR)
  if spec:
    print(f"WARNING: test fault injection is on: {fault_injection.ENV_VAR}="
          f"{spec}", file=sys.stderr, flush=True)
    fault_injection.activate(fault_injection.parse(spec))


def format_summary(config, results):
  """The closing summary: each stage's result and where its files are."""
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
  lines.append(f"TensorBoard:  tensorboard --logdir {config.run.model_dir}")
  lines.append(f"Checkpoints and results: {config.run.model_dir}")
  from simclr_tf import export  # pylint: disable=g-import-not-at-top
  lines.append("SavedModel exports: " + ", ".join(
      os.path.join(result.model_dir, export.EXPORTS_DIR,
                   str(result.global_step))
      for result in results) + " (README: Use your pretrained encoder)")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    return _fail(f"unexpected arguments {argv[1:]}: flags look like "
                 "--name=value.")
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
  # Imported late: TensorFlow starts here, after flag errors are reported.
  import tensorflow_datasets as tfds
  from simclr_tf import checkpoints
  from simclr_tf import data as data_lib
  from simclr_tf import distribute
  from simclr_tf import faults
  from simclr_tf import run_dir
  from simclr_tf import training
  _activate_test_faults()
  tfds.disable_progress_bar()
  _quiet_library_logs()
  # Keras warns when an evaluation dataset ends, which is how ours end.
  warnings.filterwarnings("ignore", message="Your input ran out of data")
  try:
    results = training.run_experiment(config, log=_say)
  except (config_lib.ConfigError, data_lib.DataError,
          checkpoints.CheckpointError, distribute.StrategyError,
          run_dir.RunDirError) as error:
    return _fail(str(error))
  except (faults.NonFiniteLossError, faults.WorkerLostError) as error:
    return _fail(str(error), TRAINING_FAILED)
  _say(format_summary(config, results))
  return 0


def _argv_with_default_flagfile(argv):
  if len(argv) == 1:
    print(f"No flags given: running the offline demo ({DEMO_FLAGFILE}).",
          flush=True)
    return argv + [f"--flagfile={DEMO_FLAGFILE}"]
  return argv


def _parse_flags(argv):
  # absl's own parser prints two lines and exits 1; bad flags are usage
  # errors: one line, exit 2.
  try:
    return FLAGS(argv)
  except flags.Error as error:
    sys.exit(_fail(f"{error} (see --helpfull)"))


def run():
  """Entry point; exits with main's status."""
  app.run(main, argv=_argv_with_default_flagfile(sys.argv),
          flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
