"""`benchmark --backend=jax`: the SimCLR step on Keras' JAX backend, with
the PyTorch peer in the same run.

Every measurement runs on synthetic, device-resident batches, so it times
the step and not the input:

  keras_jax_train_step      Keras' JAX `train_step` of our `SimCLRModel`
                            (forward, NT-Xent, backward, LARS), jitted as
                            `fit` jits it, on float views (B, S, S, 6).
  keras_jax_augment_and_step the same with the on-device augmentation
                            (crop, resize, flip, colour, blur) of uint8
                            images inside the step.
  torch_eager               the PyTorch peer (`torch_peer`): same ResNet
                            layout, head and loss; SGD; channels-last.
  torch_compile             the same step under `torch.compile`.

Each is timed `repeats` times, alternating between them run by run so that
load from other processes hits all alike; the median is reported, with the
step time and, where the chip's peak is known (or given), the model FLOP
utilisation.

FLOPs are XLA's count for our compiled train step (`cost_analysis`, a
multiply-add counts 2): forward, backward and the optimizer, for the step's
2B views. The same count is used for the peer, which runs the same network.
MFU = FLOPs per step / step time / peak FLOP/s.
"""

import json
import statistics
import time
from typing import Callable, Dict, List, Optional

# Dense bfloat16 / float32 peaks of accelerators, TFLOP/s (vendor figures).
PEAK_TFLOPS = {
    "H100": {"bfloat16": 989.0, "float32": 67.0},
    "H200": {"bfloat16": 989.0, "float32": 67.0},
    "A100": {"bfloat16": 312.0, "float32": 19.5},
}
MEASUREMENTS = ("keras_jax_train_step", "keras_jax_augment_and_step",
                "torch_eager", "torch_compile")


def _median(values):
  return statistics.median(values) if values else float("nan")


class _KerasJaxStep:
  """Our model's jitted JAX train step on one device-resident batch."""

  def __init__(self, config, *, augment: bool):
    import jax
    import keras
    import numpy as np
    from simclr_tf.augment import batched as device_augment
    from simclr_tf import optimizers
    from simclr_tf.models import simclr

    run = config.run
    size = config.data.image_size
    batch = run.train_batch_size
    keras.utils.set_random_seed(run.seed)
    self.model = simclr.build_simclr_model(
        config.model, image_size=size, num_classes=10, train_mode="pretrain",
        with_supervised_head=run.lineareval_while_pretraining,
        temperature=config.loss.temperature,
        weight_decay=config.optimizer.weight_decay,
        optimizer_name=config.optimizer.optimizer)
    optimizer = optimizers.build_optimizer(config.optimizer, 0.1)
    augmentation = None
    if augment:
      augmentation = device_augment.train_augmentation(
          size, config.augment, 2, run.seed, crop=True)
    self.model.compile(optimizer, train_augmentation=augmentation)
    self.model.optimizer.build(self.model.trainable_variables)
    rng = np.random.default_rng(0)
    if augment:
      images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    else:
      images = rng.uniform(size=(batch, size, size, 6)).astype(np.float32)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
    # Device-resident, and sharded as `fit` would shard it.
    distribution = keras.distribution.distribution()
    if distribution is not None:
      layout = distribution.get_data_layout(images.shape)
      images = jax.device_put(images, layout.backend_layout)
      layout = distribution.get_data_layout(labels.shape)
      labels = jax.device_put(labels, layout.backend_layout)
    else:
      images, labels = jax.device_put(images), jax.device_put(labels)
    self.data = (images, labels)
    model = self.model
    self.state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables])
    self._step = jax.jit(model.train_step, donate_argnums=0)
    self.flops = self._count_flops(jax)
    self.views_per_step = 2 * batch

  def _count_flops(self, jax) -> Optional[float]:
    try:
      compiled = jax.jit(self.model.train_step).lower(
          self.state, self.data).compile()
      analysis = compiled.cost_analysis()
    except Exception:  # Backends without a cost model.
      return None
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None

  def time_steps(self, steps: int) -> float:
    import jax
    start = time.perf_counter()
    logs = None
    for _ in range(steps):
      logs, self.state = self._step(self.state, self.data)
    jax.block_until_ready(logs)
    return time.perf_counter() - start


def _torch_peer(config, *, compiled: bool):
  from simclr_tf.tools import torch_peer
  run = config.run
  return torch_peer.TorchPeer(
      depth=config.model.resnet_depth,
      width_multiplier=config.model.width_multiplier,
      cifar_stem=config.model.use_cifar_stem(config.data.image_size),
      image_size=config.data.image_size, batch_size=run.train_batch_size,
      out_dim=config.model.proj_out_dim,
      temperature=config.loss.temperature,
      bfloat16=run.precision == "mixed_bfloat16", compiled=compiled)


