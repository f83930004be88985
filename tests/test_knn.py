"""The weighted kNN classifier and the kNN monitor of pretraining.

The classifier is checked against a brute-force numpy kNN written from the
definition (cosine similarity, k nearest, votes exp(sim / T), ties broken
by the lower index); the monitor's gathered memory bank under 2 replicas
against the 1-replica bank.
"""

import dataclasses
import math
import os
import types

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf.evaluation import features as features_lib
from simclr_tf.evaluation import knn
from simclr_tf.models import resnet_encoder as resnet_lib


def numpy_knn(queries, query_labels, bank, bank_labels, num_classes, k, t):
  """Brute force, one query at a time, in float64."""
  queries = np.asarray(queries, np.float64)
  bank = np.asarray(bank, np.float64)
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  all_scores, top1, top5 = [], [], []
  for query, label in zip(queries, query_labels):
    similarity = bank @ query
    # Stable sort: equal similarities keep bank order.
    nearest = np.argsort(-similarity, kind="stable")[:k]
    scores = np.zeros(num_classes)
    for index in nearest:
      scores[bank_labels[index]] += math.exp(similarity[index] / t)
    ranked = np.argsort(-scores, kind="stable")
    all_scores.append(scores)
    top1.append(ranked[0] == label)
    top5.append(label in ranked[:5])
  return np.array(all_scores), float(np.mean(top1)), float(np.mean(top5))


@pytest.mark.parametrize("k", [1, 20, 200])
def test_knn_equals_brute_force_numpy_on_random_features(k):
  rng = np.random.default_rng(k)
  num_classes = 10
  # Class-dependent means so the accuracy is neither 0 nor 1.
  means = rng.normal(size=(num_classes, 32))
  bank_labels = rng.integers(0, num_classes, 300)
  query_labels = rng.integers(0, num_classes, 70)
  bank = means[bank_labels] + 2.0 * rng.normal(size=(300, 32))
  queries = means[query_labels] + 2.0 * rng.normal(size=(70, 32))
  scores = knn.class_scores(queries, bank, bank_labels, num_classes, k=k,
                            temperature=0.1)
  want_scores, want_top1, want_top5 = numpy_knn(
      queries, query_labels, bank, bank_labels, num_classes, k, 0.1)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-4)
  got = knn.knn_accuracy(queries, query_labels, bank, bank_labels,
                         num_classes, k=k, temperature=0.1)
  assert got[knn.KNN_TOP_1] == want_top1
  assert got[knn.KNN_TOP_5] == want_top5
  assert 0.0 < want_top1 < want_top5 < 1.0


def test_knn_breaks_ties_by_the_lower_bank_index_and_class_id():
  eye = np.eye(4, dtype=np.float32)
  # Bank items 0, 4, 8 are the same direction (dim 0); none uses dim 3.
  bank = eye[[0, 1, 2, 0, 0, 1, 2, 1, 0]]
  bank_labels = np.array([2, 3, 4, 0, 1, 4, 4, 4, 0])
  queries = eye[[0, 3]]
  # Query 0: bank 0, 3, 4, 8 tie at similarity 1; k=2 takes bank 0 and 3
  # (labels 2 and 0) with equal votes e^(1/0.1); class 0 < 2 wins.
  scores = knn.class_scores(queries, bank, bank_labels, 5, k=2,
                            temperature=0.1)
  vote = math.exp(10.0)
  np.testing.assert_allclose(scores[0], [vote, 0, vote, 0, 0], rtol=1e-6)
  assert scores[0, 0] == scores[0, 2]  # exactly tied
  # Query 1 is orthogonal to everything: the first two bank items, labels 2
  # and 3, get a vote of e^0 = 1 each.
  np.testing.assert_array_equal(scores[1], [0, 0, 1, 1, 0])
  want = numpy_knn(queries, [0, 3], bank, bank_labels, 5, 2, 0.1)
  np.testing.assert_allclose(scores, want[0], rtol=1e-6)
  got = knn.knn_accuracy(queries, [0, 3], bank, bank_labels, 5, k=2,
                         temperature=0.1)
  # Query 0's tie goes to class 0 (right); query 1's to class 2 (wrong).
  assert got[knn.KNN_TOP_1] == 0.5 == want[1]
  assert got[knn.KNN_TOP_5] == 1.0 == want[2]


