"""NT-Xent against an independent numpy reference, on 1 and 2 replicas."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import losses


def numpy_nt_xent(hidden, temperature, hidden_norm=True):
  """The paper's NT-Xent, anchor by anchor (arXiv:2002.05709, eq. 1).

  Returns the per-anchor losses l(i, j) for all 2N anchors (view-1 anchors
  first) and, per view-1 anchor, whether its positive is the most similar
  view-2 row.
  """
  z = np.asarray(hidden, np.float64)
  if hidden_norm:
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
  two_n = z.shape[0]
  n = two_n // 2
  sim = z @ z.T / temperature
  per_anchor = np.zeros(two_n)
  for i in range(two_n):
    positive = (i + n) % two_n
    others = [k for k in range(two_n) if k != i]
    log_denominator = np.log(np.sum(np.exp(sim[i, others])))
    per_anchor[i] = -(sim[i, positive] - log_denominator)
  top1 = np.array([np.argmax(sim[i, n:]) == i for i in range(n)])
  return per_anchor, top1


def numpy_entropy(hidden, temperature):
  z = np.asarray(hidden, np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  n = z.shape[0] // 2
  logits = z[:n] @ z[n:].T / temperature
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  return -np.mean(np.sum(p * np.log(p + 1e-8), 1))


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("hidden_norm", [True, False])
def test_loss_accuracy_and_entropy_match_numpy(temperature, hidden_norm):
  rng = np.random.default_rng(int(temperature * 10) + hidden_norm)
  hidden = rng.normal(size=(16, 5)).astype(np.float32)
  if not hidden_norm:
    hidden *= 0.3  # keep unnormalised logits in a sane range
  loss, logits_ab, labels = losses.contrastive_loss(
      tf.constant(hidden), temperature=temperature, hidden_norm=hidden_norm)
  per_anchor, top1 = numpy_nt_xent(hidden, temperature, hidden_norm)
  n = 8
  # The authors' value: per example, the sum of both directions, averaged
  # over examples = twice the paper's mean over 2N anchors.
  np.testing.assert_allclose(float(loss), 2 * per_anchor.mean(), rtol=1e-5)
  np.testing.assert_allclose(
      float(loss), np.mean(per_anchor[:n] + per_anchor[n:]), rtol=1e-5)
  accuracy = losses.contrastive_accuracy(logits_ab, labels).numpy()
  np.testing.assert_array_equal(accuracy, top1.astype(np.float32))
  assert logits_ab.shape == (n, n)
  assert labels.shape == (n, 2 * n)
  np.testing.assert_array_equal(np.argmax(labels, 1), np.arange(n))
  if hidden_norm:
    np.testing.assert_allclose(
        float(losses.contrastive_entropy(logits_ab)),
        numpy_entropy(hidden, temperature), rtol=1e-4)


def test_gradient_matches_numerical_gradient_of_numpy_loss():
  rng = np.random.default_rng(3)
  hidden = rng.normal(size=(8, 4))
  temperature = 0.5
  x = tf.Variable(hidden.astype(np.float32))
  with tf.GradientTape() as tape:
    loss, _, _ = losses.contrastive_loss(x, temperature=temperature)
  gradient = tape.gradient(loss, x).numpy()

  def reference(h):
    per_anchor, _ = numpy_nt_xent(h, temperature)
    return 2 * per_anchor.mean()

  numerical = np.zeros_like(hidden)
  eps = 1e-5
  for index in np.ndindex(*hidden.shape):
    plus, minus = hidden.copy(), hidden.copy()
    plus[index] += eps
    minus[index] -= eps
    numerical[index] = (reference(plus) - reference(minus)) / (2 * eps)
  np.testing.assert_allclose(gradient, numerical, rtol=2e-3, atol=2e-5)


def test_perfect_alignment_gives_full_accuracy_and_low_loss():
  basis = np.eye(6, dtype=np.float32)
  hidden = np.concatenate([basis, basis])  # view 2 == view 1
  loss, logits_ab, labels = losses.contrastive_loss(
      tf.constant(hidden), temperature=0.05)
  assert float(np.mean(losses.contrastive_accuracy(logits_ab, labels))) == 1.0
  assert float(loss) < 1e-3


@pytest.mark.parametrize("bad, message", [
    (dict(hidden=np.zeros((5, 3), np.float32), temperature=0.1),
     "even number of rows"),
    (dict(hidden=np.zeros((4, 3), np.float32), temperature=0.0),
     "temperature=0.0"),
    (dict(hidden=np.zeros((4,), np.float32), temperature=0.1),
     "hidden.shape=(4,)"),
])
def test_bad_arguments_raise_clear_errors(bad, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(
      ")", r"\)")):
    losses.contrastive_loss(tf.constant(bad["hidden"]),
                            temperature=bad["temperature"])


def test_two_replicas_see_global_negatives(two_replica_strategy):
  """Each replica's loss uses all 2N views; the replica mean and gradients
  equal the 1-replica values on the same global batch."""
  rng = np.random.default_rng(7)
  global_n, dim, temperature = 8, 6, 0.2
  view1 = rng.normal(size=(global_n, dim)).astype(np.float32)
  view2 = rng.normal(size=(global_n, dim)).astype(np.float32)
  weights = rng.normal(size=(dim, dim)).astype(np.float32)

  # One replica on the global batch.
  w = tf.Variable(weights)
  with tf.GradientTape() as tape:
    loss_1, logits_1, _ = losses.contrastive_loss(
        tf.concat([view1, view2], 0) @ w, temperature=temperature)
  grad_1 = tape.gradient(loss_1, w).numpy()

  per_anchor, _ = numpy_nt_xent(np.concatenate([view1 @ weights,
                                                view2 @ weights]),
                                temperature)
  np.testing.assert_allclose(float(loss_1), 2 * per_anchor.mean(), rtol=1e-5)

  # Two replicas, each with half of the images (both of their views).
  with two_replica_strategy.scope():
    w_mirrored = tf.Variable(weights)
  half = global_n // 2

  def replica_fn():
    ctx = tf.distribute.get_replica_context()
    rid = ctx.replica_id_in_sync_group
    start = rid * half
    local = tf.concat([tf.gather(view1, tf.range(start, start + half)),
                       tf.gather(view2, tf.range(start, start + half))], 0)
    with tf.GradientTape() as tape:
      loss, logits_ab, labels = losses.contrastive_loss(
          local @ w_mirrored, temperature=temperature)
      scaled = loss / ctx.num_replicas_in_sync
    grad = tape.gradient(scaled, w_mirrored)
    grad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grad)
    return loss, logits_ab, labels, grad

  loss_r, logits_r, labels_r, grad_r = two_replica_strategy.run(
      tf.function(replica_fn))
  losses_per_replica = two_replica_strategy.experimental_local_results(loss_r)
  logits_per_replica = two_replica_strategy.experimental_local_results(
      logits_r)
  labels_per_replica = two_replica_strategy.experimental_local_results(
      labels_r)
  # Per replica: (B, global B) logits; labels (B, 2 * global B) with the
  # positive at replica_id * B + i.
  for rid in range(2):
    assert logits_per_replica[rid].shape == (half, global_n)
    assert labels_per_replica[rid].shape == (half, 2 * global_n)
    np.testing.assert_array_equal(
        np.argmax(labels_per_replica[rid], 1), rid * half + np.arange(half))
    np.testing.assert_allclose(logits_per_replica[rid],
                               logits_1.numpy()[rid * half:(rid + 1) * half],
                               rtol=1e-5, atol=1e-6)
  mean_loss = np.mean([float(x) for x in losses_per_replica])
  np.testing.assert_allclose(mean_loss, float(loss_1), rtol=1e-5)
  for grad in two_replica_strategy.experimental_local_results(grad_r):
    np.testing.assert_allclose(grad.numpy(), grad_1, rtol=1e-4, atol=1e-6)


def test_supervised_loss_masks_unlabeled_rows():
  logits = np.array([[2.0, 0.0], [0.0, 3.0], [5.0, -5.0]], np.float32)
  labels = np.array([[1, 0], [0, 1], [0, 0]], np.float32)
  expected = np.mean([np.log(1 + np.exp(-2.0)), np.log(1 + np.exp(-3.0))])
  got = losses.supervised_loss(labels, logits,
                               mask=labels.sum(1) > 0)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