def _device_name() -> str:
  import jax
  device = jax.devices()[0]
  return f"{device.platform}:{getattr(device, 'device_kind', '')}"


def _peak_flops(precision: str, given_tflops: Optional[float]):
  if given_tflops:
    return given_tflops * 1e12
  name = _device_name()
  dtype = "bfloat16" if precision == "mixed_bfloat16" else "float32"
  for chip, peaks in PEAK_TFLOPS.items():
    if chip in name:
      return peaks[dtype] * 1e12
  return None


def run(config, *, steps: int, repeats: int,
        measurements=MEASUREMENTS, peak_tflops: Optional[float] = None,
        emit: Callable[[dict], None] = None) -> List[dict]:
  """Times the selected measurements; returns one record each.

  Args:
    config: the `ExperimentConfig` to time (model, image size, batch,
      precision).
    steps: steps per timed run.
    repeats: timed runs per measurement (the median is reported).
    measurements: names from `MEASUREMENTS`.
    peak_tflops: the chip's peak, for MFU where it is not in `PEAK_TFLOPS`.
    emit: called with each record as it is final (e.g. to print it).

  Returns:
    The records, in `measurements` order.
  """
  import keras
  emit = emit or (lambda record: print(json.dumps(record), flush=True))
  keras.config.set_dtype_policy(config.run.precision)
  devices = keras.distribution.list_devices()
  if len(devices) > 1:
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices))
  runners, errors = {}, {}
  for name in measurements:
    try:
      if name == "keras_jax_train_step":
        runners[name] = _KerasJaxStep(config, augment=False)
      elif name == "keras_jax_augment_and_step":
        runners[name] = _KerasJaxStep(config, augment=True)
      elif name in ("torch_eager", "torch_compile"):
        runners[name] = _torch_peer(config, compiled=name == "torch_compile")
      else:
        raise ValueError(f"unknown measurement {name!r}; choose from "
                         f"{', '.join(MEASUREMENTS)}")
    except ImportError as error:
      errors[name] = f"not installed: {error}"
  flops = next((r.flops for r in runners.values()
                if getattr(r, "flops", None)), None)
  # The first run of each compiles; it is not timed.
  for name, runner in list(runners.items()):
    try:
      runner.time_steps(2)
    except Exception as error:  # A peer that cannot run here is reported.
      errors[name] = f"{type(error).__name__}: {str(error)[:200]}"
      del runners[name]
  seconds: Dict[str, List[float]] = {name: [] for name in runners}
  for _ in range(repeats):
    for name, runner in runners.items():
      seconds[name].append(runner.time_steps(steps))
  views = 2 * config.run.train_batch_size
  peak = _peak_flops(config.run.precision, peak_tflops)
  records = []
  for name in measurements:
    record = {"measurement": name, "backend": "jax" if name.startswith(
        "keras") else "torch", "device": _device_name(),
        "precision": config.run.precision}
    if name in errors:
      record["error"] = errors[name]
    elif name in seconds:
      step_time = _median(seconds[name]) / steps
      record.update(views_per_second=views / step_time,
                    step_seconds=step_time,
                    runs_views_per_second=[views * steps / s
                                           for s in seconds[name]])
      # Our step's own count; the peer runs the same network, so it is
      # given our train step's.
      own = getattr(runners[name], "flops", None) or flops
      if own:
        record["step_tflops"] = own / 1e12
        record["mfu"] = (own / step_time / peak) if peak else None
      if hasattr(runners[name], "describe"):
        record.update(runners[name].describe())
    records.append(record)
    emit(record)
  return records


def format_table(records, config) -> str:
  """The records as one table, ratios to our train step last."""
  model = config.model
  lines = ["", f"SimCLR step, ResNet-{model.resnet_depth} "
           f"x{model.width_multiplier:g}, {config.data.image_size} px, "
           f"batch {config.run.train_batch_size} "
           f"({2 * config.run.train_batch_size} views), "
           f"{config.run.precision}, medians",
           f"{'implementation':<28} {'views/s':>10} {'step ms':>9} "
           f"{'MFU':>7}  vs keras_jax_train_step"]
  ours = next((r for r in records if r["measurement"] ==
               "keras_jax_train_step" and "views_per_second" in r), None)
  for record in records:
    name = record["measurement"]
    if "error" in record:
      lines.append(f"{name:<28} {record['error']}")
      continue
    mfu = record.get("mfu")
    ratio = (record["views_per_second"] / ours["views_per_second"]
             if ours else float("nan"))
    lines.append(f"{name:<28} {record['views_per_second']:>10.1f} "
                 f"{1000 * record['step_seconds']:>9.1f} "
                 f"{(f'{100 * mfu:.1f}%' if mfu else 'n/a'):>7}  "
                 f"{ratio:.2f}x")
  return "\n".join(lines)
