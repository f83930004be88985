"""tf.distribute helpers: replica queries and the cross-replica gather.

Of the library, only this module and the data/training plumbing touch
`tf.distribute` directly; model and loss code calls these helpers.
"""

import tensorflow as tf


def num_replicas_in_sync() -> int:
  """Replicas that train in lock-step (1 outside any strategy)."""
  return tf.distribute.get_strategy().num_replicas_in_sync


def replica_id_in_sync_group():
  """This replica's index within the sync group, as an int32 tensor."""
  context = tf.distribute.get_replica_context()
  if context is None:
    return tf.constant(0, tf.int32)
  replica_id = context.replica_id_in_sync_group
  # Some strategies give a uint32 tensor, others a Python int.
  return tf.cast(replica_id, tf.int32)


def cross_replica_concat(tensor: tf.Tensor) -> tf.Tensor:
  """Concatenates `tensor` from every replica along axis 0.

  Within a replica context with several replicas the result is the global
  batch, ordered by replica id, on every replica. Gradients flow back to each
  replica's own slice (`ReplicaContext.all_gather` defines them), so a loss on
  the gathered tensor trains every replica's encoder. Elsewhere the tensor is
  returned as it is.

  Args:
    tensor: a (batch, ...) tensor local to this replica.

  Returns:
    The (num_replicas * batch, ...) tensor.
  """
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync <= 1:
    return tensor
  return context.all_gather(tensor, axis=0)


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
  if cpu_replicas > 0:
    split_cpu(cpu_replicas)
  if strategy == "auto":
    strategy = _auto_strategy_name(tpu, cpu_replicas)
  if strategy == "tpu":
    return _tpu_strategy(tpu)
  if strategy == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
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
  except (ValueError, RuntimeError, tf.errors.OpError) as error:
    raise StrategyError(
        f"Cannot reach TPU {tpu!r}: {error}. Check the name, zone and that "
        "this machine can reach it (on a TPU VM use --tpu=local).") from error
  return tf.distribute.TPUStrategy(resolver)
