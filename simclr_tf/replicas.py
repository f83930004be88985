"""Replica queries and the cross-replica gather, on any Keras backend.

Model and loss code asks these three questions and never imports a
distribution library itself:

- TensorFlow: `tf.distribute` replicas. Each replica's step sees its own
  slice of the global batch, so the loss gathers the other replicas' views
  (NT-Xent negatives) and the gradients are summed across replicas.
- JAX (and any other backend): one program over the global batch.
  `keras.distribution.DataParallel` shards that batch over the devices
  inside the compiled step, and the step's reductions (the loss, BatchNorm's
  statistics) already span every shard. So there is one logical replica
  and nothing to gather.
"""

import keras
from keras import ops


def _tf_distribute():
  if keras.backend.backend() != "tensorflow":
    return None
  import tensorflow as tf  # Only on the TensorFlow backend.
  return tf.distribute


def num_replicas_in_sync() -> int:
  """Replicas whose gradients are summed (1 outside any strategy and on JAX)."""
  distribute = _tf_distribute()
  if distribute is None:
    return 1
  return distribute.get_strategy().num_replicas_in_sync


def replica_id_in_sync_group():
  """This replica's index within the sync group, as an int32 tensor."""
  distribute = _tf_distribute()
  context = None if distribute is None else distribute.get_replica_context()
  if context is None:
    return ops.convert_to_tensor(0, "int32")
  # Some strategies give a uint32 tensor, others a Python int.
  return ops.cast(context.replica_id_in_sync_group, "int32")


def cross_replica_concat(tensor):
  """Concatenates `tensor` from every replica along axis 0.

  Within a TensorFlow replica context with several replicas the result is
  the global batch, ordered by replica id, on every replica. Gradients flow
  back to each replica's own slice (`ReplicaContext.all_gather` defines
  them), so a loss on the gathered tensor trains every replica's encoder.
  Elsewhere, JAX included, the tensor already is the global batch and is
  returned as it is.

  Args:
    tensor: a (batch, ...) tensor local to this replica.

  Returns:
    The (num_replicas * batch, ...) tensor.
  """
  distribute = _tf_distribute()
  context = None if distribute is None else distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync <= 1:
    return tensor
  return context.all_gather(tensor, axis=0)
