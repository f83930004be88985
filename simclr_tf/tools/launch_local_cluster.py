"""Starts a multi-worker TensorFlow job on this machine, over loopback.

    python -m simclr_tf.tools.launch_local_cluster --num_workers=2 -- \
        python -m simclr_tf.run --strategy=multi_worker --model_dir=runs/mw

Each worker is the command after `--`, started with its own `TF_CONFIG`
(a cluster of `--num_workers` workers on 127.0.0.1, each on a free port, and
its own task index), which is what `tf.distribute.MultiWorkerMirroredStrategy`
reads. Worker 0 is the chief. Output lines are prefixed with the worker
("[worker 1] ..."). The launcher waits for every worker; if one fails, the
others are stopped (they would otherwise wait for it forever in a collective
op), and the launcher exits with the failed worker's status. A worker that
stopped on SIGTERM or SIGINT after saving a checkpoint (status 75, see
simclr_tf/run.py) is not a failure of the others: they stop at the same step
by themselves, and get time to. Ctrl-C sends SIGTERM to every worker, which
saves a checkpoint and stops them (they get 30 s to).

This is for trying multi-worker runs on one machine, and for the tests. On a
real cluster, start the same command on each machine with a TF_CONFIG that
names every machine (see docs/scaling_out.md).
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

# Exit codes of the launcher itself.
USAGE_ERROR = 2
TIMED_OUT = 124
INTERRUPTED = 130
# simclr_tf.run's status after a clean stop on a signal (STOPPED_BY_SIGNAL).
STOPPED_BY_SIGNAL = 75
# Seconds a worker gets to exit after SIGTERM before it is killed. After
# Ctrl-C or the timeout: enough to finish its loop and write a checkpoint.
# After a worker failed: short, as the others are stuck in collective ops
# with it and cannot save.
_SAVE_GRACE_SECONDS = 30.0
_TERMINATE_GRACE_SECONDS = 5.0


def free_ports(count):
  """`count` distinct TCP ports free on 127.0.0.1 right now.

  The sockets stay open until all ports are chosen, so the same port is not
  handed out twice; a port can still be taken by another program between
  here and the worker binding it, which is rare on a test machine.

  Args:
    count: how many ports.

  Returns:
    A list of port numbers.
  """
  if count < 1:
    raise ValueError(f"`count` must be positive. Received: count={count}")
  sockets = []
  try:
    for _ in range(count):
      sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      sock.bind(("127.0.0.1", 0))
      sockets.append(sock)
    return [sock.getsockname()[1] for sock in sockets]
  finally:
    for sock in sockets:
      sock.close()


def tf_configs(num_workers, ports=None):
  """The TF_CONFIG value of each worker of a loopback cluster.

  Args:
    num_workers: workers in the cluster, >= 1.
    ports: one port per worker; None picks free ones.

  Returns:
    A list of JSON strings; item i is worker i's TF_CONFIG.
  """
  if num_workers < 1:
    raise ValueError("`num_workers` must be positive. Received: "
                     f"num_workers={num_workers}")
  ports = list(ports) if ports is not None else free_ports(num_workers)
  if len(ports) != num_workers:
    raise ValueError(f"Need one port per worker. Received: ports={ports}, "
                     f"num_workers={num_workers}")
  cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
  return [json.dumps({"cluster": cluster,
                      "task": {"type": "worker", "index": index}})
          for index in range(num_workers)]


class Worker:
  """One worker process and the thread that copies its output."""

  def __init__(self, index, command, env):
    self.index = index
    self.process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, bufsize=1,
        # Its own process group: the launcher decides when workers stop, and
        # can stop a worker together with anything it started.
        start_new_session=True)
    self._reader = threading.Thread(target=self._copy_output, daemon=True)
    self._reader.start()

  def _copy_output(self):
    prefix = f"[worker {self.index}] "
    for line in self.process.stdout:
      sys.stdout.write(prefix + line)
      sys.stdout.flush()

  def signal(self, signum):
    try:
      os.killpg(self.process.pid, signum)
    except ProcessLookupError:
      pass

  def finish_output(self):
    self._reader.join(timeout=5)


def _wait_for(workers, seconds):
  deadline = time.time() + seconds
  for worker in workers:
    try:
      worker.process.wait(timeout=max(deadline - time.time(), 0.1))
    except subprocess.TimeoutExpired:
      return


def stop_all(workers, grace=_TERMINATE_GRACE_SECONDS):
  """SIGTERM every running worker, then SIGKILL the ones still running."""
  running = [w for w in workers if w.process.poll() is None]
  for worker in running:
    worker.signal(signal.SIGTERM)
  deadline = time.time() + grace
  for worker in running:
    try:
      worker.process.wait(timeout=max(deadline - time.time(), 0.1))
    except subprocess.TimeoutExpired:
      worker.signal(signal.SIGKILL)
      worker.process.wait()


def run_cluster(command, num_workers, timeout=None, log=print):
  """Runs `command` as every worker of a loopback cluster until all end.

  Args:
    command: the worker command line, a list of strings.
    num_workers: number of workers.
    timeout: seconds before every worker is stopped; None waits forever.
    log: where the launcher's own lines go.

  Returns:
    0 if every worker succeeded; else the status of the first worker to fail
    (128 + N if signal N killed it; TIMED_OUT on timeout, INTERRUPTED on
    Ctrl-C).
  """
  configs = tf_configs(num_workers)
  workers = []
  status = 0
  try:
    for index, tf_config in enumerate(configs):
      env = dict(os.environ, TF_CONFIG=tf_config)
      workers.append(Worker(index, command, env))
      log(f"[launcher] worker {index}: pid {workers[-1].process.pid}, "
          f"TF_CONFIG={tf_config}")
    deadline = None if timeout is None else time.time() + timeout
    while True:
      codes = [w.process.poll() for w in workers]
      failed = [(w, c) for w, c in zip(workers, codes) if c not in (None, 0)]
      if failed:
        worker, code = failed[0]
        # Killed by signal N (code -N): exit 128 + N, as shells report it.
        status = 128 - code if code < 0 else code
        how = f"was killed by signal {-code}" if code < 0 else \
            f"exited with status {code}"
        log(f"[launcher] worker {worker.index} {how}; stopping the others.")
        if code == STOPPED_BY_SIGNAL:
          # The others saved the same checkpoint and are exiting too.
          _wait_for(workers, _SAVE_GRACE_SECONDS)
        break
      if all(code == 0 for code in codes):
        break
      if deadline is not None and time.time() > deadline:
        log(f"[launcher] timed out after {timeout} s; stopping the workers.")
        status = TIMED_OUT
        break
      time.sleep(0.1)
  except KeyboardInterrupt:
    log("[launcher] interrupted; stopping the workers.")
    status = INTERRUPTED
  finally:
    stop_all(workers, _SAVE_GRACE_SECONDS
             if status in (TIMED_OUT, INTERRUPTED) else
             _TERMINATE_GRACE_SECONDS)
    for worker in workers:
      worker.finish_output()
  if status == 0:
    log(f"[launcher] all {num_workers} workers finished.")
  return status


def parse_args(argv):
  parser = argparse.ArgumentParser(
      description="Run a command as N workers of a loopback TF cluster.",
      usage="%(prog)s --num_workers=N [--timeout=S] -- command [args...]")
  parser.add_argument("--num_workers", type=int, default=2,
                      help="worker processes to start (default 2)")
  parser.add_argument("--timeout", type=float, default=None,
                      help="stop every worker after this many seconds")
  parser.add_argument("command", nargs=argparse.REMAINDER,
                      help="the worker command, after --")
  args = parser.parse_args(argv)
  command = args.command
  if command and command[0] == "--":
    command = command[1:]
  if not command:
    parser.error("give the worker command after --, e.g. -- python -m "
                 "simclr_tf.run --strategy=multi_worker")
  if args.num_workers < 1:
    parser.error(f"--num_workers must be positive. Received: "
                 f"num_workers={args.num_workers}")
  if args.timeout is not None and args.timeout <= 0:
    parser.error(f"--timeout must be positive. Received: "
                 f"timeout={args.timeout}")
  return args, command


def main(argv=None):
  args, command = parse_args(sys.argv[1:] if argv is None else argv)
  return run_cluster(command, args.num_workers, timeout=args.timeout,
                     log=lambda line: print(line, flush=True))


def entry():
  """Console-script entry point."""
  sys.exit(main())


if __name__ == "__main__":
  entry()
