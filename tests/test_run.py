"""`python -m simclr_tf.run` as a user runs it: flags, errors, presets.

A run killed mid-way and resumed is in test_preemption.py, which stops,
kills and resumes one command-line run.
"""

import dataclasses
import functools
import os
import re

import pytest
from absl import flags

from simclr_tf import config as config_lib
from simclr_tf import optimizers
from simclr_tf import run as run_lib

import command_line

REPO = command_line.REPO


tiny_flags = functools.partial(command_line.tiny_flags, steps_per_loop=2)
run_cli = command_line.run_program


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.parametrize("extra, message", [
    (["--train_mode=pretrain", "--fine_tune_after_block=2"],
     "Freezing layers while pretraining is not supported"),
    (["--train_mode=finetune"], "needs --checkpoint"),
    (["--train_mode=finetune", "--checkpoint=x", "--from_scratch"],
     "contradict each other"),
    (["--train_mode=bogus"], "--train_mode=bogus"),
    (["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
    (["--flagfile=/does/not/exist.cfg"], "Unable to open flagfile"),
    (["--resnet_depth=19"], "resnet_depth=19"),
    (["--temperature=0"], "temperature=0.0"),
    (["--mode=train_then_eval", "--lineareval_while_pretraining=false"],
     "needs a supervised head"),
])
def test_invalid_flags_stop_with_one_line_and_exit_code_2(tmp_path, extra,
                                                          message):
  result = run_cli(tiny_flags(tmp_path, tmp_path / "run") + extra)
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines()
            if line.startswith("error:")]
  assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()  # stopped before any work


@pytest.mark.parametrize("extra, message", [
    (["--cpu_replicas=3"],
     "`train_batch_size` must split evenly over the 3 replicas"),
    (["--dataset=not_a_dataset"], "Unknown dataset 'not_a_dataset'"),
    (["--train_mode=finetune", "--checkpoint=/does/not/exist"],
     "--checkpoint /does/not/exist: no such file or directory"),
])
def test_bad_input_found_at_start_exits_2_without_traceback(
    data_dir, tmp_path, extra, message):
  result = run_cli(tiny_flags(data_dir, tmp_path / "run") + extra)
  assert result.returncode == 2, result.stderr[-2000:]
  assert message in result.stderr
  assert "Traceback" not in result.stderr


def test_no_settings_means_the_demo_preset():
  demo = f"--flagfile={run_lib.preset_path('demo')}"
  assert run_lib.argv_with_preset(["run"]) == ["run", demo]
  # Run-location flags keep the demo: they say where, not what.
  assert run_lib.argv_with_preset(["run", "--model_dir=x", "--data_dir=d"]) \
      == ["run", demo, "--model_dir=x", "--data_dir=d"]
  # The backend is a run-location flag too: `simclr-tf --backend=jax` is
  # the demo on JAX.
  assert run_lib.argv_with_preset(["run", "--backend=jax"]) == [
      "run", demo, "--backend=jax"]
  # Any other setting, or a flagfile, means the built-in defaults.
  assert run_lib.argv_with_preset(["run", "--seed=1"]) == ["run", "--seed=1"]
  assert run_lib.argv_with_preset(["run", "--nouse_blur"]) == [
      "run", "--nouse_blur"]
  assert run_lib.argv_with_preset(["run", "--flagfile=f.cfg"]) == [
      "run", "--flagfile=f.cfg"]
  assert run_lib.argv_with_preset(["run", "--preset=none"]) == [
      "run", "--preset=none"]
  assert run_lib.argv_with_preset(["run", "--preset=cifar10_pretrain",
                                   "--seed=3"]) == [
      "run", f"--flagfile={run_lib.preset_path('cifar10_pretrain')}",
      "--preset=cifar10_pretrain", "--seed=3"]
  with pytest.raises(config_lib.ConfigError, match="preset='nope'"):
    run_lib.argv_with_preset(["run", "--preset=nope"])


def test_model_dir_alone_runs_the_demo_there():
  demo = command_line.config_of(run_lib.argv_with_preset(["run"])[1:])
  moved = command_line.config_of(
      run_lib.argv_with_preset(["run", "--model_dir=elsewhere"])[1:])
  assert demo.data.dataset == "synthetic_shapes"
  assert moved.replace(run=demo.run) == demo
  assert moved.run.model_dir == "elsewhere"


def test_flag_defaults_are_the_library_defaults():
  assert command_line.config_of([]) == config_lib.ExperimentConfig()


def test_every_setting_has_one_flag_with_its_help():
  """Each declared setting becomes exactly one flag carrying its help and
  default, and setting a flag changes exactly that field."""
  from simclr_tf import settings
  seen = set()
  for section_name, section_type in config_lib.ExperimentConfig.sections():
    for field in settings.fields(section_type):
      name = settings.flag_name(section_type, field)
      assert name not in seen
      seen.add(name)
      flag = run_lib.FLAGS[name]
      assert flag.help.endswith(settings.help_of(field))
      assert flag.default == field.default
  assert seen == set(run_lib.SETTING_FLAGS)
  config = command_line.config_of(["--linear_eval_train_split=train[:10%]",
                                   "--augment_on_device",
                                   "--crop_aspect_ratio_range=0.5,2"])
  default = config_lib.ExperimentConfig()
  assert config.linear_eval.train_split == "train[:10%]"
  assert config.augment.on_device is True
  assert config.augment.crop_aspect_ratio_range == (0.5, 2.0)
  assert config.replace(
      linear_eval=default.linear_eval,
      augment=default.augment) == default


def test_random_init_baseline_is_one_command_on_the_demo_preset():
  """The README's baseline command: the demo preset sets
  linear_eval_after_pretraining, which a linear_eval run ignores."""
  config = command_line.config_of(run_lib.argv_with_preset(
      ["run", "--preset=demo", "--train_mode=linear_eval",
       "--model_dir=runs/demo_random_init"])[1:])
  assert config.run.train_mode == "linear_eval"
  assert config.run.checkpoint is None
  assert config.data.dataset == "synthetic_shapes"


def test_every_preset_flagfile_parses_into_a_valid_config():
  flags_dir = str(run_lib.PRESETS_DIR)
  names = sorted(os.listdir(flags_dir))
  # The checkout's flags/ is the same folder, for --flagfile=flags/x.cfg.
  assert sorted(os.listdir(os.path.join(REPO, "flags"))) == names
  for name in names:
    args = [f"--flagfile={os.path.join(flags_dir, name)}"]
    if "finetune" in name or "linear_eval" in name:
      args.append("--checkpoint=runs/x")
    config = command_line.config_of(args)
    assert config.run.model_dir.startswith("runs/"), name
    with open(os.path.join(flags_dir, name)) as handle:
      header = handle.read().split("\n--", 1)[0]
    assert "Source:" in header and "python -m simclr_tf.run" in header, name


# What each preset's header cites, transcribed from the source by hand:
# README = google-research/simclr README.md (CIFAR-10 pretraining and
# linear-eval commands); DEFAULT = a flag those commands leave at its
# tf2/run.py default; B.5/B.6/Table = arXiv:2002.05709v3. "lr" is the peak
# rate after batch scaling, worked out by hand from the source's numbers.
_CIFAR_LINEAR_EVAL = {  # README "Finetuning the linear head" command.
    "optimizer": "momentum", "learning_rate": 0.1, "weight_decay": 0.0,
    "warmup_epochs": 0.0, "batch": 512, "epochs": 100,
    "lr": 0.1 * 512 / 256,  # DEFAULT learning_rate_scaling=linear
    "zero_init_logits_layer": True}
_PAPER_FINETUNE = {  # B.5.
    "optimizer": "momentum", "momentum": 0.9, "learning_rate": 0.05,
    "weight_decay": 0.0, "warmup_epochs": 0.0, "batch": 4096,
    "lr": 0.8, "image_size": 224, "resnet_depth": 50,
    "zero_init_logits_layer": True}  # README fine-tuning command.
PRESET_SOURCES = {
    "cifar10_pretrain.cfg": dict(
        # README CIFAR-10 pretraining command.
        dataset="cifar10", image_size=32, eval_split="test", resnet_depth=18,
        batch=512, epochs=1000, learning_rate=1.0, weight_decay=1e-4,
        temperature=0.5, use_blur=False, color_jitter_strength=0.5,
        # DEFAULT: lars, momentum 0.9, linear scaling, 10 warm-up epochs,
        # width 1, 3-layer head of 128, global BN.
        optimizer="lars", momentum=0.9, lr=1.0 * 512 / 256, warmup_epochs=10.0,
        width_multiplier=1.0, num_proj_layers=3, proj_out_dim=128,
        global_bn=True, linear_eval=_CIFAR_LINEAR_EVAL),
    "cifar10_linear_eval.cfg": dict(
        _CIFAR_LINEAR_EVAL, dataset="cifar10", image_size=32,
        eval_split="test", resnet_depth=18, num_proj_layers=3,
        ft_proj_selector=0, train_mode="linear_eval"),
    "cifar10_finetune.cfg": dict(
        _PAPER_FINETUNE, batch=512, lr=0.05 * 512 / 256, image_size=32,
        resnet_depth=18, train_mode="finetune", fine_tune_after_block=-1),
    "imagenet_pretrain.cfg": dict(
        # Sections 2.3 and 6 / appendix B; Table 6 for 1000 epochs.
        dataset="imagenet2012", image_size=224, resnet_depth=50,
        width_multiplier=1.0, batch=4096, epochs=1000, optimizer="lars",
        learning_rate=0.3, lr=4.8, weight_decay=1e-6, temperature=0.1,
        warmup_epochs=10.0, num_proj_layers=2, color_jitter_strength=1.0,
        use_blur=True, global_bn=True,
        linear_eval=dict(optimizer="momentum", learning_rate=0.1, lr=1.6,
                         weight_decay=0.0, warmup_epochs=0.0, batch=4096,
                         epochs=90)),  # B.6.
    "imagenet_finetune_1pct.cfg": dict(
        _PAPER_FINETUNE, dataset="imagenet2012_subset/1pct", epochs=60),
    "imagenet_finetune_10pct.cfg": dict(
        _PAPER_FINETUNE, dataset="imagenet2012_subset/10pct", epochs=30),
    "stl10_pretrain.cfg": dict(
        # The paper's ImageNet recipe at batch 512 with its head (an MLP
        # with one hidden layer, section 2.1); B.6 linear evaluation.
        optimizer="lars", learning_rate=0.3, lr=0.3 * 512 / 256,
        weight_decay=1e-6, temperature=0.1, use_blur=True,
        proj_head_mode="nonlinear", num_proj_layers=2,
        linear_eval=dict(optimizer="momentum", lr=0.1 * 512 / 256,
                         weight_decay=0.0, warmup_epochs=0.0)),
}


def _cited_values(config):
  sections = [config.data, config.augment, config.model, config.loss,
              config.optimizer, config.run]
  values = {}
  for section in sections:
    values.update(dataclasses.asdict(section))
  values.update(batch=config.run.train_batch_size,
                epochs=config.run.train_epochs)
  values["lr"] = optimizers.WarmUpAndCosineDecay(
      config.optimizer.learning_rate, batch_size=config.run.train_batch_size,
      num_examples=1, warmup_epochs=0, total_steps=1,
      scaling=config.optimizer.learning_rate_scaling).scaled_learning_rate
  return values


@pytest.mark.parametrize("name", sorted(PRESET_SOURCES))
def test_presets_hold_the_values_their_sources_give(name):
  config = command_line.config_of([
      f"--flagfile={os.path.join(str(run_lib.PRESETS_DIR), name)}",
      "--checkpoint=runs/x"])
  expected = dict(PRESET_SOURCES[name])
  linear_expected = expected.pop("linear_eval", None)
  # A linear evaluation trains with its --linear_eval_* settings.
  linear_config = config.for_linear_eval(model_dir="runs/y",
                                         checkpoint="runs/x")
  stages = [(_cited_values(linear_config if config.run.train_mode ==
                           "linear_eval" else config), expected)]
  if linear_expected:
    assert config.linear_eval.after_pretraining, name
    stages.append((_cited_values(linear_config), linear_expected))
  for values, cited in stages:
    for key, value in cited.items():
      assert values[key] == pytest.approx(value), (name, key)


@pytest.mark.parametrize("value, stem_at_32, stem_at_224", [
    ("auto", True, False), ("true", True, True), ("false", False, False)])
def test_cifar_stem_flag_picks_the_stem(value, stem_at_32, stem_at_224):
  for size, expected in ((32, stem_at_32), (224, stem_at_224)):
    config = command_line.config_of([f"--cifar_stem={value}",
                                     f"--image_size={size}"])
    assert config.model.use_cifar_stem(size) is expected


def test_crop_area_range_flag():
  config = command_line.config_of(["--crop_area_range=0.25,1"])
  assert config.augment.crop_area_range == (0.25, 1.0)
  for value, message in (("0.25", "takes 2 numbers separated by commas"),
                         ("a,1", "takes 2 numbers separated by commas")):
    with pytest.raises(flags.Error, match=re.escape(message)):
      command_line.config_of([f"--crop_area_range={value}"])
  with pytest.raises(config_lib.ConfigError,
                     match=re.escape("crop_area_range=(0.5, 0.2)")):
    command_line.config_of(["--crop_area_range=0.5,0.2"])
