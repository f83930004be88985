"""After pretraining: SimCLR against both baselines, and the plots."""

import json
import os

import numpy as np
import PIL.Image
from sklearn import linear_model

from simclr_tf import config as config_lib
from simclr_tf.data import shapes_render
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
  # Two training steps teach the encoder little, so SimCLR beating raw
  # pixels would be luck here; the values are checked instead.
  grid = [1e-6, 1e5]  # probe_num_strengths=2 over the paper's range.
  for result in probe.values():
    assert 0.0 <= result["top_1"] <= result["top_5"] <= 1.0
    assert result["strength"] in grid
    assert all(0.0 <= a <= 1.0
               for a in result["holdout_top_1_by_strength"].values())
  # The raw-pixel probe against an independent fit: the dataset's own
  # pixels (a 16 px image at 16 px goes through the evaluation transform
  # unchanged: a same-size resize), scikit-learn's logistic regression
  # with the chosen strength as C = 1 / (strength * n) (appendix B.8's
  # penalty on the mean loss), scored by its own predict.
  train_images, train_labels = shapes_render.render_shapes(64, 16, 0,
                                                           stream=0)
  test_images, test_labels = shapes_render.render_shapes(32, 16, 0, stream=1)
  def pixels(images):
    # uint8 to [0, 1] as tf.image.convert_image_dtype does it: times
    # 1/255 in float32 (dividing by 255 differs in the last bit).
    return (images.astype(np.float32) * np.float32(1 / 255)).reshape(
        len(images), -1).astype(np.float64)
  chosen = probe["raw_pixels"]["strength"]
  reference = linear_model.LogisticRegression(
      C=1.0 / (chosen * 64), solver="lbfgs", max_iter=1000).fit(
          pixels(train_images), train_labels)
  expected = np.mean(reference.predict(pixels(test_images)) == test_labels)
  assert probe["raw_pixels"]["top_1"] == expected
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
