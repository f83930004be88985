"""After pretraining: SimCLR against both baselines, and the plots."""

import json
import os

import PIL.Image

from simclr_tf import config as config_lib
from simclr_tf import run as run_lib
from simclr_tf.training import tf_trainer as training


def test_pretraining_probes_both_baselines_and_writes_plots(tmp_path):
  config = config_lib.ExperimentConfig(
      data=config_lib.DataConfig(
          dataset="synthetic_shapes", image_size=16,
          data_dir=str(tmp_path / "data"),
          synthetic_train_examples=64, synthetic_test_examples=32),
      augment=config_lib.AugmentConfig(use_blur=False),
      model=config_lib.ModelConfig(resnet_depth=18, width_multiplier=0.125,
                                   proj_out_dim=16),
      optimizer=config_lib.OptimizerConfig(warmup_epochs=0),
      run=config_lib.RunConfig(
          model_dir=str(tmp_path / "run"), mode="train", train_batch_size=32,
          train_steps=2, eval_batch_size=32, probe_baselines=True,
          probe_num_strengths=2, write_plots=True)).validate()
  lines = []
  results = training.run_experiment(config, log=lines.append)
  probe = results[0].probe
  assert list(probe) == ["simclr", "raw_pixels", "random_init"]
  # 64 features at width 1/8; raw pixels 16 * 16 * 3.
  assert [probe[name]["feature_dim"] for name in probe] == [64, 768, 64]
  assert all(result["num_train"] == 64 and result["num_test"] == 32
             for result in probe.values())
  saved = json.loads((tmp_path / "run" / "probe.json").read_text())
  assert saved["results"]["raw_pixels"]["top_1"] == probe["raw_pixels"][
      "top_1"]
  assert len(saved["grid"]) == 2
  summary = run_lib.format_summary(config, results)
  assert "linear probe (L-BFGS logistic regression" in summary
  for name in probe:
    assert f"{name:<12} top-1 {100 * probe[name]['top_1']:6.2f}%" in summary
  for name, size in (("training_curves.png", (1000, 750)),
                     ("embedding.png", (700, 600))):
    with PIL.Image.open(os.path.join(tmp_path, "run", "plots", name)) as im:
      assert im.size == size
  assert any(line.startswith("[probe] SimCLR and both baselines probed")
             for line in lines)
