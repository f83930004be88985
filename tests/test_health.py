"""The label-free health signals against the papers' formulas, written out
plainly here, and their known values at the extremes."""

import dataclasses
import math
import types

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf import run as run_lib
from simclr_tf.augment import host as augment
from simclr_tf.evaluation import features as features_lib
from simclr_tf.evaluation import health
from simclr_tf.evaluation import health_features
from simclr_tf.evaluation import health_monitor
from simclr_tf.models import simclr
from simclr_tf.training.stage_result import StageResult


def unit_rows(array):
  return [row / math.sqrt(sum(v * v for v in row)) for row in array]


def reference_alignment(z1, z2, alpha):
  total = 0.0
  for a, b in zip(unit_rows(z1), unit_rows(z2)):
    total += math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b))) ** alpha
  return total / len(z1)


def reference_uniformity(z, t):
  rows = unit_rows(z)
  terms = []
  for i in range(len(rows)):
    for j in range(i + 1, len(rows)):
      squared = sum((x - y) ** 2 for x, y in zip(rows[i], rows[j]))
      terms.append(math.exp(-t * squared))
  return math.log(sum(terms) / len(terms))


def reference_rank(h, epsilon=1e-7):
  singular = np.linalg.svd(np.asarray(h, np.float64), compute_uv=False)
  p = singular / singular.sum() + epsilon
  return math.exp(-sum(v * math.log(v) for v in p))


@pytest.fixture
def rng():
  return np.random.default_rng(7)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_alignment_is_the_mean_powered_distance_of_normalised_pairs(
    rng, alpha):
  z1 = rng.normal(size=(9, 5)) * 3.0
  z2 = z1 + rng.normal(size=(9, 5))
  assert health.alignment(z1, z2, alpha=alpha) == pytest.approx(
      reference_alignment(z1, z2, alpha), rel=1e-10)


def test_alignment_of_identical_and_of_opposite_views(rng):
  z = rng.normal(size=(6, 4))
  assert health.alignment(z, 2.5 * z) == pytest.approx(0.0, abs=1e-12)
  # Antipodal views are 2 apart on the unit sphere: the maximum, 2^alpha.
  assert health.alignment(z, -z) == pytest.approx(4.0)


@pytest.mark.parametrize("t", [0.5, 2.0, 40.0])
def test_uniformity_is_the_log_mean_gaussian_potential_of_distinct_pairs(
    rng, t):
  z = rng.normal(size=(11, 3))
  assert health.uniformity(z, t=t) == pytest.approx(
      reference_uniformity(z, t), rel=1e-9)


def test_uniformity_of_collapsed_projections_is_zero(rng):
  z = np.tile(rng.normal(size=(1, 8)), (20, 1)) * np.arange(1, 21)[:, None]
  assert health.uniformity(z) == pytest.approx(0.0, abs=1e-12)


def test_uniformity_stays_finite_where_every_exponential_underflows():
  # Two antipodal points: log exp(-t * 4) = -4t, which exp alone loses.
  z = np.array([[1.0, 0.0], [-1.0, 0.0]])
  assert health.uniformity(z, t=500.0) == pytest.approx(-2000.0)


def test_uniformity_subsamples_large_sets_repeatably(rng):
  z = rng.normal(size=(300, 4))
  small = health.uniformity(z, max_vectors=50)
  assert small == health.uniformity(z, max_vectors=50)
  rows = np.sort(np.random.default_rng(health.UNIFORMITY_SEED).choice(
      300, 50, replace=False))
  assert small == pytest.approx(reference_uniformity(z[rows], 2.0),
                                rel=1e-9)
  # A spread-out set: close to the whole set's value, not to 0.
  assert small == pytest.approx(health.uniformity(z), abs=0.1)


