"""Stopping on SIGTERM or SIGINT: finish the loop, checkpoint, exit.

Cloud VMs and schedulers (GCE spot instances, Kubernetes, Slurm) send
SIGTERM some seconds before they kill a job; Ctrl-C sends SIGINT. While
training, `StopOnSignal` turns either into a request that training reads
between loops: the loop in flight finishes (a host call of
`--steps_per_loop` steps cannot be cut short: TensorFlow runs Python signal
handlers only once it returns), a checkpoint is saved at that step on every
worker, and `StoppedBySignal` ends the run. Rerunning the same command
resumes at that step.

Why not `tf.distribute.experimental.PreemptionCheckpointHandler`: it does the
same for MultiWorkerMirroredStrategy, but in TensorFlow 2.21 it

- restores the latest checkpoint itself when it is created (through
  `CheckpointManager.restore_or_initialize`), bypassing the check for
  damaged checkpoints in `checkpoints.resumable_checkpoint`, and adds its own
  counter variable to our checkpoint object;
- does nothing on GCE CPU or TPU VMs (its own code returns early there),
  which are where spot preemptions happen most;
- listens for SIGTERM only, not SIGINT, and exits the process itself
  (`sys.exit(42)` unless given an `exit_fn`), from inside the callback;
- saves one run call after the signal, counted by its own counter, which
  with `--steps_per_loop` is one more loop.

The same thing by hand is small and covers every strategy. On one process
(one device, MirroredStrategy, a TPU host) the request is local. Under
MultiWorkerMirroredStrategy the workers must agree: saving runs collective
ops that every worker has to join, at the same step. So after each loop
every worker adds its own request to one all-reduce of two numbers (which
signals it received); all see the same sum and stop at the same step, with
the same checkpoint. That is one tiny collective per loop, negligible beside
a loop of training steps.
"""

import signal
import threading
from typing import Optional

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StoppedBySignal(Exception):
  """Training stopped on a signal after saving a checkpoint.

  Args:
    signal_name: "SIGTERM" or "SIGINT".
    step: the step training stopped (and saved) at.
    checkpoint: the checkpoint prefix that holds it, in model_dir.
  """

  def __init__(self, signal_name: str, step: int,
               checkpoint: Optional[str] = None):
    self.signal_name = signal_name
    self.step = step
    self.checkpoint = checkpoint
    super().__init__(self.message())

  def with_checkpoint(self, path: str) -> "StoppedBySignal":
    """The same stop, naming `path` as its checkpoint."""
    return StoppedBySignal(self.signal_name, self.step, path)

  def message(self) -> str:
    """The one line the program ends with."""
    return (f"stopped by {self.signal_name} at step {self.step}; checkpoint "
            f"{self.checkpoint}; rerun the same command to resume")

  def __str__(self):
    return self.message()


class StopOnSignal:
  """Records SIGTERM and SIGINT while installed, for training to act on.

  The handler only records the signal: it runs in the main thread between
  Python bytecodes, possibly in the middle of a checkpoint write, so it does
  no I/O and touches no TensorFlow state. A second signal, even while the
  final checkpoint is being written, is recorded the same way and changes
  nothing. Outside the `with` block the previous handlers are back.

  Args:
    strategy: the `tf.distribute.Strategy` training runs under, to agree on
      stopping across workers; None for a single process.
    signals: the signals to catch.
  """

  def __init__(self, strategy=None, signals=STOP_SIGNALS):
    self.strategy = strategy
    self.signals = tuple(signals)
    self.received = []
    self._previous = {}

  def install(self) -> bool:
    """Installs the handlers; False (nothing installed) off the main thread.

    Python only lets the main thread set signal handlers; a library user
    training in another thread keeps the default behaviour.
    """
    if threading.current_thread() is not threading.main_thread():
      return False
    for signum in self.signals:
      self._previous[signum] = signal.signal(signum, self._record)
    return True

  def uninstall(self) -> None:
    """Puts the previous handlers back."""
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def __enter__(self):
    self.install()
    return self

  def __exit__(self, *exc_info):
    self.uninstall()

  def _record(self, signum, frame):
    del frame
    self.received.append(signum)  # list.append is atomic; nothing else.

  def agreed_signal(self) -> Optional[str]:
    """The signal any worker received, once all have asked; None if none.

    Every worker must call this at the same point of every loop under
    MultiWorkerMirroredStrategy (it runs a collective op there).

    Returns:
      "SIGTERM" (which wins over SIGINT when both came) or "SIGINT".
    """
    counts = [sum(1 for s in self.received if s == signum)
              for signum in self.signals]
    if self.strategy is not None:
      # Only a strategy needs TensorFlow; the JAX path passes none.
      import tensorflow as tf
      if isinstance(self.strategy,
                    tf.distribute.MultiWorkerMirroredStrategy):
        counts = self._summed_over_workers(counts)
    for signum, count in zip(self.signals, counts):
      if count:
        return signal.Signals(signum).name
    return None

  def _summed_over_workers(self, counts):
    import tensorflow as tf
    strategy = self.strategy
    local = tf.constant(counts, tf.float32)
    # Every replica holds its worker's counts, so each sum is the workers'
    # counts times their replicas: nonzero exactly when some worker got it.
    values = strategy.experimental_distribute_values_from_function(
        lambda context: local)
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)
    return [int(round(value)) for value in total.numpy()]
