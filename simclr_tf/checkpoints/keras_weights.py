"""Checkpoints in Keras' own format, for the JAX backend.

A checkpoint of step N in `model_dir` is two files, each written to a
temporary name and renamed into place, the state file last:

    ckpt-N.weights.h5      the model's variables (`Model.save_weights`)
    ckpt-N.optimizer.npz   the optimizer's variables, by path
    checkpoint.json        {"latest": N, "steps": [...]}: the kept steps

The weights file is Keras' backend-neutral format, so a model built on
TensorFlow loads it with `load_weights` (docs/jax.md).
"""

import json
import os
from typing import List, Optional

import numpy as np

from simclr_tf.storage import write_errors

STATE_FILE = "checkpoint.json"


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or does not fit the model."""


def weights_path(model_dir: str, step: int) -> str:
  return os.path.join(model_dir, f"ckpt-{step}.weights.h5")


def _optimizer_path(model_dir: str, step: int) -> str:
  return os.path.join(model_dir, f"ckpt-{step}.optimizer.npz")


def _read_state(model_dir: str) -> Optional[dict]:
  path = os.path.join(model_dir, STATE_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as handle:
      state = json.load(handle)
    int(state["latest"])
    return state
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise CheckpointError(f"{path} is damaged ({error}). Remove it to start "
                          "over, or use another --model_dir.") from error


def latest_step(model_dir: str) -> Optional[int]:
  """The newest saved step in `model_dir`, or None."""
  state = _read_state(model_dir)
  return None if state is None else int(state["latest"])


def _steps(model_dir: str) -> List[int]:
  state = _read_state(model_dir)
  return [] if state is None else [int(s) for s in state.get("steps", [])]


def save(model, model_dir: str, step: int, *, keep: int = 5) -> None:
  """Writes the step's checkpoint and keeps the newest `keep`.

  The files are written under temporary names and renamed into place, the
  state file last, and older checkpoints are deleted only after the state
  file no longer names them: a write that fails (a full disk) leaves the
  previous checkpoints and the state file as they were.

  Args:
    model: a compiled model with a built optimizer.
    model_dir: the run's directory.
    step: the optimizer step it is at.
    keep: checkpoints to keep.

  Raises:
    write_errors.WriteFailedError: a file could not be written; nothing
      partial is left.
  """
  previous = latest_step(model_dir)
  weights = weights_path(model_dir, step)
  optimizer = _optimizer_path(model_dir, step)
  state = os.path.join(model_dir, STATE_FILE)
  steps = [s for s in _steps(model_dir) if s != step] + [step]
  temporary = (weights + ".tmp.weights.h5", optimizer + ".tmp",
               state + ".tmp")
  try:
    model.save_weights(temporary[0], overwrite=True)
    with open(temporary[1], "wb") as handle:
      np.savez(handle, **{v.path: np.asarray(v.value)
                          for v in model.optimizer.variables})
    with open(temporary[2], "w") as handle:
      json.dump({"latest": step, "steps": steps[-keep:]}, handle)
    os.replace(temporary[0], weights)
    os.replace(temporary[1], optimizer)
    os.replace(temporary[2], state)
  except OSError as error:
    for path in temporary:
      if os.path.exists(path):
        os.remove(path)
    kept = ("(none yet)" if previous is None else
            weights_path(model_dir, previous))
    raise write_errors.WriteFailedError(
        f"could not write checkpoint {weights} ({write_errors.reason(error)})"
        f"; the previous checkpoint {kept} is intact and nothing partial was "
        "left. Free space (or fix the disk) and rerun the same command to "
        "resume" + (" from it." if previous is not None else ".")) from error
  for old in steps[:-keep]:
    for path in (weights_path(model_dir, old), _optimizer_path(model_dir,
                                                               old)):
      if os.path.exists(path):
        os.remove(path)


def restore_weights(model, model_dir: str, step: int) -> None:
  """Loads the step's model variables into `model`."""
  path = weights_path(model_dir, step)
  try:
    model.load_weights(path)
  except (OSError, ValueError, KeyError) as error:
    raise CheckpointError(
        f"Cannot load {path} into this model ({str(error)[:200]}). The "
        "checkpoint is damaged or was written for other architecture "
        "settings; use the run's own settings or another --model_dir."
    ) from error


def restore(model, model_dir: str, step: int) -> None:
  """Loads the step's model and optimizer variables (to resume)."""
  restore_weights(model, model_dir, step)
  path = _optimizer_path(model_dir, step)
  try:
    with np.load(path) as stored:
      values = dict(stored)
  except (OSError, ValueError) as error:
    raise CheckpointError(f"Cannot read {path} ({error}). Remove the "
                          "checkpoint to resume from an older one.") from error
  variables = model.optimizer.variables
  missing = [v.path for v in variables if v.path not in values]
  if missing:
    raise CheckpointError(f"{path} lacks optimizer variables "
                          f"({', '.join(missing[:3])}, ...): it was written "
                          "for another model or optimizer.")
  for variable in variables:
    value = values[variable.path]
    if tuple(value.shape) != tuple(variable.shape):
      raise CheckpointError(f"{path}: {variable.path} has shape "
                            f"{value.shape}, the model {variable.shape}.")
    variable.assign(value)