def test_effective_rank_is_the_exp_entropy_of_the_singular_values(rng):
  h = rng.normal(size=(40, 6)) @ np.diag([5.0, 3.0, 1.0, 0.5, 0.1, 0.01])
  h += 2.0  # Not centred: RankMe uses the features as they are.
  assert health.effective_rank(h) == pytest.approx(reference_rank(h),
                                                   rel=1e-9)
  centred = h - h.mean(axis=0)
  assert health.effective_rank(h) != pytest.approx(
      health.effective_rank(centred), rel=1e-3)


def test_effective_rank_of_rank_one_and_of_isotropic_features(rng):
  line = np.outer(rng.normal(size=200), rng.normal(size=16))
  assert health.effective_rank(line) == pytest.approx(1.0, abs=1e-3)
  dimensions = 16
  isotropic = rng.normal(size=(20000, dimensions))
  rank = health.effective_rank(isotropic)
  assert dimensions - 0.1 < rank <= dimensions + 1e-3


def test_effective_rank_of_dead_or_diverged_features():
  assert health.effective_rank(np.zeros((5, 3))) == 0.0
  assert math.isnan(health.effective_rank(np.full((5, 3), np.nan)))


def test_signals_use_the_first_view_for_uniformity(rng):
  h = rng.normal(size=(10, 8))
  z1, z2 = rng.normal(size=(10, 4)), rng.normal(size=(10, 4))
  got = health.signals(h, z1, z2)
  assert got == {health.ALIGNMENT: health.alignment(z1, z2),
                 health.UNIFORMITY: health.uniformity(z1),
                 health.EFFECTIVE_RANK: health.effective_rank(h)}
  line = health.describe(got, feature_dim=8)
  assert "alignment" in line and "(of 8)" in line


