r"""Time from opening an image folder to its first training batch, by size.

  python -m simclr_tf.tools.folder_startup_benchmark --sizes=1000,20000

Writes `--sizes` folders of small generated PNGs under a temporary directory,
then for each measures, in a fresh source registry, the seconds from
`get_dataset_info` (which opens the folder) to the first batch of the
training pipeline. Prints one JSON line per size and the ratio of the
largest to the smallest. Opening lists files and decodes none, so the ratio
should stay near 1 (listing 20,000 names costs milliseconds).
"""

import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

_SIZES = flags.DEFINE_list("sizes", ["1000", "20000"], "Folder sizes.")
_BATCH = flags.DEFINE_integer("batch", 64, "Training batch.")


def write_folder(root: str, count: int, side: int = 48) -> None:
  """`count` PNGs of `side` px in two classes under root/train/."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(count)
  tiles = [Image.fromarray(rng.integers(0, 256, (side, side + 8, 3),
                                        np.uint8)) for _ in range(8)]
  for i in range(count):
    folder = os.path.join(root, "train", f"c{i % 2}")
    os.makedirs(folder, exist_ok=True)
    tiles[i % 8].save(os.path.join(folder, f"{i:06d}.png"))


def time_to_first_batch(root: str, batch: int) -> float:
  """Seconds from opening `root` to the first training batch."""
  from simclr_tf.config import AugmentConfig  # pylint: disable=g-import-not-at-top
  from simclr_tf.config import DataConfig  # pylint: disable=g-import-not-at-top
  from simclr_tf import data as data_lib  # pylint: disable=g-import-not-at-top
  from simclr_tf.data import registry  # pylint: disable=g-import-not-at-top
  registry.clear_caches()
  config = DataConfig(dataset="image_folder", data_dir=root,
                      train_split="train", eval_split="train", image_size=32)
  start = time.perf_counter()
  data_lib.get_dataset_info(config)
  ds = data_lib.build_input_fn(config, AugmentConfig(on_device=True),
                               training=True, num_views=2,
                               global_batch_size=batch)(None)
  next(iter(ds))
  return time.perf_counter() - start


def main(argv):
  del argv
  sizes = sorted(int(s) for s in _SIZES.value)
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for size in sizes:
      root = os.path.join(tmp, str(size))
      write_folder(root, size)
      # Once to warm up TensorFlow, then the measurement.
      time_to_first_batch(root, _BATCH.value)
      results[size] = time_to_first_batch(root, _BATCH.value)
      print(json.dumps({"files": size, "seconds_to_first_batch":
                        round(results[size], 3)}))
  print(json.dumps({"ratio_largest_to_smallest": round(
      results[sizes[-1]] / results[sizes[0]], 2)}))


def entry():
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  entry()
