r"""Measures SimCLR training speed on this machine, one JSON line each.

  python -m simclr_tf.tools.benchmark                       # small default, < 2 min
  python -m simclr_tf.tools.benchmark --flagfile=flags/demo.cfg
  python -m simclr_tf.tools.benchmark --resnet_depth=50 --width_multiplier=1 \
      --image_size=224 --train_batch_size=8 --synthetic_train_examples=256 \
      --benchmark_variant=jit_compile=true
  python -m simclr_tf.tools.benchmark --benchmark_measurements=train_step \
      --benchmark_variant=grad_cache_chunks=4     # cached-gradient steps

The configuration is given with the training program's own flags
(`simclr_tf/run.py`: depth, width, image size, batch, --precision,
--jit_compile, --steps_per_loop, --strategy, --cpu_replicas,
--augment_on_device, the dataset, ...), so any preset works
(`--preset=NAME`, the other flags overriding it, or a flagfile). This
tool's defaults differ from the program's in the model size only (a small
ResNet-18 on 32 px synthetic_shapes), so that a bare run finishes in under
two minutes on 2 CPU cores.

Throughput is in augmented views per second (a pretraining step of batch B
trains on 2B views). Measurements, each timed `--benchmark_repeats` times,
alternating within each group so that load from other processes hits them
alike; the medians are reported:

  train_step         the model's train function (what `fit` calls, with
                     steps_per_loop steps per call) on one in-memory batch.
  handwritten_loop   a minimal tf.function loop over the same model, loss
                     and optimizer, all timed steps in one call: no
                     metrics, callbacks or Keras. The internal baseline.
  fit_in_memory      `model.fit` with the training program's callback on the
                     in-memory batch (steady state, first loop excluded).
  input_tf_data      the tf.data pipeline augmenting on the host.
  input_on_device    the --augment_on_device pipeline (uint8 batches; views
                     counted as the step will make them).
  augment_on_device  the batched augmentation alone, on the device.
  fit_end_to_end     `model.fit` on the real pipeline of this configuration.

With --peer_authors_dir (a checkout of google-research/simclr) the authors'
TF2 code is timed on the same configuration as a peer, in a child process
(`tools/authors_peer.py`: tf-keras needs TF_USE_LEGACY_KERAS=1), alternating
with ours run by run:

  authors_train_step     their train loop (model, loss, metrics, LARS; their
                         steps_per_loop) on one in-memory batch, beside
                         train_step.
  authors_end_to_end     their train loop on their own input pipeline over
                         the same image folder (--dataset=image_folder
                         only), beside fit_end_to_end.

and the ratios ours / authors are printed. Their code has no mixed
precision and runs float32 whatever --precision says; it uses their default
MirroredStrategy (one CPU device).

Then the ratios fit_in_memory / handwritten_loop and input / train_step,
peak host memory (RSS) and peak device memory ("n/a" without GPUs), and a
table. Peak memory is the process's, so compare the memory of two
configurations (e.g. --grad_cache_chunks=1 and 4) in two runs of the tool.
With --benchmark_variant a second configuration (some flags changed)
is built in the same process and every measurement alternates between the
two, giving before/after numbers from one run and their ratios.

Each line has views per wall-clock second and views per CPU second of this
process; on a machine shared with other jobs the second is the steadier.
"""

import contextlib
import dataclasses
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from simclr_tf import config as config_lib  # noqa: E402
from simclr_tf.tools import program_flags  # noqa: E402  (defines the flags)
from simclr_tf.tools import cli  # noqa: E402

MEASUREMENTS = ("train_step", "handwritten_loop", "fit_in_memory",
                "input_tf_data", "input_on_device", "augment_on_device",
                "fit_end_to_end")

_STEPS = flags.DEFINE_integer(
    "benchmark_steps", 10, "Optimizer steps per timed run (rounded up to a "
    "multiple of --steps_per_loop).")
_REPEATS = flags.DEFINE_integer(
    "benchmark_repeats", 3, "Timed runs of each measurement; the median is "
    "reported.")