@pytest.mark.parametrize("call, message", [
    (lambda: health.alignment(np.ones((3, 2)), np.ones((4, 2))),
     "same shape"),
    (lambda: health.alignment(np.ones(3), np.ones(3)), "2-D"),
    (lambda: health.alignment(np.ones((3, 2)), np.ones((3, 2)), alpha=0),
     "alpha=0"),
    (lambda: health.uniformity(np.ones((1, 2))), "at least 2"),
    (lambda: health.uniformity(np.ones((3, 2)), t=-1), "t=-1"),
    (lambda: health.effective_rank(np.ones((0, 2))), "non-empty"),
])
def test_bad_arguments_are_refused_by_name(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_health_examples_setting():
  assert config_lib.RunConfig().health_examples == 1024
  assert config_lib.RunConfig(health_examples=0).validate() is None
  with pytest.raises(config_lib.ConfigError, match="health_examples"):
    config_lib.RunConfig(health_examples=-1).validate()


# --- The TensorFlow trainer's measurement and the summary line. ---


def _tiny_experiment(data_dir, **run):
  return config_lib.ExperimentConfig(
      data=config_lib.DataConfig(
          dataset="synthetic_shapes", image_size=16, data_dir=data_dir,
          synthetic_train_examples=32, synthetic_test_examples=40),
      augment=config_lib.AugmentConfig(use_blur=False,
                                       color_jitter_strength=0.5),
      model=config_lib.ModelConfig(resnet_depth=18, width_multiplier=0.125,
                                   proj_out_dim=16, global_bn=False),
      run=config_lib.RunConfig(eval_batch_size=16, **run)).validate()


@pytest.fixture(scope="module")
def probed(tmp_path_factory, two_replica_strategy):
  """A random-init model, its config, and a probe under 2 replicas."""
  config = _tiny_experiment(str(tmp_path_factory.mktemp("data")),
                            health_examples=40)
  with two_replica_strategy.scope():
    model = simclr.build_simclr_model(
        config.model, image_size=16, num_classes=10, train_mode="pretrain",
        with_supervised_head=False)
    model(tf.zeros((2, 16, 16, 6)))
  probe = health_monitor.build_probe(model, config, two_replica_strategy)
  return model, config, probe


def test_probe_under_two_replicas_equals_the_models_own_outputs(probed):
  """Each gathered row is one image's h and its two views' z, whatever the
  replica that ran it: the reference runs the model's own call (views on
  the batch axis) on one device, batch by batch, then numpy."""
  model, config, probe = probed
  # 40 eval images in batches of 16: whole batches, 32, sampled (the
  # sample itself is tested in test_sampling.py).
  assert probe.num_examples == 32
  input_fn, _ = features_lib.split_input_fn(
      config.data, config.augment, split="test", batch_size=16,
      sample_size=32, seed=config.run.seed)
  h, z1, z2 = [], [], []
  for index, (images, _) in enumerate(input_fn(None).take(2)):
    images = images[..., :3]
    views = augment.augment_batch_views(
        images, 16, config.train_augment(), num_views=2,
        seed=[config.run.seed, health_features.VIEWS_SEED_STREAM + index])
    h.append(model(images, training=False)[simclr.FINAL_AVG_POOL].numpy())
    z = model(views, training=False)[simclr.PROJ_HEAD_OUTPUT].numpy()
    z1.append(z[:len(images)])
    z2.append(z[len(images):])
  h, z1, z2 = (np.concatenate(part) for part in (h, z1, z2))
  assert not np.allclose(z1, z2)  # The two views differ.
  got = probe.measure()
  assert got[health.ALIGNMENT] == pytest.approx(
      reference_alignment(z1, z2, 2.0), rel=1e-4)
  assert got[health.UNIFORMITY] == pytest.approx(
      reference_uniformity(z1, 2.0), rel=1e-4, abs=1e-6)
  assert got[health.EFFECTIVE_RANK] == pytest.approx(reference_rank(h),
                                                     rel=1e-4)
  # The same views every time: a measurement is repeatable.
  assert probe.measure() == pytest.approx(got, rel=1e-6)


def test_monitor_measures_on_the_knn_schedule_and_writes_scalars(
    probed, tmp_path):
  _, _, probe = probed
  writer = tf.summary.create_file_writer(str(tmp_path))
  lines = []
  monitor = health_monitor.HealthMonitor(probe, every_steps=2,
                                         summary_writer=writer,
                                         log=lines.append)
  fake = types.SimpleNamespace(optimizer=types.SimpleNamespace(
      iterations=tf.Variable(0)))
  monitor.set_model(fake)
  monitor.on_train_begin()
  for step in range(1, 6):
    fake.optimizer.iterations.assign(step)
    monitor.on_train_batch_end(step - 1)
  writer.close()
  assert [step for step, _ in monitor.history] == [2, 4]
  steps = {}
  for path in tf.io.gfile.glob(str(tmp_path / "events.out.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        steps.setdefault(value.tag, []).append(event.step)
  assert steps == {health.HEALTH_PREFIX + key: [2, 4] for key in
                   (health.ALIGNMENT, health.UNIFORMITY,
                    health.EFFECTIVE_RANK)}
  assert sum("health at step" in line for line in lines) == 2


def test_no_probe_when_off_or_not_pretraining(probed):
  model, config, _ = probed
  off = dataclasses.replace(config, run=dataclasses.replace(
      config.run, health_examples=0))
  assert health_monitor.build_probe(model, off, None) is None
  linear = dataclasses.replace(config, run=dataclasses.replace(
      config.run, train_mode="linear_eval"))
  assert health_monitor.build_probe(model, linear, None) is None


def test_the_summary_shows_the_signals():
  result = StageResult("pretrain", "/tmp/run", 4, health={
      health.ALIGNMENT: 0.5, health.UNIFORMITY: -2.25,
      health.EFFECTIVE_RANK: 12.0})
  summary = run_lib.format_summary(config_lib.ExperimentConfig(), [result],
                                   saved_models=False)
  assert "alignment 0.500  uniformity -2.250  effective rank 12.0" in summary
