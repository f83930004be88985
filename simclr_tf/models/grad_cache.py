"""Cached-gradient pretraining steps: the batch in K chunks, exact gradients.

The contrastive loss couples every view of the batch, so its gradient seems
to need the whole batch's activations at once. It does not: with z the
network's outputs (projections, and the supervised head's logits),

  dL/dtheta = sum over chunks k of (dL/dz_k) . (dz_k/dtheta),

and dL/dz is cheap once z is known. A step then runs (Gao et al. 2021,
"Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup",
arXiv:2101.06983):

1. pass 1: the network on each chunk, training mode, without a tape,
   keeping only z;
2. the loss on all of z, reassembled in the batch's [view 1; view 2] order,
   with a tape on z alone: dL/dz (and the weight-decay term's gradient);
3. pass 2: per chunk, the network again under a tape, backpropagating the
   surrogate sum(z_k * stop_gradient(dL/dz_k)); the chunks' weight
   gradients add up to the full batch's.

Chunk k holds view 1 of image group k and view 2 of group (k + 1) mod K
(`chunk_rows`), so no chunk holds both views of an image: BatchNorm, which
normalises each chunk with that chunk's statistics, cannot leak the
positive pair through them. The gradients are exactly those of a batch
whose BatchNorm batches are these chunks. The moving averages get one
update per step, towards the mean of pass 2's chunk statistics; pass 1
updates nothing (`batch_norm.deferred_moving_updates`).

Under a distribution strategy every replica chunks its own batch; the loss
still gathers negatives from every replica, and with synchronised
BatchNorm the statistics of chunk k are over chunk k of every replica.

TensorFlow only (gradient tapes).
"""

import numpy as np

from simclr_tf import replicas
from simclr_tf.models import batch_norm as batch_norm_lib


def chunk_rows(batch_size: int, num_chunks: int) -> np.ndarray:
  """The rows of the [view 1; view 2] batch that each chunk holds.

  With B images in G = B / K groups of consecutive images, chunk k is view
  1 of group k followed by view 2 of group (k + 1) mod K. Rows [0, B) of
  the 2B batch are view 1, rows [B, 2B) view 2.

  Args:
    batch_size: B, the images of the (per-replica) batch.
    num_chunks: K, which must divide B.

  Returns:
    An int64 array (K, 2B / K): row r of the 2B batch is at `[k, j]` for
    exactly one (k, j).

  Raises:
    ValueError: K < 1 or K not dividing B.
  """
  if num_chunks < 1 or batch_size % num_chunks:
    raise ValueError(f"`grad_cache_chunks` must divide the per-replica batch "
                     f"of {batch_size}. Received: grad_cache_chunks="
                     f"{num_chunks}")
  group = batch_size // num_chunks
  rows = []
  for k in range(num_chunks):
    view_1 = np.arange(k * group, (k + 1) * group)
    following = (k + 1) % num_chunks
    view_2 = batch_size + np.arange(following * group,
                                    (following + 1) * group)
    rows.append(np.concatenate([view_1, view_2]))
  return np.stack(rows).astype(np.int64)


def reassembly_order(batch_size: int, num_chunks: int) -> np.ndarray:
  """Where each row of the [view 1; view 2] batch sits in the chunks' output.

  Args:
    batch_size: B.
    num_chunks: K.

  Returns:
    An int64 array (2B,): gathering the chunks' outputs, concatenated in
    chunk order, at these indices gives them in [view 1; view 2] order.
  """
  return np.argsort(chunk_rows(batch_size, num_chunks).reshape(-1),
                    kind="stable")


def _after(tensors, value):
  """`value`, computed only once `tensors` are (bounds peak memory)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tensors = [t for t in tensors if t is not None]
  if not tensors:
    return value
  with tf.control_dependencies(tensors):
    return tf.identity(value)


def _add(total, more):
  if total is None:
    return more
  if more is None:
    return total
  return total + more


def cached_gradients(model, images, labels, num_chunks: int, output_keys):
  """The loss terms and weight gradients of one chunked training step.

  This replica's gradients, as one `GradientTape` over the whole batch would
  give them for a network whose BatchNorm batches are the chunks: not yet
  summed over replicas, of the loss divided by the replicas and scaled by
  the optimizer's loss scale, as `SimCLRModel._tf_train_step` takes them.

  Args:
    model: a pretraining `SimCLRModel` with its optimizer; called on chunks
      of (2B / K, H, W, 3) views, its `compute_losses` on the reassembled
      outputs.
    images: (B, H, W, 6) two views per image; B must be static.
    labels: (B, C) one-hot labels (all-zero rows: unlabeled).
    num_chunks: K > 1, dividing B.
    output_keys: the keys of `model`'s outputs the loss reads (the
      projections and, with a supervised head, its logits): cached
      between the passes.

  Returns:
    (terms, gradients, variables): `compute_losses`' terms on the whole
    batch, and the gradients of `model.trainable_variables` (None where a
    variable has none), in that order.

  Raises:
    ValueError: a dynamic batch size, or K not dividing it.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  batch_size = images.shape[0]
  if batch_size is None:
    raise ValueError("`grad_cache_chunks` needs training batches of a static "
                     "size (drop_remainder=True). Received: images.shape="
                     f"{tuple(images.shape)}")
  rows = chunk_rows(batch_size, num_chunks)
  order = reassembly_order(batch_size, num_chunks)
  views = tf.concat([images[..., :3], images[..., 3:]], axis=0)
  chunks = [tf.gather(views, chunk) for chunk in rows]
  layers = batch_norm_lib.batch_norm_layers(model)
  variables = model.trainable_variables

  # Pass 1: outputs only; the moving averages are held back and dropped.
  cached = []
  with batch_norm_lib.deferred_moving_updates(layers):
    for chunk in chunks:
      chunk = _after(cached[-1] if cached else [], chunk)
      outputs = model(chunk, training=True)
      cached.append([tf.stop_gradient(outputs[key]) for key in output_keys])
  whole = {key: tf.gather(tf.concat([each[i] for each in cached], 0), order)
           for i, key in enumerate(output_keys)}

  # The loss on the whole batch: gradients of the outputs, and of the
  # weights through the weight-decay term (the only path to them here).
  with tf.GradientTape() as tape:
    tape.watch(list(whole.values()))
    terms = model.compute_losses(images, labels, whole)
    loss = terms["total_loss"] / replicas.num_replicas_in_sync()
    loss = model.optimizer.scale_loss(loss)
  found = tape.gradient(loss, [whole[key] for key in output_keys] + variables)
  output_gradients = found[:len(output_keys)]
  gradients = list(found[len(output_keys):])

  # Pass 2: each chunk again, under its own tape, through the surrogate.
  with batch_norm_lib.deferred_moving_updates(layers) as held:
    for chunk_index, chunk in enumerate(chunks):
      chunk = _after(gradients, chunk)
      with tf.GradientTape() as tape:
        outputs = model(chunk, training=True)
        surrogate = 0.0
        for key, gradient in zip(output_keys, output_gradients):
          if gradient is None:
            continue
          upstream = tf.gather(gradient, rows[chunk_index])
          surrogate += tf.reduce_sum(
              tf.cast(outputs[key], tf.float32) *
              tf.cast(tf.stop_gradient(upstream), tf.float32))
      gradients = [_add(total, more) for total, more in
                   zip(gradients, tape.gradient(surrogate, variables))]
  for layer, statistics in held:
    if statistics:
      means, variances = zip(*statistics)
      layer.update_moving_statistics(tf.add_n(means) / len(means),
                                     tf.add_n(variances) / len(variances))
  return terms, gradients, variables