_INPUT_BATCHES = flags.DEFINE_integer(
    "benchmark_input_batches", 20, "Batches per timed run of an input "
    "pipeline.")
_MEASURE = flags.DEFINE_list(
    "benchmark_measurements", list(MEASUREMENTS),
    f"What to measure, from: {', '.join(MEASUREMENTS)}.")
_VARIANT = flags.DEFINE_list(
    "benchmark_variant", [], "Also measure the configuration with these "
    "flags changed (e.g. jit_compile=true,steps_per_loop=10), in the same "
    "process, alternating with the base configuration run by run: before "
    "and after from the same run. The strategy cannot change.")
_PEER = flags.DEFINE_string(
    "peer_authors_dir", None, "A checkout of google-research/simclr: also "
    "time the authors' TF2 train step on this configuration, alternating "
    "with ours, and print the ratios. Needs tf-keras.")
_PEAK_TFLOPS = flags.DEFINE_float(
    "benchmark_peak_tflops", None, "--backend=jax: the chip's peak TFLOP/s "
    "at --precision, for the model FLOP utilisation column (known for "
    "H100, H200 and A100; unset elsewhere leaves it n/a).")
# Flags a variant cannot change: one process holds one strategy.
_FIXED_IN_VARIANT = ("strategy", "cpu_replicas", "tpu")

# A bare run measures a small model; flags and flagfiles override these.
_DEFAULTS = dict(resnet_depth=18, width_multiplier=0.25, image_size=32,
                 train_batch_size=64, dataset="synthetic_shapes",
                 synthetic_train_examples=2048, synthetic_test_examples=64,
                 color_jitter_strength=0.5, use_blur=False, proj_out_dim=64)
USAGE_ERROR = cli.USAGE_ERROR
TOOL = "benchmark"

FLAGS = flags.FLAGS


def _fail(message):
  return cli.fail(message, tool=TOOL)


def _emit(record):
  print(json.dumps(record, sort_keys=False), flush=True)


def _median(values):
  return statistics.median(values) if values else float("nan")


def _now():
  """Wall-clock and process CPU seconds (all threads)."""
  return time.perf_counter(), time.process_time()


def _rates(views, start, end):
  """Views per wall-clock second and per CPU second of this process.

  The second is robust to other processes on a shared machine: it counts
  the work done, not the time waited for a core.
  """
  return views / (end[0] - start[0]), views / max(end[1] - start[1], 1e-9)


