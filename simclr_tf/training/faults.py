"""Faults that stop training: a non-finite loss, gradients (TF), weights
or BatchNorm statistics.

A NaN or infinite loss poisons the weights of every later step. Training
stops at the end of the loop that produced it, before anything is saved, so
the last checkpoint stays the last good state; the error names it.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# A variable whose path ends with one of these is a BatchNorm moving
# statistic (Keras' names, kept by `models.batch_norm`).
BATCH_NORM_STATISTICS = ("moving_mean", "moving_variance")

# Logged metrics that are losses; any of them non-finite stops training.
LOSS_METRICS = ("contrast_loss", "supervised_loss", "total_loss")


def non_finite_losses(values: Dict[str, float]) -> Dict[str, float]:
  """The loss metrics among `values` that are NaN or infinite.

  Args:
    values: metric name to value, as logged after a training loop.

  Returns:
    The non-finite loss metrics (empty if all are finite).
  """
  return {name: value for name, value in values.items()
          if name in LOSS_METRICS and not math.isfinite(value)}


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss and stopped without saving.

  Args:
    first_step: first step of the loop whose losses were non-finite.
    step: last step of that loop (the step the weights are at).
    losses: the non-finite loss metrics.
    last_good_checkpoint: the newest checkpoint, written before the fault;
      None if there is none yet.
  """

  def __init__(self, first_step: int, step: int, losses: Dict[str, float],
               last_good_checkpoint: Optional[str] = None):
    self.first_step = first_step
    self.step = step
    self.losses = dict(losses)
    self.last_good_checkpoint = last_good_checkpoint
    super().__init__(self.message())

  def with_checkpoint(self, path: Optional[str]) -> "NonFiniteLossError":
    """The same error (same class), naming `path` as the last good
    checkpoint."""
    return type(self)(self.first_step, self.step, self.losses, path)

  def message(self) -> str:
    """One line: where the loss went non-finite and what is still good."""
    shown = ", ".join(f"{name} {value}" for name, value in
                      sorted(self.losses.items()))
    return self._line(f"non-finite loss {self._where()}: {shown}")

  def _where(self) -> str:
    if self.first_step >= self.step:
      return f"at step {self.step}"
    # Losses are seen once per loop; --steps_per_loop=1 pins the step.
    return (f"at step {self.step} (in the loop of steps {self.first_step}-"
            f"{self.step})")

  def _line(self, fault: str) -> str:
    good = (self.last_good_checkpoint or
            "none (no checkpoint was written before it)")
    return (f"{fault}; the last good checkpoint is {good}. Nothing was saved "
            "after it; rerunning resumes from it (a lower --learning_rate "
            "may help).")

  def __str__(self):
    return self.message()


# The TensorFlow train step's gradient norm (models.simclr.GRAD_NORM).
GRAD_NORM_METRIC = "grad_norm"


def non_finite_gradients(values: Dict[str, float]) -> bool:
  """Whether the logged gradient norm among `values` is NaN or infinite.

  Args:
    values: metric name to value, as logged after a training loop.

  Returns:
    True if `values` has a non-finite `GRAD_NORM_METRIC`.
  """
  value = values.get(GRAD_NORM_METRIC)
  return value is not None and not math.isfinite(value)


class NonFiniteGradientsError(NonFiniteLossError):
  """The gradients went NaN or infinite while the logged losses stayed
  finite: an overflow in the backward pass, or NaN inputs that the fused
  BatchNorm kept out of the loss. The update has already poisoned the
  weights, so nothing is saved.

  Args:
    first_step: first step of the loop whose gradients were non-finite.
    step: last step of that loop.
    losses: the loss metrics and the gradient norm logged for that loop.
    last_good_checkpoint: the newest checkpoint, written before the fault.
  """

  def message(self) -> str:
    norm = self.losses.get(GRAD_NORM_METRIC)
    finite = ", ".join(f"{name} {value:.4g}" for name, value in
                       sorted(self.losses.items())
                       if name != GRAD_NORM_METRIC)
    return self._line(f"non-finite gradients {self._where()} "
                      f"(grad_norm {norm}; the losses were finite: "
                      f"{finite or 'none logged'})")


