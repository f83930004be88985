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