def test_knn_leaves_out_unlabeled_examples_and_refuses_no_labels():
  eye = np.eye(3, dtype=np.float32)
  bank, queries = eye[[0, 1, 0]], eye[[0, 1]]
  got = knn.knn_accuracy(queries, [0, -1], bank, [-1, 1, 0], 3, k=1,
                         temperature=0.1)
  # The unlabeled bank item 0 would have been the nearest for query 0.
  assert got[knn.KNN_TOP_1] == 1.0
  with pytest.raises(ValueError, match="labeled"):
    knn.knn_accuracy(queries, [-1, -1], bank, [0, 1, 0], 3)
  with pytest.raises(ValueError, match="Received: k=0"):
    knn.class_scores(queries, bank, [0, 1, 0], 3, k=0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _data_config(data_dir):
  return config_lib.DataConfig(
      dataset="synthetic_shapes", image_size=16, data_dir=data_dir, synthetic_train_examples=40,
      synthetic_test_examples=24)


def test_two_replica_gathered_bank_equals_the_one_replica_bank(
    data_dir, two_replica_strategy):
  data_config = _data_config(data_dir)
  augment_config = config_lib.AugmentConfig()
  # 40 examples in batches of 16: the last global batch has 8, so under 2
  # replicas the last step gives one replica 8 images and the other none.
  input_fn, num_examples = features_lib.split_input_fn(
      data_config, augment_config, split="train", batch_size=16)
  assert num_examples == 40

  def encoder_in(strategy):
    with strategy.scope():
      encoder = resnet_lib.resnet(18, width_multiplier=0.125,
                                  cifar_stem=True)
      encoder.build((None, 16, 16, 3))
    return encoder

  one = encoder_in(tf.distribute.get_strategy())
  two = encoder_in(two_replica_strategy)
  two.set_weights(one.get_weights())
  extract = lambda encoder, strategy, **kw: features_lib.FeatureExtractor(  # noqa: E731
      lambda images: encoder(images, training=False), strategy)(
          input_fn, batch_size=16, **kw)
  bank_1, labels_1 = extract(one, None)
  bank_2, labels_2 = extract(two, two_replica_strategy)
  assert bank_1.shape == (40, 64)
  np.testing.assert_array_equal(labels_2, labels_1)
  np.testing.assert_allclose(bank_2, bank_1, atol=1e-5)
  # The labels are the split's, in order.
  want = [int(np.argmax(y)) for _, y in input_fn(None).unbatch()]
  np.testing.assert_array_equal(labels_1, want)
  # The cap keeps the first examples.
  capped, capped_labels = extract(two, two_replica_strategy, max_examples=20)
  np.testing.assert_allclose(capped, bank_1[:20], atol=1e-5)
  np.testing.assert_array_equal(capped_labels, labels_1[:20])


def _event_values(model_dir, tag):
  values = {}
  for name in tf.io.gfile.listdir(model_dir):
    if name.startswith("events.out.tfevents"):
      for event in tf.compat.v1.train.summary_iterator(
          os.path.join(model_dir, name)):
        for value in event.summary.value:
          if value.tag == tag:
            values[event.step] = float(tf.make_ndarray(value.tensor))
  return values


class _FakeTrainingModel:
  """What the monitor reads of the model `fit` trains: encoder, step."""

  def __init__(self, encoder):
    self.encoder = encoder
    self.optimizer = types.SimpleNamespace(iterations=tf.Variable(0))


def test_monitor_evaluates_on_schedule_on_two_replicas(data_dir, tmp_path,
                                                       two_replica_strategy):
  data_config = _data_config(data_dir)
  augment_config = config_lib.AugmentConfig()
  bank_fn, _ = features_lib.split_input_fn(
      data_config, augment_config, split="train", batch_size=16)
  query_fn, _ = features_lib.split_input_fn(
      data_config, augment_config, split="test", batch_size=16)
  with two_replica_strategy.scope():
    encoder = resnet_lib.resnet(18, width_multiplier=0.125, cifar_stem=True)
    encoder.build((None, 16, 16, 3))
  writer = tf.summary.create_file_writer(str(tmp_path))
  lines = []
  monitor = knn.KnnMonitor(
      strategy=two_replica_strategy, bank_input_fn=bank_fn,
      query_input_fn=query_fn, batch_size=16, num_classes=10, every_steps=2,
      bank_size=30, k=10, summary_writer=writer, log=lines.append)
  model = _FakeTrainingModel(encoder)
  monitor.set_model(model)
  monitor.on_train_begin()
  for step in range(1, 6):
    model.optimizer.iterations.assign(step)
    monitor.on_train_batch_end(step - 1)
  monitor.on_train_end()
  writer.close()
  knn_lines = [line for line in lines if "kNN at step" in line]
  # Every 2 steps, and the final step 5 (not within 2 // 10 of step 4).
  assert [line.split()[4] for line in knn_lines] == ["2", "4", "5"]
  assert "bank 30, 24 queries" in knn_lines[0]
  top_1 = _event_values(str(tmp_path), "eval/knn_top_1")
  assert sorted(top_1) == [2, 4, 5]
  # The weights never changed: the same accuracy each time, and the one a
  # direct computation on one device gives.
  one = features_lib.FeatureExtractor(
      lambda images: encoder(images, training=False))
  bank, bank_labels = one(bank_fn, max_examples=30, batch_size=16)
  queries, query_labels = one(query_fn)
  want = numpy_knn(queries, query_labels, bank, bank_labels, 10, 10, 0.1)
  np.testing.assert_allclose(list(top_1.values()), [want[1]] * 3, atol=1e-6)
  np.testing.assert_allclose(
      list(_event_values(str(tmp_path), "eval/knn_top_5").values()),
      [want[2]] * 3, atol=1e-6)
  assert all(value > 0 for value in
             _event_values(str(tmp_path), "eval/knn_seconds").values())
  assert any("kNN monitor: 3 evaluations" in line for line in lines)


def test_training_runs_the_monitor_the_config_asks_for(data_dir):
  config = config_lib.ExperimentConfig(
      data=_data_config(data_dir),
      run=config_lib.RunConfig(eval_batch_size=16, knn_eval_every_epochs=3,
                               knn_bank_size=25, knn_k=7,
                               knn_temperature=0.2))
  monitor = knn.build_monitor(config, tf.distribute.get_strategy(),
                              steps_per_epoch=4, summary_writer=None,
                              log=print)
  assert (monitor.every_steps, monitor.bank_size, monitor.k,
          monitor.temperature) == (12, 25, 7, 0.2)
  off = dataclasses.replace(config, run=dataclasses.replace(
      config.run, knn_eval_every_epochs=0))
  assert knn.build_monitor(off, None, steps_per_epoch=4,
                           summary_writer=None, log=print) is None


def test_knn_settings_are_checked():
  with pytest.raises(config_lib.ConfigError, match="knn_bank_size"):
    config_lib.RunConfig(knn_bank_size=0).validate()
  with pytest.raises(config_lib.ConfigError, match="knn_temperature"):
    config_lib.RunConfig(knn_temperature=0.0).validate()
  with pytest.raises(config_lib.ConfigError, match="knn_eval_every_epochs"):
    config_lib.RunConfig(knn_eval_every_epochs=-1).validate()
  assert dataclasses.replace(config_lib.RunConfig(),
                             knn_eval_every_epochs=0).validate() is None
