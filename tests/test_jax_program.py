"""`python -m simclr_tf.run --backend=jax`: the program on Keras' JAX trainer.

A tiny pretraining with a linear evaluation after it, its weights read by
the TensorFlow model, a resumed run on 2 devices, a stop on SIGTERM and on
a NaN loss, the benchmark's FLOP count, and the one-line errors for what
JAX does not run.
"""

import json
import os
import sys

import numpy as np
import pytest

import command_line
import jax_fault_program
from command_line import run_program
from command_line import tiny_flags
from simclr_tf import run as run_lib

pytest.importorskip("jax", reason="the JAX backend needs `pip install jax` "
                    "(in the test extras)")


def _flags(tmp_path, model_dir, **overrides):
  values = dict(backend="jax", train_epochs=2, linear_eval_train_epochs=1,
                synthetic_train_examples=64, synthetic_test_examples=32,
                train_batch_size=32, eval_batch_size=16,
                checkpoint_epochs=1, steps_per_loop=3,
                linear_eval_after_pretraining="true")
  values.update(overrides)
  return tiny_flags(str(tmp_path / "data"), str(model_dir), **values)


def test_pretrain_linear_eval_and_resume_on_two_devices(tmp_path):
  model_dir = tmp_path / "run"
  result = run_program(_flags(tmp_path, model_dir, health_examples=32))
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "Keras jax backend on 1 device(s)" in out
  assert "[pretrain] step 4/" in out
  assert "Loaded the pretrained encoder from" in out
  # 64 images in batches of 32, 2 epochs: the authors' step count, reached
  # exactly though each call of the step runs 3 (steps_per_loop).
  state = json.loads((model_dir / "checkpoint.json").read_text())
  assert state["latest"] == 5
  assert (model_dir / "ckpt-5.weights.h5").exists()
  for directory in (model_dir, model_dir / "linear_eval"):
    stored = json.loads((directory / "result.json").read_text())
    assert 0.0 <= stored["label_top_1_accuracy"] <= 1.0
    assert stored["num_eval_examples"] == 32
  # The health signals of the pretrained encoder, within their bounds
  # (tests/test_health.py checks the formulas); linear eval has none.
  stored = json.loads((model_dir / "result.json").read_text())
  assert 0.0 <= stored["alignment"] <= 4.0
  assert -4.0 <= stored["uniformity"] <= 0.0
  assert 1.0 <= stored["effective_rank"] <= 64.0 + 1e-3
  assert "alignment" not in json.loads(
      (model_dir / "linear_eval" / "result.json").read_text())
  assert "[pretrain] health at step 5" in out
  header = (model_dir / "metrics.csv").read_text().splitlines()[0]
  assert "contrast_loss" in header and "learning_rate" in header
  # TensorBoard scalars where TensorFlow is installed (it is, here).
  assert any(name.startswith("events") for name in
             os.listdir(model_dir / "train"))

  _check_weights_load_on_tensorflow(model_dir / "linear_eval")

  # Two more epochs resume from the last checkpoint, on 2 devices: the
  # global batch, and so the run, is the same.
  resumed = run_program(
      _flags(tmp_path, model_dir, train_epochs=4,
             linear_eval_after_pretraining="false"),
      env=dict(XLA_FLAGS="--xla_force_host_platform_device_count=2"))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed from" in resumed.stdout and "at step 5" in resumed.stdout
  assert "on 2 device(s)" in resumed.stdout
  assert json.loads((model_dir / "checkpoint.json").read_text())[
      "latest"] == 9



