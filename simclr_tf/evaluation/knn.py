"""Weighted k-nearest-neighbour accuracy: the monitor run while pretraining.

The classifier is the one of Wu et al. 2018 (instance discrimination), as
solo-learn and lightly report it: features are L2-normalised, similarity is
cosine, each query's k most similar memory-bank examples vote for their
class with weight exp(similarity / temperature), and the class with the
largest sum wins.

Ties are broken by index, so results are repeatable: among neighbours of
equal similarity the one earlier in the bank is taken first, and among
classes of equal score the lower class id ranks first.
"""

import time
from typing import Dict, Optional

import keras
import numpy as np
import tensorflow as tf

from simclr_tf import data as data_lib
from simclr_tf.evaluation import features as features_lib

KNN_TOP_1 = "knn_top_1"
KNN_TOP_5 = "knn_top_5"
KNN_SECONDS = "knn_seconds"
EVAL_PREFIX = "eval/"
# Queries per similarity block: bounds memory at chunk x bank floats.
_QUERY_CHUNK = 512


def _check_knn_args(k, temperature):
  if k < 1:
    raise ValueError(f"`k` must be positive. Received: k={k}")
  if not temperature > 0:
    raise ValueError("`temperature` must be positive. Received: "
                     f"temperature={temperature}")


def class_scores(queries, bank, bank_labels, num_classes, *, k=200,
                 temperature=0.1):
  """Each query's weighted vote per class.

  Args:
    queries: (Q, d) features.
    bank: (N, d) memory-bank features.
    bank_labels: (N,) int class ids in [0, num_classes).
    num_classes: number of classes.
    k: neighbours per query (all N if the bank is smaller).
    temperature: vote weight exp(cosine similarity / temperature).

  Returns:
    float64 numpy (Q, num_classes) scores.
  """
  _check_knn_args(k, temperature)
  bank = tf.math.l2_normalize(tf.convert_to_tensor(bank, tf.float32), axis=1)
  bank_labels = tf.convert_to_tensor(bank_labels, tf.int64)
  queries = tf.math.l2_normalize(tf.convert_to_tensor(queries, tf.float32),
                                 axis=1)
  k = min(k, int(bank.shape[0]))
  scores = []
  for start in range(0, int(queries.shape[0]), _QUERY_CHUNK):
    similarity = tf.matmul(queries[start:start + _QUERY_CHUNK], bank,
                           transpose_b=True)
    # top_k puts the lower index first among equal values.
    nearest, indices = tf.math.top_k(similarity, k=k)
    # Votes are summed in float64 so equal votes give exactly equal sums.
    weights = tf.exp(tf.cast(nearest, tf.float64) / temperature)
    votes = tf.one_hot(tf.gather(bank_labels, indices), num_classes,
                       dtype=tf.float64)
    scores.append(tf.reduce_sum(votes * weights[..., None], axis=1).numpy())
  if not scores:
    return np.zeros((0, num_classes), np.float64)
  return np.concatenate(scores)


def knn_accuracy(queries, query_labels, bank, bank_labels, num_classes, *,
                 k=200, temperature=0.1) -> Dict[str, float]:
  """Top-1 and top-5 accuracy of the weighted kNN classifier.

  Examples without a label (negative ids) are left out, of the bank and of
  the queries.

  Args:
    queries: (Q, d) features of the evaluation examples.
    query_labels: (Q,) their class ids.
    bank: (N, d) memory-bank features (the train split).
    bank_labels: (N,) their class ids.
    num_classes: number of classes.
    k: neighbours per query.
    temperature: vote temperature.

  Returns:
    {KNN_TOP_1: fraction, KNN_TOP_5: fraction}; top-5 counts a query as
    right when its class is among the min(5, num_classes) best scored.

  Raises:
    ValueError: no labeled bank example or query.
  """
  query_labels = np.asarray(query_labels)
  bank_labels = np.asarray(bank_labels)
  keep_bank = bank_labels >= 0
  keep_queries = query_labels >= 0
  if not keep_bank.any() or not keep_queries.any():
    raise ValueError("kNN accuracy needs labeled bank and query examples. "
                     f"Received: {int(keep_bank.sum())} labeled bank and "
                     f"{int(keep_queries.sum())} labeled query examples.")
  scores = class_scores(np.asarray(queries)[keep_queries],
                        np.asarray(bank)[keep_bank], bank_labels[keep_bank],
                        num_classes, k=k, temperature=temperature)
  _, ranked = tf.math.top_k(scores, k=min(5, num_classes))
  ranked = ranked.numpy()
  truth = query_labels[keep_queries][:, None]
  return {KNN_TOP_1: float(np.mean(ranked[:, 0] == truth[:, 0])),
          KNN_TOP_5: float(np.mean((ranked == truth).any(axis=1)))}


