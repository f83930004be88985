"""The pretraining losses (NT-Xent and the paper's Table 2 variants), the
supervised loss and SimCLRv2's distillation loss.

The math is written with `keras.ops` and runs on every Keras backend; the
cross-replica gather is `simclr_tf.replicas`'s.
"""

import functools

import keras
from keras import ops

from simclr_tf import replicas

# Added to the logits of an anchor against itself so softmax gives it ~0
# probability; the authors' value, kept so logits compare one to one.
LARGE_NUM = 1e9

# `pretraining_loss` types (the paper's Table 2).
NT_XENT = "nt_xent"
NT_LOGISTIC = "nt_logistic"
MARGIN_TRIPLET = "margin_triplet"
LOSS_TYPES = (NT_XENT, NT_LOGISTIC, MARGIN_TRIPLET)


def _check_hidden(hidden, temperature):
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


def _float32_rows(hidden, hidden_norm):
  # Softmax and log over many negatives are unsafe in half precision.
  hidden = ops.cast(hidden, "float32")
  if hidden_norm:
    hidden = hidden / ops.sqrt(
        ops.maximum(ops.sum(ops.square(hidden), axis=-1, keepdims=True),
                    1e-12))
  return hidden


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
  _check_hidden(hidden, temperature)
  hidden = _float32_rows(hidden, hidden_norm)
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


def pretraining_loss(hidden, *, loss_type: str = NT_XENT, temperature: float,
                     hidden_norm: bool = True,
                     semihard_negatives: bool = False, margin: float = 0.4):
  """The pretraining loss of `loss_type`, with global negatives.

  The three losses of the paper's Table 2 (arXiv:2002.05709), over the same
  anchors, positives and negatives as `contrastive_loss`: for each of the 2N
  views of the global batch, the positive is the other view of its image
  and the negatives are the other 2(N - 1) views, gathered from every
  replica. With s(u, v) the (cosine, with `hidden_norm`) similarity:

  - nt_xent: `contrastive_loss` itself, called as it is.
  - nt_logistic: per (anchor u, negative v-) triplet,
    -log sigmoid(s(u, v+) / tau) - log sigmoid(-s(u, v-) / tau).
  - margin_triplet: per triplet, max(s(u, v-) - s(u, v+) + margin, 0).

  Table 2 gives each per triplet; it fixes no weighting over negatives. We
  average each anchor's triplets over its negatives (so the positive term of
  nt_logistic counts once per anchor, as in NT-Xent) and then sum the two
  directions and average over examples as `contrastive_loss` does: the
  same scale convention (twice the mean over the 2N anchors). A global batch
  of one image has no negatives and gives 0 for these two.

  Semi-hard mining (section 5.1, after FaceNet): each anchor averages only
  over the negatives farther than its positive, s(u, v-) < s(u, v+), and for
  margin_triplet also within the margin, s(u, v-) > s(u, v+) - margin (those
  whose loss term is non-zero). An anchor with no such negative uses its
  single least similar negative instead, as TensorFlow's
  `triplet_semihard_loss` takes the farthest negative when none is farther
  than the positive; for margin_triplet that term is 0 unless every negative
  is harder than the positive.

  Args:
    hidden: (2B, d) projections; rows [0, B) are view 1 and rows [B, 2B) are
      view 2 of the same B images.
    loss_type: one of `LOSS_TYPES`.
    temperature: tau, > 0: NT-Xent's and NT-Logistic's scale. margin_triplet
      ignores it except in the returned logits.
    hidden_norm: L2-normalise rows first (cosine similarity, as Table 2).
    semihard_negatives: mine semi-hard negatives (not for nt_xent).
    margin: m of margin_triplet, >= 0; the other losses ignore it.

  Returns:
    `(loss, logits_ab, labels)` as `contrastive_loss` returns them, so
    `contrastive_accuracy` and `contrastive_entropy` apply to every type:
    logits_ab are the view-1 x view-2 similarities over the global batch
    divided by the temperature.

  Raises:
    ValueError: for an unknown `loss_type`, semi-hard mining with nt_xent, a
      negative margin, or the arguments `contrastive_loss` refuses.
  """
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"`loss_type` must be one of {', '.join(LOSS_TYPES)}. "
                     f"Received: loss_type={loss_type!r}")
  if semihard_negatives and loss_type == NT_XENT:
    raise ValueError("`semihard_negatives` applies to nt_logistic and "
                     "margin_triplet only. Received: loss_type=nt_xent, "
                     "semihard_negatives=True")
  if margin < 0:
    raise ValueError(f"`margin` must be >= 0. Received: margin={margin}")
  if loss_type == NT_XENT:
    # The default path is NT-Xent's own code, so its values do not move.
    return contrastive_loss(hidden, temperature=temperature,
                            hidden_norm=hidden_norm)
  _check_hidden(hidden, temperature)
  hidden = _float32_rows(hidden, hidden_norm)
  hidden1, hidden2 = ops.split(hidden, 2, axis=0)
  batch_size = ops.shape(hidden1)[0]

  hidden1_large = replicas.cross_replica_concat(hidden1)
  hidden2_large = replicas.cross_replica_concat(hidden2)
  enlarged_batch_size = ops.shape(hidden1_large)[0]
  local_index = (ops.arange(batch_size, dtype="int32") +
                 replicas.replica_id_in_sync_group() * batch_size)
  labels = ops.one_hot(local_index, 2 * enlarged_batch_size)
  self_mask = ops.one_hot(local_index, enlarged_batch_size)
  # Columns [other view | same view]: everything but the positive (in the
  # first half) and the anchor itself (in the second) is a negative.
  negatives = 1.0 - ops.concatenate([self_mask, self_mask], axis=1)

  sim_ab = ops.matmul(hidden1, ops.transpose(hidden2_large))
  sim_aa = ops.matmul(hidden1, ops.transpose(hidden1_large))
  sim_ba = ops.matmul(hidden2, ops.transpose(hidden1_large))
  sim_bb = ops.matmul(hidden2, ops.transpose(hidden2_large))
  per_anchor = functools.partial(
      _triplet_mean, negatives=negatives, loss_type=loss_type,
      temperature=temperature, semihard_negatives=semihard_negatives,
      margin=margin)
  loss_a = per_anchor(ops.concatenate([sim_ab, sim_aa], axis=1),
                      ops.sum(sim_ab * self_mask, axis=1))
  loss_b = per_anchor(ops.concatenate([sim_ba, sim_bb], axis=1),
                      ops.sum(sim_ba * self_mask, axis=1))
  loss = ops.mean(loss_a + loss_b)
  return loss, sim_ab * (1.0 / temperature), labels


