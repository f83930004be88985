"""tf.distribute helpers: replica queries and the cross-replica gather.

Of the library, only this module and the data/training plumbing touch
`tf.distribute` directly. Model and loss code calls `simclr_tf.replicas`,
which works on every Keras backend.
"""

import json
import os

import tensorflow as tf

from simclr_tf import replicas

# Environment variable MultiWorkerMirroredStrategy reads the cluster from.
TF_CONFIG = "TF_CONFIG"


# The replica queries that model and loss code use live in `replicas`, which
# works on every Keras backend; they are re-exported here for callers that
# already hold a strategy.
num_replicas_in_sync = replicas.num_replicas_in_sync
replica_id_in_sync_group = replicas.replica_id_in_sync_group
cross_replica_concat = replicas.cross_replica_concat


class StrategyError(ValueError):
  """A strategy that cannot be built here, with a message for the user."""


def split_cpu(num_devices: int) -> None:
  """Splits the host CPU into `num_devices` logical devices.

  Must run before TensorFlow initialises its devices (before the first op).

  Args:
    num_devices: logical CPU devices to create, >= 1.

  Raises:
    StrategyError: if TensorFlow already initialised its devices.
  """
  cpu = tf.config.list_physical_devices("CPU")[0]
  current = tf.config.get_logical_device_configuration(cpu)
  if current is not None and len(current) == num_devices:
    return
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
  except RuntimeError as error:
    raise StrategyError(
        f"Cannot split the CPU into {num_devices} devices: TensorFlow has "
        "already started. Set cpu_replicas before any TensorFlow work."
    ) from error


def build_strategy(strategy: str = "auto", *, tpu=None, cpu_replicas: int = 0):
  """Builds the tf.distribute strategy a run asks for.

  Args:
    strategy: "auto" (TPU if `tpu` is set, else mirrored over the GPUs or
      the `cpu_replicas` CPU devices if more than one, else one-device on a
      single GPU and the default strategy on a CPU), "one_device",
      "mirrored", "multi_worker" (cluster from the TF_CONFIG environment
      variable) or "tpu".
    tpu: TPU name or address (e.g. "local" on a TPU VM) for "tpu".
    cpu_replicas: if > 0, split the host CPU into this many logical devices
      and use them (for trying multi-replica runs without accelerators).

  Returns:
    A `tf.distribute.Strategy`.

  Raises:
    StrategyError: for an unknown name or a strategy that cannot be built.
  """
  if strategy == "multi_worker" and cpu_replicas > 1:
    # Each worker of MultiWorkerMirroredStrategy trains on its GPUs, or on
    # one CPU device: split logical CPUs would not be used.
    raise StrategyError(
        "cpu_replicas applies to one machine; with strategy=multi_worker "
        "each worker uses its GPUs or one CPU. Drop --cpu_replicas or start "
        f"more workers. Received: cpu_replicas={cpu_replicas}")
  if cpu_replicas > 0:
    split_cpu(cpu_replicas)
  if strategy == "auto":
    strategy = _auto_strategy_name(tpu, cpu_replicas)
  if strategy == "tpu":
    return _tpu_strategy(tpu)
  if strategy == "multi_worker":
    return _multi_worker_strategy(cpu_replicas)
  devices = _replica_devices(cpu_replicas)
  if strategy == "one_device":
    return tf.distribute.OneDeviceStrategy(devices[0])
  if strategy == "mirrored":
    return tf.distribute.MirroredStrategy(devices)
  if strategy == "default":
    return tf.distribute.get_strategy()
  raise StrategyError(
      "`strategy` must be one of auto, one_device, mirrored, multi_worker, "
      f"tpu. Received: strategy={strategy!r}")


def _replica_devices(cpu_replicas):
  gpus = tf.config.list_logical_devices("GPU")
  if gpus and not cpu_replicas:
    return [device.name for device in gpus]
  cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
  return cpus[:cpu_replicas] if cpu_replicas else cpus[:1]


def _auto_strategy_name(tpu, cpu_replicas):
  if tpu:
    return "tpu"
  devices = _replica_devices(cpu_replicas)
  if len(devices) > 1:
    return "mirrored"
  if tf.DeviceSpec.from_string(devices[0]).device_type != "CPU":
    # One accelerator: a one-device strategy prefetches the input batches to
    # it; the default strategy would copy them inside the step.
    return "one_device"
  # One CPU: the default strategy adds no distribution overhead.
  return "default"


def _tpu_strategy(tpu):
  if not tpu:
    raise StrategyError("strategy=tpu needs --tpu set to the TPU name or "
                        "address (--tpu=local on a TPU VM).")
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  # A name is looked up through the Cloud TPU API (an OSError such as
  # URLError when unreachable); ImportError if its client is missing.
  except (ValueError, RuntimeError, OSError, ImportError,
          tf.errors.OpError) as error:
    raise StrategyError(
        f"Cannot reach TPU {tpu!r}: {error}. Check the name, zone and that "
        "this machine can reach it (on a TPU VM use --tpu=local).") from error
  return tf.distribute.TPUStrategy(resolver)