def test_sigterm_saves_and_stops_then_a_nan_stops_without_saving(tmp_path):
  """Faults on the JAX path, from the command line, with test-only faults
  (tests/jax_fault_program.py): SIGTERM mid-run saves the step reached and
  exits 75; the rerun resumes exactly there, and a NaN loss at a later step
  exits 1 naming the last good checkpoint, with nothing saved after it."""
  model_dir = tmp_path / "run"
  args = _flags(tmp_path, model_dir, train_epochs=3, steps_per_loop=1,
                linear_eval_after_pretraining="false")
  program = [sys.executable,
             os.path.join(command_line.REPO, "tests", "jax_fault_program.py")]

  def run_with(faults):
    return run_program(args, program=program, env={
        "KERAS_BACKEND": "jax", jax_fault_program.ENV_VAR: faults})

  # 2 steps an epoch, a checkpoint each epoch. The signal comes as step 2
  # is saved; step 3 is in flight, finishes, and is saved.
  stopped = run_with("sigterm_after_saving=2")
  assert stopped.returncode == run_lib.STOPPED_BY_SIGNAL, stopped.stderr[
      -3000:]
  checkpoint = model_dir / "ckpt-3.weights.h5"
  assert stopped.stderr.splitlines()[-1] == (
      f"stopped by SIGTERM at step 3; checkpoint {checkpoint}; rerun the "
      "same command to resume")
  assert "Traceback" not in stopped.stderr
  assert json.loads((model_dir / "checkpoint.json").read_text())[
      "latest"] == 3

  failed = run_with("nan_at_step=5")
  assert failed.returncode == run_lib.TRAINING_FAILED, failed.stderr[-3000:]
  assert "Resumed from" in failed.stdout and "at step 3." in failed.stdout
  last_line = failed.stderr.splitlines()[-1]
  # XLA on the CPU maps NaN to 0 in ReLU, so the NaN views poison the
  # weights while the loss stays finite; where max propagates NaN (GPUs),
  # the loss itself is NaN.
  assert (last_line.startswith("error: non-finite weights at step 5 (the "
                               "losses were finite: contrast_loss ") or
          last_line.startswith("error: non-finite loss at step 5: "
                               "contrast_loss nan")), last_line
  assert (f"the last good checkpoint is {model_dir / 'ckpt-4.weights.h5'}"
          in last_line)
  assert "Traceback" not in failed.stderr
  # Step 4 ended an epoch and was saved; nothing after the NaN was.
  assert json.loads((model_dir / "checkpoint.json").read_text())[
      "latest"] == 4
  assert not list(model_dir.glob("ckpt-5*"))


@pytest.mark.parametrize("overrides,message", [
    (dict(dataset="cifar10"), "tfds datasets need the TensorFlow backend"),
    (dict(train_mode="finetune", from_scratch="true"),
     "fine-tuning and distillation need --backend=tensorflow"),
])
def test_what_jax_does_not_run_is_a_one_line_error(tmp_path, overrides,
                                                   message):
  result = run_program(_flags(tmp_path, tmp_path / "run", **overrides))
  assert result.returncode == 2
  assert message in result.stderr
  assert "Traceback" not in result.stderr


def _check_weights_load_on_tensorflow(model_dir):
  """The JAX run's weights file, loaded by the TensorFlow model, scores
  what the JAX run scored (docs/jax.md, converting a run)."""
  import keras
  from simclr_tf import config as config_lib
  from simclr_tf.data import shapes_render
  from simclr_tf.models import build_simclr_model
  config = config_lib.ExperimentConfig.from_json(
      (model_dir / "config.json").read_text())
  state = json.loads((model_dir / "checkpoint.json").read_text())
  assert keras.backend.backend() == "tensorflow"
  model = build_simclr_model(
      config.model, image_size=config.data.image_size, num_classes=10,
      train_mode=config.run.train_mode, with_supervised_head=True)
  model.load_weights(str(model_dir / f"ckpt-{state['latest']}.weights.h5"))
  images, labels = shapes_render.render_shapes(
      config.data.synthetic_test_examples, config.data.image_size,
      config.data.synthetic_seed, stream=1)
  logits = model(images.astype(np.float32) / 255.0)["logits_sup"].numpy()
  top_1 = float(np.mean(logits.argmax(1) == labels))
  stored = json.loads((model_dir / "result.json").read_text())
  # One example's worth: a near-tie may break the other way.
  assert abs(top_1 - stored["label_top_1_accuracy"]) <= 1.0 / len(labels)
  # And it exports, as docs/jax.md shows.
  from simclr_tf import export
  export_dir = str(model_dir.parent / "exported")
  export.export_model(model, config, export_dir)
  assert os.path.exists(os.path.join(export_dir, "saved_model.pb"))