def _triplet_mean(similarities, positive, *, negatives, loss_type,
                  temperature, semihard_negatives, margin):
  """Per anchor (row), the mean of its triplet terms over its negatives.

  Args:
    similarities: (B, 2 * R * B) anchor x candidate similarities.
    positive: (B,) each anchor's similarity to its positive.
    negatives: (B, 2 * R * B) 1.0 where the candidate is a negative.
    loss_type, temperature, semihard_negatives, margin: as
      `pretraining_loss`.

  Returns:
    (B,) per-anchor losses.
  """
  positive = positive[:, None]
  if loss_type == NT_LOGISTIC:
    # -log sigmoid(x) = softplus(-x), stable for large |x|.
    terms = (ops.softplus(-positive / temperature) +
             ops.softplus(similarities / temperature))
    window = similarities < positive
  else:
    terms = ops.relu(similarities - positive + margin)
    window = ops.logical_and(similarities < positive,
                             similarities > positive - margin)
  weights = negatives
  if semihard_negatives:
    semihard = negatives * ops.cast(window, "float32")
    least_similar = ops.argmin(similarities + (1.0 - negatives) * LARGE_NUM,
                               axis=1)
    fallback = ops.one_hot(least_similar, ops.shape(similarities)[1])
    weights = ops.where(ops.sum(semihard, axis=1, keepdims=True) > 0,
                        semihard, fallback * negatives)
  # Which negatives count is a selection, not something to differentiate.
  weights = ops.stop_gradient(weights)
  return (ops.sum(weights * terms, axis=1) /
          ops.maximum(ops.sum(weights, axis=1), 1.0))


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


def distillation_loss(teacher_logits, student_logits, *, temperature: float):
  """SimCLRv2's distillation loss (arXiv 2006.10029, eq. 2), per example mean.

  The cross-entropy of the student's tempered softmax against the
  teacher's: -sum_y P_T(y | x; tau) log P_S(y | x; tau), averaged over the
  batch. There is no tau^2 factor: the paper's loss has none, and at its
  tau = 1 Hinton et al.'s factor is 1 too.

  Args:
    teacher_logits: (B, C) logits of the fixed teacher; no gradient flows
      into them.
    student_logits: (B, C) logits of the student.
    temperature: tau, positive.

  Returns:
    A scalar float32; 0 for an empty batch.
  """
  if temperature <= 0:
    raise ValueError(
        f"`temperature` must be positive. Received: temperature={temperature}")
  if tuple(teacher_logits.shape[1:]) != tuple(student_logits.shape[1:]):
    raise ValueError(
        "The teacher and the student must predict the same classes. "
        f"Received: teacher_logits.shape={tuple(teacher_logits.shape)}, "
        f"student_logits.shape={tuple(student_logits.shape)}")
  teacher = ops.stop_gradient(ops.cast(teacher_logits, "float32"))
  targets = ops.softmax(teacher / temperature, axis=-1)
  log_student = ops.log_softmax(
      ops.cast(student_logits, "float32") / temperature, axis=-1)
  per_example = -ops.sum(targets * log_student, axis=-1)
  count = ops.cast(ops.shape(per_example)[0], "float32")
  return ops.sum(per_example) / ops.maximum(count, 1.0)
