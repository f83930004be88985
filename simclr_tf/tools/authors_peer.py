r"""Times the authors' TF2 SimCLR train step, as a peer of our benchmark.

Run by `tools/benchmark.py --peer_authors_dir=PATH` as a child process (the
authors' code runs on tf-keras, which needs TF_USE_LEGACY_KERAS=1 before
TensorFlow is imported, so it cannot share our Keras 3 process):

  TF_USE_LEGACY_KERAS=1 python -m simclr_tf.tools.authors_peer SPEC_JSON

SPEC_JSON is an object with
  authors_dir   a checkout of google-research/simclr (holding tf2/run.py);
  flags         the authors' own flags (resnet_depth, image_size, ...);
  num_classes   classes of their supervised head;
  steps_per_loop, loops
                steps per call of the loop function, calls per timed run;
  image_folder  optional: a folder in the tfds ImageFolder layout
                (root/<split>/<class>/<image>) to train from through their
                own input pipeline (`data.build_distributed_dataset`: decode,
                augment, batch, prefetch) instead of one batch from memory.

The child imports their modules from `authors_dir/tf2`, builds their model,
LARS and metrics under a MirroredStrategy as their `run.py` does, and a train
step that calls their model, loss, metric and weight-decay functions in the
order their step does. It feeds one random batch from memory, like our
`train_step` measurement, or their pipeline on `image_folder`, like our
`fit_end_to_end`. After tracing it prints `{"ready": ...}`; then each
line "time" on stdin makes it time `loops` calls and print
`{"views_per_second": ..., "views_per_cpu_second": ...}`. It exits at end of
input. Errors are one JSON line `{"error": "..."}` and exit status 1.
"""

import json
import os
import sys
import tempfile
import time


def _reply(record):
  print(json.dumps(record), flush=True)


def _load_authors(authors_dir, flag_values):
  """Imports the authors' tf2 modules and sets their flags."""
  code_dir = os.path.join(authors_dir, "tf2")
  if not os.path.isfile(os.path.join(code_dir, "run.py")):
    raise FileNotFoundError(
        f"{authors_dir} holds no tf2/run.py: pass a checkout of "
        "google-research/simclr")
  sys.path.insert(0, code_dir)
  from absl import flags
  import run as authors_run  # noqa: F401  (defines every flag they read)
  import lars_optimizer  # noqa: F401
  import metrics
  import model as model_lib
  import objective
  argv = ["authors"] + [f"--{name}={value}" for name, value in
                        flag_values.items()]
  flags.FLAGS(argv)
  return flags.FLAGS, metrics, model_lib, objective


def _build(spec):
  import tensorflow as tf
  flag_values = dict(spec["flags"])
  flag_values.setdefault("use_tpu", False)
  FLAGS, metrics, model_lib, objective = _load_authors(
      spec["authors_dir"], flag_values)
  import data as data_lib
  strategy = tf.distribute.MirroredStrategy()
  replicas = strategy.num_replicas_in_sync
  num_classes = spec["num_classes"]
  steps_per_loop = spec["steps_per_loop"]
  batch = FLAGS.train_batch_size
  side = FLAGS.image_size
  with strategy.scope():
    model = model_lib.Model(num_classes)
    schedule = model_lib.WarmUpAndCosineDecay(FLAGS.learning_rate,
                                              spec.get("num_examples", 50000))
    optimizer = model_lib.build_optimizer(schedule)
    mean = tf.keras.metrics.Mean
    trackers = {name: mean(f"train/{name}") for name in (
        "weight_decay", "total_loss", "contrast_loss", "contrast_acc",
        "contrast_entropy", "supervised_loss", "supervised_acc")}
  writer = tf.summary.create_file_writer(
      tempfile.mkdtemp(prefix="authors_peer_"))

  def step(images, labels):
    with tf.GradientTape() as tape:
      # Their step records an image summary on each loop's last step.
      record = tf.equal((optimizer.iterations + 1) % steps_per_loop, 0)
      with tf.summary.record_if(record):
        tf.summary.image("image", images[:, :, :, :3],
                         step=optimizer.iterations + 1)
      projections, logits = model(images, training=True)
      loss, logits_con, labels_con = objective.add_contrastive_loss(
          projections, hidden_norm=FLAGS.hidden_norm,
          temperature=FLAGS.temperature, strategy=strategy)
      metrics.update_pretrain_metrics_train(
          trackers["contrast_loss"], trackers["contrast_acc"],
          trackers["contrast_entropy"], loss, logits_con, labels_con)
      if logits is not None:
        both_views = tf.concat([labels, labels], 0)
        supervised = objective.add_supervised_loss(labels=both_views,
                                                   logits=logits)
        loss += supervised
        metrics.update_finetune_metrics_train(
            trackers["supervised_loss"], trackers["supervised_acc"],
            supervised, both_views, logits)
      decay = model_lib.add_weight_decay(model, adjust_per_optimizer=True)
      trackers["weight_decay"].update_state(decay)
      loss += decay
      trackers["total_loss"].update_state(loss)
      loss = loss / replicas
    variables = model.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

  @tf.function
  def run_loop(iterator):
    for _ in tf.range(steps_per_loop):
      strategy.run(step, next(iterator))

  if spec.get("image_folder"):
    import tensorflow_datasets as tfds
    builder = tfds.folder_dataset.ImageFolder(spec["image_folder"])
    with strategy.scope():
      dataset = data_lib.build_distributed_dataset(builder, batch, True,
                                                   strategy, None)
  else:
    images = tf.random.uniform((batch, side, side, 6), seed=1)
    labels = tf.one_hot(tf.range(batch) % num_classes, num_classes)
    # One batch repeated keeps the input out of the timing.
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors((images, labels)).repeat())
  iterator = iter(dataset)
  loops = spec["loops"]

  def timed():
    start = time.perf_counter(), time.process_time()
    with writer.as_default():
      for _ in range(loops):
        run_loop(iterator)
    int(optimizer.iterations.numpy())  # Waits for the last step.
    end = time.perf_counter(), time.process_time()
    views = 2 * batch * steps_per_loop * loops
    return {"views_per_second": views / (end[0] - start[0]),
            "views_per_cpu_second": views / max(end[1] - start[1], 1e-9)}

  with writer.as_default():
    run_loop(iterator)  # Traces; fills the cache and the shuffle buffer.
    run_loop(iterator)
  int(optimizer.iterations.numpy())
  trainable = sum(int(tf.size(v)) for v in model.trainable_variables)
  return timed, {"ready": True, "replicas": replicas,
                 "trainable_parameters": trainable,
                 "tensorflow": tf.__version__}


def main(argv):
  if len(argv) != 2:
    _reply({"error": "usage: authors_peer.py SPEC_JSON"})
    return 1
  if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    _reply({"error": "set TF_USE_LEGACY_KERAS=1: the authors' code runs on "
                     "tf-keras"})
    return 1
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    spec = json.loads(argv[1])
    timed, ready = _build(spec)
  except Exception as error:  # pylint: disable=broad-except
    # One line for the parent to show; their code raises many kinds.
    _reply({"error": f"{type(error).__name__}: {error}"})
    return 1
  _reply(ready)
  for line in sys.stdin:
    if line.strip() == "time":
      _reply(timed())
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