def read_tf_config(environ=None):
  """Reads and checks the TF_CONFIG cluster description.

  Args:
    environ: the environment to read; None reads `os.environ`.

  Returns:
    The parsed TF_CONFIG: a dict with "cluster" (task type to list of
    "host:port") and "task" ({"type": ..., "index": ...}).

  Raises:
    StrategyError: if TF_CONFIG is missing or does not describe this task
      in a cluster.
  """
  environ = os.environ if environ is None else environ
  raw = environ.get(TF_CONFIG)
  if not raw:
    raise StrategyError(
        "strategy=multi_worker reads the cluster from the TF_CONFIG "
        "environment variable, which is not set. Set it on every worker "
        "(docs/scaling_out.md), or try it on one machine with "
        "tools/launch_local_cluster.py.")
  try:
    tf_config = json.loads(raw)
  except ValueError as error:
    raise StrategyError(f"TF_CONFIG is not valid JSON ({error}). "
                        f"Received: TF_CONFIG={raw!r}") from error
  cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
  task = tf_config.get("task") if isinstance(tf_config, dict) else None
  if not isinstance(cluster, dict) or not (cluster.get("worker") or
                                           cluster.get("chief")):
    raise StrategyError(
        "TF_CONFIG needs a \"cluster\" with a \"worker\" (or \"chief\") "
        f"list of host:port addresses. Received: TF_CONFIG={raw!r}")
  if not isinstance(task, dict) or task.get("type") not in cluster:
    raise StrategyError(
        "TF_CONFIG needs a \"task\" whose \"type\" is one of the cluster's "
        f"task types ({', '.join(sorted(cluster))}). Received: "
        f"TF_CONFIG={raw!r}")
  index = task.get("index", 0)
  if not isinstance(index, int) or not 0 <= index < len(
      cluster[task["type"]]):
    raise StrategyError(
        f"TF_CONFIG task index must be in [0, {len(cluster[task['type']])}) "
        f"for task type {task['type']!r}. Received: TF_CONFIG={raw!r}")
  return tf_config


def _multi_worker_strategy(cpu_replicas):
  del cpu_replicas  # Checked by build_strategy.
  read_tf_config()
  return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief_task(task_type, task_id, cluster) -> bool:
  """Whether a task is the chief, by TensorFlow's convention.

  The chief is the "chief" task if the cluster has one, else worker 0.

  Args:
    task_type: "chief", "worker", "evaluator", ... or None (no cluster).
    task_id: the task's index within its type.
    cluster: dict from task type to its addresses.

  Returns:
    True for the chief (and for a process that is not part of a cluster).
  """
  if task_type is None or task_type == "chief":
    return True
  return (task_type == "worker" and int(task_id or 0) == 0 and
          not (cluster or {}).get("chief"))


def is_chief(strategy) -> bool:
  """Whether this process writes the run's files (the only one that does).

  Under `MultiWorkerMirroredStrategy` every worker runs the same program,
  but only the chief writes checkpoints, summaries, results and exports into
  `model_dir`; the others write to temporary places (see `run_dir`). Every
  other strategy has one program, which is the chief.

  Args:
    strategy: a `tf.distribute.Strategy`.

  Returns:
    True if this process is the chief.
  """
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  resolver = strategy.cluster_resolver
  if resolver is None:
    return True
  return is_chief_task(resolver.task_type, resolver.task_id,
                       resolver.cluster_spec().as_dict())


def chiefs_value(strategy, value: int, *, is_chief: bool) -> int:
  """The chief's `value` on every process of a multi-worker job.

  A decision that must not depend on each worker's own view of the shared
  storage (which checkpoint to resume from) is taken by the chief and
  handed to the others by an all-reduce, which also makes them wait for it.

  Args:
    strategy: a `tf.distribute.Strategy`.
    value: this process's value; only the chief's counts. A non-negative
      integer below 2**52.
    is_chief: whether this process is the chief.

  Returns:
    The chief's value (this process's own under a single-process strategy).
  """
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return value
  if not 0 <= value < 2 ** 52:
    raise ValueError(f"value must be in [0, 2**52). Received: value={value}")
  # Each of the chief's local replicas carries an equal share; float64 sums
  # them exactly enough for the rounding below to give the integer back.
  local_replicas = len(strategy.extended.worker_devices)
  share = (value / local_replicas) if is_chief else 0.0
  shares = strategy.experimental_distribute_values_from_function(
      lambda context: tf.constant(share, tf.float64))
  total = strategy.reduce(tf.distribute.ReduceOp.SUM, shares, axis=None)
  return int(round(float(total.numpy())))


def task_name(strategy) -> str:
  """This process in a multi-worker cluster ("worker 1"), else ""."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return ""
  resolver = strategy.cluster_resolver
  if resolver is None or resolver.task_type is None:
    return ""
  return f"{resolver.task_type} {resolver.task_id}"


def run_directory(model_dir: str, strategy):
  """The `RunDirectory` of this process under `strategy`.

  The run directory is told the process's role in the cluster; it does not
  ask the strategy itself, so that storage stays below training.

  Args:
    model_dir: the run's directory.
    strategy: a `tf.distribute.Strategy`.

  Returns:
    A `simclr_tf.storage.run_dir.RunDirectory`.
  """
  from simclr_tf.storage import run_dir  # pylint: disable=g-import-not-at-top
  return run_dir.RunDirectory(model_dir, is_chief=is_chief(strategy),
                              task_name=task_name(strategy))


def summary_writer(run_dir):
  """A TensorBoard writer: events in `model_dir` on the chief only."""
  if run_dir.is_chief:
    return tf.summary.create_file_writer(run_dir.model_dir)
  return tf.summary.create_noop_writer()
