"""`python -m simclr_tf.run --backend=jax`: the program on Keras' JAX trainer.

A tiny pretraining with a linear evaluation after it, a resumed run, the
random-init baseline, and the one-line errors for what JAX does not run.
"""

import json
import os

import pytest

from command_line import run_program
from command_line import tiny_flags

pytest.importorskip("jax", reason="the JAX backend needs `pip install jax` "
                    "(in the test extras)")


def _flags(tmp_path, model_dir, **overrides):
  values = dict(backend="jax", train_epochs=2, linear_eval_train_epochs=1,
                synthetic_train_examples=64, synthetic_test_examples=32,
                train_batch_size=32, eval_batch_size=16,
                checkpoint_epochs=1, steps_per_loop=1,
                linear_eval_after_pretraining="true")
  values.update(overrides)
  return tiny_flags(str(tmp_path / "data"), str(model_dir), **values)


def test_pretrain_linear_eval_resume_and_baseline(tmp_path):
  model_dir = tmp_path / "run"
  result = run_program(_flags(tmp_path, model_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "Keras jax backend on 1 device(s)" in out
  assert "[pretrain] step 4/" in out
  assert "Loaded the pretrained encoder from" in out
  # 64 images in batches of 32, 2 epochs: the authors' step count.
  state = json.loads((model_dir / "checkpoint.json").read_text())
  assert state["latest"] == 5
  assert (model_dir / "ckpt-5.weights.h5").exists()
  for directory in (model_dir, model_dir / "linear_eval"):
    stored = json.loads((directory / "result.json").read_text())
    assert 0.0 <= stored["label_top_1_accuracy"] <= 1.0
    assert stored["num_eval_examples"] == 32
  header = (model_dir / "metrics.csv").read_text().splitlines()[0]
  assert "contrast_loss" in header and "learning_rate" in header
  # TensorBoard scalars where TensorFlow is installed (it is, here).
  assert any(name.startswith("events") for name in
             os.listdir(model_dir / "train"))

  # Two more epochs resume from the last checkpoint.
  resumed = run_program(_flags(tmp_path, model_dir, train_epochs=4,
                               linear_eval_after_pretraining="false"))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed from" in resumed.stdout and "at step 5" in resumed.stdout
  assert json.loads((model_dir / "checkpoint.json").read_text())[
      "latest"] == 9

  baseline = run_program(_flags(tmp_path, tmp_path / "baseline",
                                train_mode="linear_eval"))
  assert baseline.returncode == 0, baseline.stderr[-3000:]
  assert "RANDOM initialisation" in baseline.stdout
  assert "RANDOMLY INITIALISED" in baseline.stdout


@pytest.mark.parametrize("overrides,message", [
    (dict(dataset="cifar10"), "tfds datasets need the TensorFlow backend"),
    (dict(train_mode="finetune", from_scratch="true"),
     "fine-tuning needs --backend=tensorflow"),
])
def test_what_jax_does_not_run_is_a_one_line_error(tmp_path, overrides,
                                                   message):
  result = run_program(_flags(tmp_path, tmp_path / "run", **overrides))
  assert result.returncode == 2
  assert message in result.stderr
  assert "Traceback" not in result.stderr
