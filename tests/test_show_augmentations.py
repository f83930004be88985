"""tools/show_augmentations.py, run as a person would."""

import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, cwd=REPO):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("PYTHONPATH", None)
  return subprocess.run([sys.executable] + args, cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def test_writes_a_png_grid(tmp_path):
  root = tmp_path / "folder"
  for i in range(3):
    (root / "train" / f"c{i}").mkdir(parents=True)
    image = np.random.default_rng(i).integers(0, 256, (40, 30, 3))
    tf.io.write_file(str(root / "train" / f"c{i}" / "x.png"),
                     tf.io.encode_png(image.astype(np.uint8)))
  output = tmp_path / "out" / "grid.png"
  # As a script, from another directory.
  result = _run([os.path.join(REPO, "tools", "show_augmentations.py"),
                 "--dataset=image_folder", f"--data_dir={root}",
                 f"--output={output}", "--num_images=3", "--image_size=24",
                 "--min_tile=48", "--use_blur"], cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr
  grid = tf.io.decode_png(tf.io.read_file(str(output))).numpy()
  # 3 rows; original + 2 views; tiles of 48 px (24 px x2) with 2 px gaps.
  assert grid.shape == (3 * 48 + 2 * 2, 3 * 48 + 2 * 2, 3)
  first_row = grid[:48]
  original, view1, view2 = (first_row[:, c * 50:c * 50 + 48] for c in range(3))
  assert np.abs(view1.astype(int) - view2.astype(int)).mean() > 5
  assert np.abs(original.astype(int) - view1.astype(int)).mean() > 5
  assert (grid[48:50] == 255).all()  # The gap between rows.


def test_bad_input_is_one_line_without_traceback(tmp_path):
  result = _run(["-m", "tools.show_augmentations", "--dataset=image_folder",
                 f"--data_dir={tmp_path / 'missing'}",
                 f"--output={tmp_path / 'x.png'}"])
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  errors = [l for l in result.stderr.splitlines()
            if l.startswith("show_augmentations: error:")]
  assert len(errors) == 1 and "missing" in errors[0], result.stderr
  assert not (tmp_path / "x.png").exists()