class NonFiniteWeightsError(NonFiniteLossError):
  """The weights went NaN or infinite while the logged losses stayed finite.

  XLA's vectorised CPU code for max and min does not propagate NaN (under
  `jax.jit`, `maximum(x, 0)` of a 4,096-element array maps NaN to 0; a
  3-element one keeps it), so ReLU can turn a NaN from the input or an
  overflow into a number: the weights go bad while the loss stays finite.
  The JAX train step reports whether the weights after the update are
  finite; the TensorFlow trainer checks them before each checkpoint
  (`check_finite_state`).

  Args:
    first_step: first step of the loop after which the weights were bad.
    step: last step of that loop.
    losses: the (finite) loss metrics logged for that loop.
    last_good_checkpoint: the newest checkpoint, written before the fault.
  """

  def message(self) -> str:
    shown = ", ".join(f"{name} {value:.4g}" for name, value in
                      sorted(self.losses.items()))
    return self._line(f"non-finite weights {self._where()} (the losses "
                      f"were finite: {shown})")


def non_finite_variables(variables) -> Tuple[List[str], List[str]]:
  """The paths of the variables holding a NaN or an infinity.

  Read on the host, one variable at a time (once per checkpoint, so the
  cost is one copy of the weights, not one per step).

  Args:
    variables: Keras variables, e.g. `model.weights`.

  Returns:
    (paths of non-finite weights, paths of non-finite BatchNorm moving
    statistics); both empty when everything is finite.
  """
  weights, statistics = [], []
  for variable in variables:
    if np.all(np.isfinite(np.asarray(variable.numpy()))):
      continue
    path = variable.path
    if path.rsplit("/", 1)[-1] in BATCH_NORM_STATISTICS:
      statistics.append(path)
    else:
      weights.append(path)
  return weights, statistics


class NonFiniteStatisticsError(NonFiniteLossError):
  """BatchNorm moving statistics went NaN or infinite while the losses and
  gradients stayed finite, found before a checkpoint would save them.

  They are updated from the batch, not by the gradients, so a NaN image
  that the fused kernel keeps out of the loss can still reach them, and
  they only matter at evaluation and in the exported model.

  Args:
    first_step: first step after the last checkpoint (checked finite).
    step: the step the checkpoint was for.
    losses: the (finite) loss metrics of the last loop.
    last_good_checkpoint: the newest checkpoint, written before the fault.
    paths: the non-finite statistics' variable paths.
  """

  def __init__(self, first_step: int, step: int, losses: Dict[str, float],
               last_good_checkpoint: Optional[str] = None,
               paths: Sequence[str] = ()):
    self.paths = tuple(paths)
    super().__init__(first_step, step, losses, last_good_checkpoint)

  def with_checkpoint(self, path):
    return type(self)(self.first_step, self.step, self.losses, path,
                      self.paths)

  def message(self) -> str:
    first = self.paths[0] if self.paths else "?"
    count = len(self.paths)
    return self._line(
        f"non-finite BatchNorm statistics {self._where()} "
        f"({count} tensor{'' if count == 1 else 's'}, the first {first}; "
        "the losses and gradients were finite)")


def check_finite_state(variables, first_step: int, step: int,
                       losses: Dict[str, float]) -> None:
  """Raises if any weight or BatchNorm statistic is NaN or infinite.

  Args:
    variables: the model's variables (`model.weights`).
    first_step: the first step since the state was last found finite.
    step: the current step.
    losses: the last logged (finite) losses, for the message.

  Raises:
    NonFiniteWeightsError: a weight is non-finite.
    NonFiniteStatisticsError: only BatchNorm statistics are.
  """
  weights, statistics = non_finite_variables(variables)
  if weights:
    raise NonFiniteWeightsError(first_step, step, losses)
  if statistics:
    raise NonFiniteStatisticsError(first_step, step, losses, paths=statistics)


def _lost_tasks(text: str) -> str:
  """The unhealthy tasks TensorFlow names in a collective abort, if any."""
  lines = text.splitlines()
  for index, line in enumerate(lines):
    if "unhealthy" in line:
      tasks = [task.strip() for task in lines[index + 1:]
               if task.strip().startswith("/job:")]
      if tasks:
        return f"unresponsive: {', '.join(tasks)}"
  for line in lines:
    if "aborted by" in line or "Socket closed" in line or \
        "Connection reset" in line:
      return line.strip()[:200]
  return next((line.strip()[:200] for line in lines if line.strip()),
              "no detail")


class WorkerLostError(RuntimeError):
  """A multi-worker job lost a worker; the survivors cannot go on alone.

  Args:
    detail: TensorFlow's error text (the unhealthy tasks are picked out).
    last_good_checkpoint: the newest checkpoint, or None.
  """

  def __init__(self, detail: str, last_good_checkpoint: Optional[str]):
    self.detail = _lost_tasks(detail)
    self.last_good_checkpoint = last_good_checkpoint
    good = last_good_checkpoint or "none yet"
    super().__init__(
        f"lost a worker of the cluster during training ({self.detail}); the "
        f"last good checkpoint is {good}. Restart every worker with the "
        "same command to resume from it.")
