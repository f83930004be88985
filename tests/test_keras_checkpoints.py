"""The JAX path's checkpoints (`keras_checkpoints`): kept, restored, and a
write that fails leaves the previous ones as they were."""

import errno
import json
import os

import keras
import numpy as np
import pytest

from simclr_tf.checkpoints import keras_weights as keras_checkpoints
from simclr_tf.storage import write_errors


def _trained_model(seed):
  # Variable paths carry layer names: a fresh session names the layers as
  # the program's fresh process does.
  keras.backend.clear_session()
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((3,))
  model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
  model.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
  data = np.random.default_rng(seed).random((8, 3)).astype(np.float32)
  model.fit(data, data[:, :2], epochs=1, batch_size=4, verbose=0)
  return model


def _values(variables):
  return {v.path: np.asarray(v.value) for v in variables}


def test_keeps_the_newest_and_restores_model_and_optimizer(tmp_path):
  model = _trained_model(0)
  for step in (1, 2, 3):
    keras_checkpoints.save(model, str(tmp_path), step, keep=2)
  state = json.loads((tmp_path / keras_checkpoints.STATE_FILE).read_text())
  assert state == {"latest": 3, "steps": [2, 3]}
  assert sorted(os.listdir(tmp_path)) == [
      "checkpoint.json", "ckpt-2.optimizer.npz", "ckpt-2.weights.h5",
      "ckpt-3.optimizer.npz", "ckpt-3.weights.h5"]

  other = _trained_model(1)  # other weights and momenta
  keras_checkpoints.restore(other, str(tmp_path), 3)
  for mine, restored in ((model.weights, other.weights),
                         (model.optimizer.variables,
                          other.optimizer.variables)):
    expected, got = _values(mine), _values(restored)
    assert expected.keys() == got.keys()
    for path in expected:
      np.testing.assert_array_equal(got[path], expected[path], err_msg=path)


@pytest.mark.parametrize("failing", ["optimizer", "state"])
def test_a_full_disk_leaves_the_previous_checkpoint_and_no_partial_file(
    tmp_path, monkeypatch, failing):
  model = _trained_model(0)
  keras_checkpoints.save(model, str(tmp_path), 3, keep=1)
  before = {name: (tmp_path / name).read_bytes()
            for name in os.listdir(tmp_path)}

  def no_room(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  # The optimizer's file, or the state file written after both others:
  # with keep=1 the save would delete checkpoint 3, but only once the state
  # file names the new one.
  if failing == "optimizer":
    monkeypatch.setattr(keras_checkpoints.np, "savez", no_room)
  else:
    monkeypatch.setattr(keras_checkpoints.json, "dump", no_room)
  with pytest.raises(write_errors.WriteFailedError) as raised:
    keras_checkpoints.save(model, str(tmp_path), 4, keep=1)
  message = str(raised.value)
  assert "\n" not in message
  assert message.startswith(
      f"could not write checkpoint {tmp_path}/ckpt-4.weights.h5 (no space "
      "left on device); the previous checkpoint "
      f"{tmp_path}/ckpt-3.weights.h5 is intact")
  after = {name: (tmp_path / name).read_bytes()
           for name in os.listdir(tmp_path)}
  assert after == before
  assert keras_checkpoints.latest_step(str(tmp_path)) == 3
