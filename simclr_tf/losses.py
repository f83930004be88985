"""NT-Xent contrastive loss and the supervised loss.

The math is written with `keras.ops` and runs on every Keras backend; the
cross-replica gather is `simclr_tf.replicas`'s.
"""

import keras
from keras import ops

from simclr_tf import replicas

# Added to the logits of an anchor against itself so softmax gives it ~0
# probability; the authors' value, kept so logits compare one to one.
LARGE_NUM = 1e9


def contrastive_loss(hidden, *, temperature: float, hidden_norm: bool = True):
  """NT-Xent loss over the two views in `hidden`, with global negatives.

  For each anchor the positive is the other view of the same image and the
  negatives are the other 2(N - 1) views of the global batch of N images.
  Within a replica context of R > 1 replicas, views are gathered from every
  replica, so negatives span the global batch.

  The value is the authors' `add_contrastive_loss`: the per-example sum of the
  view-1 -> view-2 and view-2 -> view-1 cross-entropies, averaged over this
  replica's examples. That is twice the paper's L (which averages over all
  2N anchors); learning rates from the paper and the authors' code assume this
  scale.

  Args:
    hidden: (2B, d) projections; rows [0, B) are view 1 and rows [B, 2B) are
      view 2 of the same B images.
    temperature: softmax temperature tau, > 0.
    hidden_norm: L2-normalise rows first (cosine similarity).

  Returns:
    A tuple `(loss, logits_ab, labels)`:
      loss: scalar float32.
      logits_ab: (B, R * B) view-1 x view-2 similarities over the global
        batch, divided by the temperature.
      labels: (B, 2 * R * B) one-hot; the positive of local example i is
        column replica_id * B + i.

  Raises:
    ValueError: for a non-positive temperature, a non-2D input, or a batch
      that does not split into two views.
  """
  if temperature <= 0:
    raise ValueError(
        f"`temperature` must be positive. Received: temperature={temperature}")
  if len(hidden.shape) != 2:
    raise ValueError("`hidden` must be (2 * batch, dim). Received: "
                     f"hidden.shape={tuple(hidden.shape)}")
  if hidden.shape[0] is not None and hidden.shape[0] % 2:
    raise ValueError("`hidden` must hold two views of each image, so an even "
                     f"number of rows. Received: hidden.shape="
                     f"{tuple(hidden.shape)}")
  # Softmax and log over many negatives are unsafe in half precision.
  hidden = ops.cast(hidden, "float32")
  if hidden_norm:
    hidden = hidden / ops.sqrt(
        ops.maximum(ops.sum(ops.square(hidden), axis=-1, keepdims=True),
                    1e-12))
  hidden1, hidden2 = ops.split(hidden, 2, axis=0)
  batch_size = ops.shape(hidden1)[0]

  hidden1_large = replicas.cross_replica_concat(hidden1)
  hidden2_large = replicas.cross_replica_concat(hidden2)
  enlarged_batch_size = ops.shape(hidden1_large)[0]
  local_index = (ops.arange(batch_size, dtype="int32") +
                 replicas.replica_id_in_sync_group() * batch_size)
  labels = ops.one_hot(local_index, 2 * enlarged_batch_size)
  self_mask = ops.one_hot(local_index, enlarged_batch_size)

  inv_temperature = 1.0 / temperature
  logits_aa = ops.matmul(hidden1, ops.transpose(hidden1_large))
  logits_aa = logits_aa * inv_temperature - self_mask * LARGE_NUM
  logits_bb = ops.matmul(hidden2, ops.transpose(hidden2_large))
  logits_bb = logits_bb * inv_temperature - self_mask * LARGE_NUM
  logits_ab = ops.matmul(hidden1, ops.transpose(hidden2_large)) * inv_temperature
  logits_ba = ops.matmul(hidden2, ops.transpose(hidden1_large)) * inv_temperature

  loss_a = keras.losses.categorical_crossentropy(
      labels, ops.concatenate([logits_ab, logits_aa], axis=1), from_logits=True)
  loss_b = keras.losses.categorical_crossentropy(
      labels, ops.concatenate([logits_ba, logits_bb], axis=1), from_logits=True)
  loss = ops.mean(loss_a + loss_b)
  return loss, logits_ab, labels


def contrastive_accuracy(logits_ab, labels):
  """Per-example 1.0 where the positive has the highest view-1 x view-2 logit.

  Args:
    logits_ab: (B, R * B) logits from `contrastive_loss`.
    labels: (B, 2 * R * B) labels from `contrastive_loss`.

  Returns:
    A (B,) float32 tensor of 0/1.
  """
  return ops.cast(
      ops.equal(ops.argmax(labels, axis=1), ops.argmax(logits_ab, axis=1)),
      "float32")


def contrastive_entropy(logits_ab):
  """Mean entropy of the softmax over `logits_ab` rows (authors' metric).

  Args:
    logits_ab: (B, R * B) logits from `contrastive_loss`.

  Returns:
    A scalar float32.
  """
  probabilities = ops.softmax(ops.cast(logits_ab, "float32"), axis=-1)
  return -ops.mean(
      ops.sum(probabilities * ops.log(probabilities + 1e-8), axis=-1))


def supervised_loss(labels, logits, mask=None):
  """Mean softmax cross-entropy against one-hot labels.

  Args:
    labels: (B, C) one-hot; an all-zero row means "no label".
    logits: (B, C) logits.
    mask: optional (B,) weights; unlabeled rows should get 0.

  Returns:
    A scalar float32: the (masked) mean over examples, 0 when nothing is
    labeled.
  """
  losses = keras.losses.categorical_crossentropy(
      ops.cast(labels, "float32"), ops.cast(logits, "float32"),
      from_logits=True)
  if mask is None:
    return ops.mean(losses)
  mask = ops.cast(mask, "float32")
  return ops.sum(losses * mask) / ops.maximum(ops.sum(mask), 1.0)