class Benchmark:
  """Builds the configuration's model and inputs, and times them.

  Args:
    config: a validated `ExperimentConfig`.
    steps: optimizer steps per timed run.
    repeats: timed runs per measurement.
    input_batches: batches per timed run of a pipeline.
    strategy: the strategy to build in; None builds the configuration's.
  """

  def __init__(self, config, *, steps, repeats, input_batches,
               strategy=None):
    # TensorFlow starts here, after flag errors are reported.
    import tensorflow as tf
    from simclr_tf import data as data_lib
    from simclr_tf.training import distribute
    from simclr_tf.training import tf_trainer as training
    self.tf, self.data_lib, self.training = tf, data_lib, training
    self.config = config
    run = config.run
    self.strategy = strategy or distribute.build_strategy(
        run.strategy, tpu=run.tpu, cpu_replicas=run.cpu_replicas)
    self.replicas = self.strategy.num_replicas_in_sync
    if run.train_batch_size % self.replicas:
      raise config_lib.ConfigError(
          f"`train_batch_size` must split evenly over the {self.replicas} "
          f"replicas. Received: train_batch_size={run.train_batch_size}")
    self.info = data_lib.get_dataset_info(config.data)
    self.num_views = 2 if run.train_mode == "pretrain" else 1
    self.batch = run.train_batch_size
    self.steps_per_loop = run.steps_per_loop
    self.loops = max(1, -(-steps // self.steps_per_loop))
    self.steps = self.loops * self.steps_per_loop
    self.repeats = repeats
    self.input_batches = input_batches
    self.model = training.build_model(config, self.strategy, self.info,
                                      total_steps=10 ** 9)
    # `build_model` compiles the on-device augmentation into the model.
    self.augmentation = self.model.train_augmentation
    self.summary_dir = tempfile.mkdtemp(prefix="simclr_benchmark_")
    self._in_memory = self._in_memory_dataset()

  def close(self):
    shutil.rmtree(self.summary_dir, ignore_errors=True)

  # ---- inputs

  def _input_fn(self, on_device):
    augment_config = dataclasses.replace(
        self.training.train_augment_config(self.config), on_device=on_device)
    return self.data_lib.build_input_fn(
        self.config.data, augment_config, training=True,
        num_views=self.num_views, global_batch_size=self.batch,
        seed=self.config.run.seed)

  def _in_memory_dataset(self):
    """One real batch, repeated: the train step's input without tf.data."""
    tf = self.tf
    images, labels = next(iter(self._input_fn(self.config.augment.on_device)(
        None)))
    per_replica = self.batch // self.replicas

    def input_fn(context):
      del context
      return tf.data.Dataset.from_tensors(
          (images[:per_replica], labels[:per_replica])).repeat()

    return self.strategy.distribute_datasets_from_function(
        input_fn, options=self.training.TRAIN_INPUT_OPTIONS)

  # ---- timed runs, each returning views per second

  def _views(self, steps):
    return steps * self.batch * self.num_views

  def make_train_step(self):
    train_function = self.model.make_train_function()
    iterator = iter(self._in_memory)
    train_function(iterator)  # Traces and compiles.

    def timed():
      start = _now()
      for _ in range(self.loops):
        logs = train_function(iterator)
      float(logs[next(iter(logs))])
      return _rates(self._views(self.steps), start, _now())

    return timed

  def make_handwritten_loop(self):
    """The baseline: forward, loss, gradient, update; nothing else."""
    tf = self.tf
    from simclr_tf.training import distribute
    from simclr_tf import losses
    from simclr_tf import optimizers
    from simclr_tf.models import train_loop
    from simclr_tf.models import simclr
    model, strategy = self.model, self.strategy
    optimizer = model.optimizer
    weight_decay = self.config.optimizer.weight_decay
    optimizer_name = self.config.optimizer.optimizer
    loss_config = self.config.loss
    augmentation = self.augmentation
    scope = (train_loop.xla_scope(strategy) if self.config.run.jit_compile
             else None)
    if scope == train_loop.XLA_AUGMENTATION and augmentation is not None:
      augmentation = tf.function(augmentation, jit_compile=True)

    def step(images, labels):
      if augmentation is not None:
        images = augmentation(images)
      with tf.GradientTape() as tape:
        outputs = model(images, training=True)
        loss = 0.0
        if model.train_mode == "pretrain":
          loss, _, _ = losses.pretraining_loss(
              outputs[simclr.PROJ_HEAD_OUTPUT],
              loss_type=loss_config.loss_type,
              temperature=loss_config.temperature,
              hidden_norm=loss_config.hidden_norm,
              semihard_negatives=loss_config.semihard_negatives,
              margin=loss_config.margin)
        if simclr.LOGITS_SUP in outputs:
          logits = outputs[simclr.LOGITS_SUP]
          targets = tf.tile(labels, [tf.shape(logits)[0] //
                                     tf.shape(labels)[0], 1])
          loss += losses.supervised_loss(targets, logits)
        loss += optimizers.l2_weight_decay(
            model.trainable_variables, weight_decay, optimizer_name)
        loss = optimizer.scale_loss(
            loss / distribute.num_replicas_in_sync())
      variables = model.trainable_variables
      optimizer.apply_gradients(zip(tape.gradient(loss, variables),
                                    variables))

    if scope == train_loop.XLA_STEP:
      step = tf.function(step, jit_compile=True)

    @tf.function
    def loop(iterator, num_steps):
      for _ in tf.range(num_steps):
        strategy.run(step, args=next(iterator))

    iterator = iter(self._in_memory)
    loop(iterator, tf.constant(1))  # Traces and compiles.

    def timed():
      start = _now()
      loop(iterator, tf.constant(self.steps))
      int(optimizer.iterations.numpy())  # Waits for the last step.
      return _rates(self._views(self.steps), start, _now())

    return timed

  def _fit_timed(self, dataset):
    """`fit` with the program's callback; steady-state views per second."""
    from simclr_tf.training import callbacks as callbacks_lib
    tf, model = self.tf, self.model
    writer = tf.summary.create_file_writer(self.summary_dir)
    monitor = callbacks_lib.TrainingMonitor(
        stage="benchmark", total_steps=10 ** 9, global_batch_size=self.batch,
        checkpoint_manager=None, checkpoint_every=10 ** 9,
        summary_writer=writer, log=lambda line: None)
    timer = _loop_timer()
    # One loop more than timed: the first ends the start-up.
    model.fit(dataset, epochs=1,
              steps_per_epoch=(self.loops + 1) * self.steps_per_loop,
              callbacks=[monitor, timer], verbose=0, shuffle=False)
    writer.close()
    return _rates(self._views(self.steps), timer.ends[0], timer.ends[-1])

  def make_fit_in_memory(self):
    self._fit_timed(self._in_memory)  # Traces and compiles.
    return lambda: self._fit_timed(self._in_memory)

  def make_fit_end_to_end(self):
    dataset = self.strategy.distribute_datasets_from_function(
        self._input_fn(self.config.augment.on_device),
        options=self.training.TRAIN_INPUT_OPTIONS)
    self._fit_timed(dataset)  # Traces, compiles, fills the cache.
    return lambda: self._fit_timed(dataset)

  def _make_input(self, on_device):
    dataset = self._input_fn(on_device)(None)
    iterator = iter(dataset)
    # The first batch fills the cache and the shuffle buffer; a few more
    # let tf.data's autotuning settle.
    for _ in range(5):
      next(iterator)

    def timed():
      start = _now()
      for _ in range(self.input_batches):
        next(iterator)
      return _rates(self._views(self.input_batches), start, _now())

    return timed

  def make_input_tf_data(self):
    return self._make_input(on_device=False)

  def make_input_on_device(self):
    return self._make_input(on_device=True)

  def make_augment_on_device(self):
    tf = self.tf
    augmentation = tf.function(
        self.augmentation or self.training.on_device_augmentation(
            self.config), jit_compile=self.config.run.jit_compile)
    images, _ = next(iter(self._input_fn(on_device=True)(None)))
    float(tf.reduce_sum(augmentation(images)))  # Traces and compiles.

    def timed():
      start = _now()
      for _ in range(self.input_batches):
        views = augmentation(images)
      float(tf.reduce_sum(views[0, 0, 0]))
      return _rates(self._views(self.input_batches), start, _now())

    return timed

  # ---- memory

  def memory(self):
    """Peak host RSS and peak device memory, in bytes ("n/a": no device)."""
    tf = self.tf
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    host = peak if platform.system() == "Darwin" else peak * 1024
    device = {}
    for gpu in tf.config.list_logical_devices("GPU"):
      name = gpu.name.split("device:")[-1]
      device[name] = tf.config.experimental.get_memory_info(name)["peak"]
    return host, device or "n/a"


def _loop_timer():
  """A Keras callback whose `ends` lists when each train loop ended."""
  import keras

  class LoopTimer(keras.callbacks.Callback):

    def __init__(self):
      super().__init__()
      self.ends = []

    def on_train_batch_end(self, batch, logs=None):
      self.ends.append(_now())

  return LoopTimer()


class PeerError(Exception):
  """The authors' peer could not be started or timed."""


def _authors_flags(config):
  """Our configuration in the authors' flags (tf2/run.py)."""
  data, model, augment = config.data, config.model, config.augment
  optimizer, loss, run = config.optimizer, config.loss, config.run
  return dict(
      train_mode="pretrain", resnet_depth=model.resnet_depth,
      width_multiplier=int(model.width_multiplier), sk_ratio=model.sk_ratio,
      se_ratio=model.se_ratio, image_size=data.image_size,
      global_bn=model.global_bn, batch_norm_decay=model.batch_norm_decay,
      proj_head_mode=model.proj_head_mode, proj_out_dim=model.proj_out_dim,
      num_proj_layers=model.num_proj_layers,
      ft_proj_selector=model.ft_proj_selector,
      lineareval_while_pretraining=run.lineareval_while_pretraining,
      train_batch_size=run.train_batch_size, train_split=data.train_split,
      cache_dataset=bool(data.cache_dataset),
      color_jitter_strength=augment.color_jitter_strength,
      use_blur=augment.use_blur, temperature=loss.temperature,
      hidden_norm=loss.hidden_norm, optimizer=optimizer.optimizer,
      learning_rate=optimizer.learning_rate,
      learning_rate_scaling=optimizer.learning_rate_scaling,
      warmup_epochs=optimizer.warmup_epochs,
      weight_decay=optimizer.weight_decay, momentum=optimizer.momentum)


def check_peer_dir(path):
  """A clear message if `path` is no checkout of the authors' code, else None."""
  if not os.path.isfile(os.path.join(path, "tf2", "run.py")):
    return (f"--peer_authors_dir={path}: no tf2/run.py there. Pass a "
            "checkout of google-research/simclr (git clone "
            "https://github.com/google-research/simclr).")
  return None


class AuthorsPeer:
  """The authors' train loop in a child process, timed on request.

  Args:
    authors_dir: a checkout of google-research/simclr.
    config: our `ExperimentConfig`; the peer runs its equivalent.
    steps: optimizer steps per timed run (rounded to whole loops).
    num_classes: classes of the dataset (their supervised head).
    num_examples: train examples (their learning-rate schedule).
    image_folder: train from this folder through their pipeline; None
      feeds one batch from memory.
  """

  def __init__(self, authors_dir, config, *, steps, num_classes,
               num_examples, image_folder=None):
    import subprocess
    steps_per_loop = config.run.steps_per_loop
    spec = dict(authors_dir=os.path.abspath(authors_dir),
                flags=_authors_flags(config), num_classes=num_classes,
                num_examples=num_examples,
                steps_per_loop=steps_per_loop,
                loops=max(1, -(-steps // steps_per_loop)),
                image_folder=image_folder)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "authors_peer.py")
    self._process = subprocess.Popen(
        [sys.executable, script, json.dumps(spec)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    self._read()  # Built and traced.

  def _read(self):
    line = self._process.stdout.readline()
    if not line:
      raise PeerError("the authors' peer exited without a word; run "
                      "tools/authors_peer.py by hand to see why.")
    record = json.loads(line)
    if "error" in record:
      raise PeerError(f"the authors' peer failed: {record['error']}")
    return record

  def timed(self):
    self._process.stdin.write("time\n")
    self._process.stdin.flush()
    record = self._read()
    return record["views_per_second"], record["views_per_cpu_second"]

  def close(self):
    if self._process.poll() is None:
      self._process.stdin.close()
      try:
        self._process.wait(timeout=30)
      except Exception:  # pylint: disable=broad-except
        self._process.kill()


def _config_record(bench):
  import keras
  import tensorflow as tf
  from simclr_tf.training import precision as precision_lib
  cfg = bench.config
  return {
      "measurement": "config",
      "resnet_depth": cfg.model.resnet_depth,
      "width_multiplier": cfg.model.width_multiplier,
      "image_size": cfg.data.image_size,
      "cifar_stem": cfg.model.use_cifar_stem(cfg.data.image_size),
      "global_batch": bench.batch,
      "views_per_step": bench.batch * bench.num_views,
      "precision": cfg.run.precision,
      "precision_resolved": precision_lib.resolve(cfg.run.precision),
      "jit_compile": cfg.run.jit_compile,
      "steps_per_loop": cfg.run.steps_per_loop,
      "augment_on_device": cfg.augment.on_device,
      "strategy": type(bench.strategy).__name__,
      "replicas": bench.replicas,
      "cpu_replicas": cfg.run.cpu_replicas,
      "dataset": cfg.data.dataset,
      "timed_steps": bench.steps,
      "repeats": bench.repeats,
      "cpu_count": os.cpu_count(),
      "tensorflow": tf.__version__,
      "keras": keras.__version__,
  }


def _format_table(rows, ratios, memory):
  width = max([34] + [len(name) + 1 for name in list(rows) + list(ratios)])
  lines = ["", f"{'measurement':<{width}} {'views/s':>10} {'views/CPU-s':>12}"
           "   runs (views/s)"]
  for name, row in rows.items():
    lines.append(f"{name:<{width}} {row['views_per_second']:>10.1f} "
                 f"{row['views_per_cpu_second']:>12.1f}   "
                 + " ".join(f"{r:.1f}" for r in row["runs"]))
  for name, (wall, cpu) in ratios.items():
    lines.append(f"{name:<{width}} {wall:>10.3f} {cpu:>12.3f}")
  host, device = memory
  lines.append(f"{'peak host memory':<{width}} {host / 2 ** 30:>10.2f} GiB")
  if isinstance(device, dict):
    device = ", ".join(f"{k} {v / 2 ** 30:.2f} GiB" for k, v in
                       device.items())
  lines.append(f"{'peak device memory':<{width}} {device:>10}")
  return "\n".join(lines)


def _groups(selected):
  """Measurements timed alternately, group by group."""
  groups = (("train_step", "handwritten_loop", "fit_in_memory"),
            ("input_tf_data", "input_on_device", "augment_on_device"),
            ("fit_end_to_end",))
  return [[name for name in group if name in selected] for group in groups]


def _backend():
  return FLAGS.backend or os.environ.get("KERAS_BACKEND", "tensorflow")


def main(argv):
  if len(argv) > 1:
    return _fail(f"unexpected arguments {argv[1:]}: flags look like "
                 "--name=value.")
  if _backend() != "tensorflow":
    return _main_keras_backend()
  unknown = set(_MEASURE.value) - set(MEASUREMENTS)
  if unknown:
    return _fail(f"--benchmark_measurements: unknown {sorted(unknown)}; "
                 f"choose from {', '.join(MEASUREMENTS)}.")
  for flag in (_STEPS, _REPEATS, _INPUT_BATCHES):
    if flag.value < 1:
      return _fail(f"--{flag.name} must be at least 1. Received: "
                   f"--{flag.name}={flag.value}")
  try:
    config = program_flags.config_from_flags().validate()
    variant = _variant_config(_VARIANT.value)
  except config_lib.ConfigError as error:
    return _fail(str(error))
  if _PEER.value is not None:
    message = check_peer_dir(_PEER.value)
    if message is None and config.run.train_mode != "pretrain":
      message = ("--peer_authors_dir times the authors' pretraining step "
                 "only. Received: train_mode="
                 f"{config.run.train_mode}")
    width = config.model.width_multiplier
    if message is None and width != int(width):
      message = ("--peer_authors_dir: the authors' code takes whole "
                 "width multipliers; pass --width_multiplier=1 or more. "
                 f"Received: width_multiplier={width}")
    if message:
      return _fail(message)
  # Library notices (tfds generating synthetic_shapes, its "custom data
  # configuration" warnings) would drown the JSON lines.
  absl_logging.set_verbosity(absl_logging.ERROR)
  logging.getLogger("tensorflow").setLevel(logging.ERROR)
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  from simclr_tf import data as data_lib
  from simclr_tf.training import distribute
  benches = {}
  try:
    # tfds prints while it generates synthetic_shapes: keep stdout JSON.
    with contextlib.redirect_stdout(sys.stderr):
      benches[""] = Benchmark(config, steps=_STEPS.value,
                              repeats=_REPEATS.value,
                              input_batches=_INPUT_BATCHES.value)
      if variant is not None:
        benches[",".join(_VARIANT.value)] = Benchmark(
            variant, steps=_STEPS.value, repeats=_REPEATS.value,
            input_batches=_INPUT_BATCHES.value,
            strategy=benches[""].strategy)
  except (config_lib.ConfigError, data_lib.DataError,
          distribute.StrategyError) as error:
    return _fail(str(error))
  peers = _peer_factories(benches[""], _MEASURE.value)
  try:
    for label, bench in benches.items():
      _emit({**_config_record(bench), "variant": label})
    try:
      rows = _measure(benches, _MEASURE.value, peers)
    except PeerError as error:
      return _fail(str(error))
    ratios = _ratios(benches, rows)
    memory = benches[""].memory()
    _emit({"measurement": "memory", "peak_host_bytes": memory[0],
           "peak_device_bytes": memory[1]})
  finally:
    for bench in benches.values():
      bench.close()
  print(_format_table(rows, ratios, memory), flush=True)
  return 0


def _main_keras_backend():
  """--backend=jax: our JAX step and the PyTorch peer (`jax_benchmark`)."""
  backend = _backend()
  if backend not in config_lib.BACKENDS:
    return _fail(f"--backend must be one of {', '.join(config_lib.BACKENDS)}."
                 f" Received: backend={backend!r}")
  os.environ["KERAS_BACKEND"] = backend
  from simclr_tf.tools import jax_benchmark
  measurements = _MEASURE.value
  if measurements == list(MEASUREMENTS):  # Left at the TF default.
    measurements = list(jax_benchmark.MEASUREMENTS)
  unknown = set(measurements) - set(jax_benchmark.MEASUREMENTS)
  if unknown:
    return _fail(f"--benchmark_measurements: on {backend}, choose from "
                 f"{', '.join(jax_benchmark.MEASUREMENTS)}. Received: "
                 f"{sorted(unknown)}")
  for flag in (_STEPS, _REPEATS):
    if flag.value < 1:
      return _fail(f"--{flag.name} must be at least 1. Received: "
                   f"--{flag.name}={flag.value}")
  if _PEER.value is not None or _VARIANT.value:
    return _fail("--peer_authors_dir and --benchmark_variant are "
                 "TensorFlow-backend features; on jax the PyTorch peer runs "
                 "in the same table.")
  try:
    config = program_flags.config_from_flags().validate()
  except config_lib.ConfigError as error:
    return _fail(str(error))
  if config.run.precision not in ("float32", "mixed_bfloat16"):
    return _fail("On jax, --precision is float32 or mixed_bfloat16. "
                 f"Received: precision={config.run.precision}")
  records = jax_benchmark.run(config, steps=_STEPS.value,
                              repeats=_REPEATS.value,
                              measurements=measurements,
                              peak_tflops=_PEAK_TFLOPS.value, emit=_emit)
  print(jax_benchmark.format_table(records, config), flush=True)
  return 0


def _peer_factories(bench, selected):
  """The authors' measurements to add, each with the one of ours it joins.

  Returns:
    A dict from measurement name to (our measurement, function starting an
    `AuthorsPeer`).
  """
  if _PEER.value is None:
    return {}
  config = bench.config
  factories = {}
  if "train_step" in selected:
    factories["authors_train_step"] = ("train_step", lambda: AuthorsPeer(
        _PEER.value, config, steps=bench.steps,
        num_classes=bench.info.num_classes,
        num_examples=bench.info.num_train_examples))
  if "fit_end_to_end" in selected:
    if config.data.dataset == "image_folder":
      folder = config.data.data_dir
      factories["authors_end_to_end"] = ("fit_end_to_end", lambda: AuthorsPeer(
          _PEER.value, config, steps=bench.steps,
          num_classes=bench.info.num_classes,
          num_examples=bench.info.num_train_examples, image_folder=folder))
    else:
      _emit({"measurement": "authors_end_to_end", "skipped":
             "needs --dataset=image_folder: the authors' pipeline reads "
             "tfds builders, and an image folder is the input both can "
             "read"})
  return factories


def _variant_config(overrides):
  """The configuration with `flag=value` overrides, or None for none."""
  if not overrides:
    return None
  saved = {}
  try:
    for override in overrides:
      name, _, value = override.partition("=")
      if name not in FLAGS or not _:
        raise config_lib.ConfigError(
            f"--benchmark_variant takes flag=value items of the training "
            f"program's flags. Received: {override!r}")
      if name in _FIXED_IN_VARIANT:
        raise config_lib.ConfigError(
            f"--benchmark_variant cannot change {name}: one process holds "
            "one strategy. Run the tool once per strategy.")
      saved.setdefault(name, FLAGS[name].value)
      try:
        FLAGS[name].parse(value)
      except flags.Error as error:
        raise config_lib.ConfigError(
            f"--benchmark_variant {override!r}: {error}") from None
    return program_flags.config_from_flags().validate()
  finally:
    for name, value in saved.items():
      FLAGS[name].value = value


def _ratios(benches, rows):
  """fit / baseline and pipeline / train step; variant / base each."""
  ratios = {}

  def add(label, numerator, denominator):
    if numerator in rows and denominator in rows:
      ratios[label] = tuple(
          rows[numerator][key] / rows[denominator][key]
          for key in ("views_per_second", "views_per_cpu_second"))
      _emit({"measurement": label, "ratio": round(ratios[label][0], 4),
             "cpu_ratio": round(ratios[label][1], 4)})

  for label, bench in benches.items():
    # The train step was measured on this configuration's path, so its
    # pipeline is the one to compare it with.
    pipeline = ("input_on_device" if bench.config.augment.on_device
                else "input_tf_data")
    for numerator, denominator in (("fit_in_memory", "handwritten_loop"),
                                   (pipeline, "train_step")):
      add(f"{numerator} / {denominator}{_suffix(label)}",
          _row(numerator, label), _row(denominator, label))
  for label in list(benches)[1:]:
    for name in MEASUREMENTS:
      add(f"{name}: variant / base", _row(name, label), name)
  for ours, authors in (("train_step", "authors_train_step"),
                        ("fit_end_to_end", "authors_end_to_end")):
    for label in benches:
      add(f"{_row(ours, label)} / {authors}", _row(ours, label), authors)
  return ratios


def _suffix(label):
  return f" [{label}]" if label else ""


def _row(name, label):
  return name + _suffix(label)


def _measure(benches, selected, peers=None):
  """Times each group's measurements alternately; emits one line each.

  Within a group every measurement of every configuration is timed once per
  round, so load from other processes spreads over all of them alike.

  Args:
    benches: `Benchmark`s by variant label.
    selected: measurement names.
    peers: from `_peer_factories`: the authors' measurements, each timed in
      the group of the one of ours it names.
  """
  rows = {}
  peers = peers or {}
  for group in _groups(selected):
    timers = {_row(name, label): getattr(bench, f"make_{name}")()
              for name in group for label, bench in benches.items()}
    started = []
    try:
      for name, (ours, start) in peers.items():
        if ours in group:
          started.append(start())
          timers[name] = started[-1].timed
      runs = {name: [] for name in timers}
      for _ in range(_REPEATS.value):
        for name, timed in timers.items():
          runs[name].append(timed())
    finally:
      for peer in started:
        peer.close()
    for name in timers:
      wall, cpu = zip(*runs[name])
      rows[name] = {"views_per_second": _median(wall),
                    "views_per_cpu_second": _median(cpu),
                    "runs": [round(r, 2) for r in wall]}
      _emit({"measurement": name,
             "views_per_second": round(_median(wall), 2),
             "views_per_cpu_second": round(_median(cpu), 2),
             "runs": [round(r, 2) for r in wall],
             "cpu_runs": [round(r, 2) for r in cpu]})
  return rows


def _parse_flags(argv):
  for name, value in _DEFAULTS.items():
    FLAGS.set_default(name, value)
  return cli.parse_flags(_with_preset_flagfile(argv), tool=TOOL)


def _with_preset_flagfile(argv):
  """`--preset=NAME` read as the program reads it. Unlike the program, a
  command line without it measures this tool's small default, not the
  demo."""
  try:
    return program_flags.argv_with_preset(argv, demo_by_default=False)
  except config_lib.ConfigError as error:
    sys.exit(cli.fail(str(error), tool=TOOL))


def entry():
  """Console-script entry point."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  entry()