class KnnMonitor(keras.callbacks.Callback):
  """Every few steps of pretraining, the kNN accuracy of the encoder.

  The memory bank is the first `bank_size` examples of the train split and
  the queries the whole eval split, both through the evaluation transform,
  with features extracted under the training strategy and gathered from
  every replica and worker. Results go to TensorBoard as `eval/knn_top_1`,
  `eval/knn_top_5` and `eval/knn_seconds` (its cost), and to the console.

  Args:
    strategy: the training `tf.distribute.Strategy`.
    bank_input_fn: eval `input_fn` of the train split.
    query_input_fn: eval `input_fn` of the eval split.
    batch_size: the global batch of both input functions.
    num_classes: number of classes.
    every_steps: evaluate when the step crosses a multiple of this.
    bank_size: cap on the memory bank's examples.
    k: neighbours per query.
    temperature: vote temperature.
    summary_writer: a `tf.summary` writer, or None.
    log: function taking one line of text.
    stage: label shown on the console.
  """

  def __init__(self, *, strategy, bank_input_fn, query_input_fn, batch_size,
               num_classes, every_steps, bank_size, k=200, temperature=0.1,
               summary_writer=None, log=print, stage="pretrain"):
    super().__init__()
    if every_steps < 1:
      raise ValueError("`every_steps` must be positive. Received: "
                       f"every_steps={every_steps}")
    if bank_size < 1:
      raise ValueError("`bank_size` must be positive. Received: "
                       f"bank_size={bank_size}")
    _check_knn_args(k, temperature)
    self.strategy = strategy
    self.bank_input_fn = bank_input_fn
    self.query_input_fn = query_input_fn
    self.batch_size = batch_size
    self.num_classes = num_classes
    self.every_steps = every_steps
    self.bank_size = bank_size
    self.k = k
    self.temperature = temperature
    self.summary_writer = summary_writer
    self.log = log
    self.stage = stage
    self.total_seconds = 0.0
    self.history = []  # (step, results) of every evaluation
    self._extractor = None

  def _step(self):
    return int(self.model.optimizer.iterations.numpy())

  def on_train_begin(self, logs=None):
    self._last_step = self._step()
    self._start_time = time.time()
    self.total_seconds = 0.0

  def on_train_batch_end(self, batch, logs=None):
    step = self._step()
    if step // self.every_steps > self._last_step // self.every_steps:
      self.evaluate(step)
    self._last_step = step

  def on_train_end(self, logs=None):
    step = self._step()
    # The final encoder's accuracy, unless one was just measured (runs of
    # whole epochs end a few steps past the last multiple).
    if not self.history or (step - self.history[-1][0] >=
                            max(1, self.every_steps // 10)):
      self.evaluate(step)
    elapsed = max(time.time() - self._start_time, 1e-9)
    self.log(f"[{self.stage}] kNN monitor: {len(self.history)} evaluations, "
             f"{self.total_seconds:.1f} s in all "
             f"({100 * self.total_seconds / elapsed:.1f}% of the training "
             "time).")

  def evaluate(self, step) -> Dict[str, float]:
    """Computes, writes and logs the kNN accuracy at `step`."""
    start = time.time()
    if self._extractor is None:
      encoder = self.model.encoder
      self._extractor = features_lib.FeatureExtractor(
          lambda images: encoder(images, training=False), self.strategy)
    bank, bank_labels = self._extractor(
        self.bank_input_fn, max_examples=self.bank_size,
        batch_size=self.batch_size)
    queries, query_labels = self._extractor(self.query_input_fn)
    results = knn_accuracy(queries, query_labels, bank, bank_labels,
                           self.num_classes, k=self.k,
                           temperature=self.temperature)
    seconds = time.time() - start
    self.total_seconds += seconds
    results[KNN_SECONDS] = seconds
    self.history.append((step, dict(results)))
    if self.summary_writer is not None:
      with self.summary_writer.as_default(step=step):
        for name, value in results.items():
          tf.summary.scalar(EVAL_PREFIX + name, value)
    self.log(f"[{self.stage}] kNN at step {step} (k={self.k}, bank "
             f"{len(bank)}, {len(queries)} queries): top-1 "
             f"{100 * results[KNN_TOP_1]:.2f}%  top-5 "
             f"{100 * results[KNN_TOP_5]:.2f}%  ({seconds:.1f} s)")
    return results


def build_monitor(config, strategy, *, steps_per_epoch, summary_writer,
                  log) -> Optional[KnnMonitor]:
  """The config's kNN monitor, or None when it is off.

  Args:
    config: the stage's `ExperimentConfig`; `run.knn_eval_every_epochs`
      of 0 turns the monitor off.
    strategy: the training strategy.
    steps_per_epoch: optimizer steps per epoch.
    summary_writer: a `tf.summary` writer.
    log: function taking one line of text.

  Returns:
    A `KnnMonitor`, or None.
  """
  run = config.run
  if not run.knn_eval_every_epochs or run.train_mode != "pretrain":
    return None
  num_classes = data_lib.get_dataset_info(config.data).num_classes
  if num_classes < 1:
    log("NOTE: the kNN monitor needs labels; this dataset has none, so it "
        "is off.")
    return None
  bank_split = config.linear_eval.train_split or config.data.train_split
  bank_input_fn, _ = features_lib.split_input_fn(
      config.data, config.augment, split=bank_split,
      batch_size=run.eval_batch_size, sample_size=run.knn_bank_size,
      seed=run.seed)
  query_input_fn, _ = features_lib.split_input_fn(
      config.data, config.augment, split=config.data.eval_split,
      batch_size=run.eval_batch_size)
  return KnnMonitor(
      strategy=strategy, bank_input_fn=bank_input_fn,
      query_input_fn=query_input_fn, batch_size=run.eval_batch_size,
      num_classes=num_classes,
      every_steps=max(1, run.knn_eval_every_epochs * steps_per_epoch),
      bank_size=run.knn_bank_size, k=run.knn_k,
      temperature=run.knn_temperature, summary_writer=summary_writer,
      log=log, stage=run.train_mode)
