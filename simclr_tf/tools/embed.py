r"""Writes a model's embeddings of a dataset split, with labels, to `.npz`.

The model (--checkpoint) is an export, a checkpoint prefix or a run's
model_dir. Images go through the evaluation transform
(`simclr_tf.data.build_input_fn` with `training=False`) at the model's image
size, one pass in order. The `.npz` holds:

  embeddings  float32 (N, ...)   the chosen output (--output_key)
  labels      int64 (N,)         class ids; -1 for unlabeled examples
  output_key, checkpoint, dataset, split: strings saying what it is

  python -m simclr_tf.tools.embed --checkpoint=runs/demo/saved_model/312 \
      --dataset=synthetic_shapes --split=test --output=test_embeddings.npz
  python -m simclr_tf.tools.embed --checkpoint=runs/demo --dataset=image_folder \
      --data_dir=/path/to/root --split=val --output_key=proj_head_output \
      --output=val.npz
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from simclr_tf.tools import cli  # noqa: E402
from simclr_tf.tools import dataset_flags  # noqa: E402
from simclr_tf.tools import setting_flags  # noqa: E402

# The dataset and image flags are listed by --help too.
flags.adopt_module_key_flags(setting_flags)
flags.adopt_module_key_flags(dataset_flags)

TOOL = "embed"

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "The model: an export directory, a checkpoint prefix "
    "or a run's model_dir (as --checkpoint of simclr_tf.run).")
_OUTPUT = flags.DEFINE_string("output", None, ".npz file to write.")
_OUTPUT_KEY = flags.DEFINE_string(
    "output_key", "final_avg_pool", "Which output to write: final_avg_pool, "
    "proj_head_output, block_group4, logits_sup, ...")
_SPLIT = flags.DEFINE_string("split", "test", "Split to embed.")
_IMAGE_SIZE = dataset_flags.IMAGE_SIZE
_BATCH_SIZE = dataset_flags.BATCH_SIZE
_LOG_EVERY = flags.DEFINE_integer("log_every", 20, "Print progress every "
                                  "this many batches.")
flags.mark_flags_as_required(["checkpoint", "output"])


def _check_flags() -> None:
  if not _OUTPUT.value.endswith(".npz"):
    raise ValueError(f"--output must be a .npz file. Received: "
                     f"--output={_OUTPUT.value}")
  cli.check_at_least((_BATCH_SIZE, 1), (_LOG_EVERY, 1), (_IMAGE_SIZE, 0))


def embed(model, data_config, augment_config, *, output_key, batch_size,
          log_every, log=print):
  """Runs `model` over one split and collects one output.

  Args:
    model: a `simclr_tf.export.LoadedModel`.
    data_config: a `DataConfig` whose `eval_split` is the split to embed.
    augment_config: an `AugmentConfig` (its evaluation transform is used).
    output_key: the output to collect.
    batch_size: images per batch.
    log_every: report progress every this many batches.
    log: where progress lines go.

  Returns:
    (embeddings float32 (N, ...), labels int64 (N,), -1 where unlabeled).
  """
  from simclr_tf.evaluation import features as features_lib

  input_fn, num_examples = features_lib.split_input_fn(
      data_config, augment_config, split=data_config.eval_split,
      batch_size=batch_size)
  extractor = features_lib.FeatureExtractor(
      lambda images: model(images)[output_key])
  return extractor(input_fn, num_examples=num_examples,
                   batch_size=batch_size, log=log, log_every=log_every,
                   name=TOOL)


def main(argv) -> int:
  del argv  # Checked by cli.
  _check_flags()
  import numpy as np
  import tensorflow as tf
  import tensorflow_datasets as tfds

  from simclr_tf import export
  from simclr_tf.config import ExperimentConfig

  tfds.disable_progress_bar()
  model = export.load(_CHECKPOINT.value)
  if _OUTPUT_KEY.value not in model.output_keys:
    raise ValueError(f"--output_key {_OUTPUT_KEY.value!r} is not an output "
                     f"of {_CHECKPOINT.value}; it has: "
                     f"{', '.join(model.output_keys)}.")
  run_config = ExperimentConfig.from_dict(model.metadata["config"])
  data_config = dataset_flags.data_config(
      train_split=_SPLIT.value, eval_split=_SPLIT.value,
      image_size=_IMAGE_SIZE.value or model.image_size)
  embeddings, labels = embed(
      model, data_config, run_config.augment, output_key=_OUTPUT_KEY.value,
      batch_size=_BATCH_SIZE.value, log_every=_LOG_EVERY.value,
      log=lambda line: print(line, flush=True))
  output = os.path.abspath(_OUTPUT.value)
  tf.io.gfile.makedirs(os.path.dirname(output))
  # Written beside the target and renamed, so a failure leaves no partial
  # file under the requested name.
  temp = f"{output}.tmp-{os.getpid()}.npz"
  np.savez(temp, embeddings=embeddings, labels=labels,
           output_key=_OUTPUT_KEY.value,
           checkpoint=os.path.abspath(_CHECKPOINT.value),
           dataset=data_config.dataset, split=_SPLIT.value)
  os.replace(temp, output)
  print(f"Wrote {output}: {embeddings.shape[0]} embeddings of shape "
        f"{embeddings.shape[1:]} ({_OUTPUT_KEY.value}) with labels, from "
        f"{data_config.dataset}/{_SPLIT.value}.", flush=True)
  return 0


def entry():
  """Console-script entry point."""
  cli.run(TOOL, main, cli.model_tool_errors)


if __name__ == "__main__":
  entry()