def test_benchmark_on_jax_counts_the_steps_flops(tmp_path):
  """The FLOPs behind the MFU column: XLA's count of the train step is
  forward + backward (input and weight gradients), about 3x the forward
  convolutions and matmuls counted by hand from the layer shapes."""
  import keras
  from simclr_tf import config as config_lib
  from simclr_tf.models import build_simclr_model
  args = ["--backend=jax", "--resnet_depth=18", "--width_multiplier=0.125",
          "--image_size=32", "--cifar_stem=false", "--train_batch_size=8",
          "--proj_out_dim=16", "--benchmark_steps=1",
          "--benchmark_repeats=1",
          "--benchmark_measurements=keras_jax_train_step,torch_eager"]
  result = run_program(args, program=[
      os.sys.executable, "-m", "simclr_tf.tools.benchmark"])
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in result.stdout.splitlines()
             if line.startswith("{")]
  ours = next(r for r in records
              if r["measurement"] == "keras_jax_train_step")
  peer = next(r for r in records if r["measurement"] == "torch_eager")
  assert "keras_jax_train_step" in result.stdout.split("\n\n")[-1]
  assert ("views_per_second" in peer) or "not installed" in peer["error"]

  model = build_simclr_model(
      config_lib.ModelConfig(resnet_depth=18, width_multiplier=0.125,
                             proj_out_dim=16, cifar_stem=False),
      image_size=32, num_classes=10, train_mode="pretrain",
      with_supervised_head=True)
  views = 16
  calls = []
  for layer in _all_layers(model):
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
      layer.call = _recording(layer, layer.call, calls)
  model(np.zeros((views // 2, 32, 32, 6), np.float32))
  forward = 0
  for layer, in_shape, out_shape in calls:
    kernel = layer.kernel.shape
    if isinstance(layer, keras.layers.Dense):
      forward += 2 * int(np.prod(out_shape[:-1])) * kernel[0] * kernel[1]
      continue
    # Multiply-adds: per output value, the kernel taps that fall inside
    # the input ("same" padding adds no work); 2 FLOPs each.
    taps = 1
    for axis in (0, 1):
      taps *= _taps_inside(in_shape[1 + axis], out_shape[1 + axis],
                           kernel[axis], layer.strides[axis], layer.padding)
    forward += 2 * out_shape[0] * out_shape[-1] * kernel[2] * taps
  ratio = ours["step_tflops"] * 1e12 / forward
  print("train step FLOPs / forward FLOPs by hand:", ratio)
  assert 2.5 < ratio < 3.5, ratio


def _recording(layer, call, calls):
  def recorded(inputs, *args, **kwargs):
    outputs = call(inputs, *args, **kwargs)
    calls.append((layer, tuple(inputs.shape), tuple(outputs.shape)))
    return outputs
  return recorded


def _taps_inside(size_in, size_out, kernel, stride, padding):
  """Kernel taps inside the input, summed over output positions, 1-D."""
  pad = max((size_out - 1) * stride + kernel - size_in, 0) // 2 if (
      padding == "same") else 0
  return sum(sum(0 <= o * stride - pad + t < size_in for t in range(kernel))
             for o in range(size_out))


def _all_layers(layer):
  for sub in layer._flatten_layers(include_self=False, recursive=True):
    yield sub


def test_the_run_directory_contract_holds_on_jax(tmp_path):
  """The lock, the resume check and atomic writes of the TF trainer, on JAX."""
  from simclr_tf.storage import run_dir
  model_dir = tmp_path / "run"
  model_dir.mkdir()
  # A lock held by a live process (this one, through flock) refuses a run.
  with run_dir.RunLock(str(model_dir), log=lambda line: None):
    locked = run_program(_flags(tmp_path, model_dir,
                                linear_eval_after_pretraining="false"))
  assert locked.returncode == 2, locked.stderr[-2000:]
  lines = [line for line in locked.stderr.splitlines()
           if f"model_dir {model_dir} is in use by process {os.getpid()}"
           in line]
  assert len(lines) == 1 and "Traceback" not in locked.stderr

  first = run_program(_flags(tmp_path, model_dir, train_epochs=1,
                             linear_eval_after_pretraining="false"))
  assert first.returncode == 0, first.stderr[-3000:]
  assert not list(model_dir.glob("*.tmp*"))  # written whole, then renamed
  assert json.loads((model_dir / "config.json").read_text())["model"][
      "proj_out_dim"] == 16
  # Resuming with another architecture is refused, naming the setting.
  changed = run_program(_flags(tmp_path, model_dir, train_epochs=2,
                               proj_out_dim=8,
                               linear_eval_after_pretraining="false"))
  assert changed.returncode == 2, changed.stderr[-2000:]
  assert "model.proj_out_dim: stored 16, now 8" in changed.stderr
  assert "Traceback" not in changed.stderr
  assert not (model_dir / run_dir.LOCK_FILE).exists()
