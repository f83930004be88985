r"""The SimCLR paper's ablations, rerun: `simclr-tf-study --study=NAME`.

  python -m simclr_tf.tools.study --study=projection_head --repeats=3 \
      --output_dir=runs/study_head
  python -m simclr_tf.tools.study --study=temperature --dataset=sklearn_digits

Each configuration of the study (`simclr_tf.evaluation.studies`), for each
seed, is a normal run of the program (`python -m simclr_tf.run`) in
`OUTPUT_DIR/<configuration>/seed_<k>`, so `tensorboard --logdir OUTPUT_DIR`
shows them all. The study's base is the demo preset shortened to minutes
(`studies.BASE_OVERRIDES`); every other flag of the program overrides it
(`--dataset`, `--train_epochs`, ..., or a `--preset`, which replaces the
base), except the settings the study varies. Runs are taken seed by seed,
so a study stopped early has one of each configuration first.

A study killed and rerun continues: finished runs (with their
`study_metrics.json`) are read back, an unfinished one resumes from its
checkpoint; `--remeasure` measures the finished runs again without
training any (for results written by an earlier version). After every run
`OUTPUT_DIR` gets `results.json`,
`results.md` (means ± standard errors, the paper's figure beside, the
verdict of each finding) and `results.png` (drawn like the paper's figure).
"""

import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from simclr_tf.evaluation import studies  # noqa: E402
from simclr_tf.evaluation import study_tables  # noqa: E402
from simclr_tf.storage import files  # noqa: E402
from simclr_tf.tools import cli  # noqa: E402
from simclr_tf.tools import program_flags  # noqa: E402

TOOL = "study"
FLAGS = flags.FLAGS
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RUN_METRICS = "study_metrics.json"
RUN_LOG = "study_log.txt"

_STUDY = flags.DEFINE_enum(
    "study", None, list(studies.STUDIES), "The ablation to run.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "Seeds per configuration (the verdicts need at least 2).")
_FIRST_SEED = flags.DEFINE_integer(
    "first_seed", 0, "The first seed; runs use first_seed .. "
    "first_seed + repeats - 1.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where the runs and results go; default "
    "runs/study_<study>.")
_RUNS = flags.DEFINE_list(
    "runs", None, "Only these configurations (names as --list prints); "
    "default all.")
_LIST = flags.DEFINE_bool(
    "list", False, "Print the study's configurations and findings, run "
    "nothing.")
_REMEASURE = flags.DEFINE_bool(
    "remeasure", False, "Measure the finished runs again (the study's "
    "probes and the metrics read from each run) instead of reading back "
    "their stored metrics; no run is trained again. For results written "
    "by an earlier version.")

# The study's own flags; every other flag on the command line is a setting
# of the program and is passed to each run.
OWN_FLAGS = ("study", "repeats", "first_seed", "output_dir", "runs", "list",
             "remeasure")
# Set by the study per run.
PER_RUN_FLAGS = {"model_dir": "--output_dir", "seed": "--first_seed"}


def _flag_name(token):
  name = token.lstrip("-").split("=", 1)[0]
  if (name.startswith("no") and name[2:] in FLAGS and
      isinstance(FLAGS[name[2:]], flags.BooleanFlag)):
    return name[2:]
  return name


def program_tokens(argv):
  """The command line's program settings (not the study's own flags)."""
  return [token for token in argv[1:] if token.startswith("-") and
          _flag_name(token) not in OWN_FLAGS]


def check_tokens(study, tokens):
  """Refuses settings the study sets itself, but for those it sets as
  multiples of the base (the batch_size study's train_epochs): for them the
  command line sets the base.

  Raises:
    ValueError: naming the flag and why.
  """
  for token in tokens:
    name = _flag_name(token)
    if name in study.varies and not study.scales(name):
      raise ValueError(
          f"--{name} is what the {study.name} study varies (its "
          f"configurations set {', '.join(study.varies)}); leave it out.")
    if name in PER_RUN_FLAGS:
      raise ValueError(f"--{name} is set per run by the study; use "
                       f"{PER_RUN_FLAGS[name]} instead.")
    if name == "flagfile":
      raise ValueError("--flagfile is not passed to the study's runs; use "
                       "--preset=NAME or give the settings as flags.")


def base_tokens(tokens):
  """The settings under every run: the shortened demo, or the --preset.

  A base setting that the command line gives again is left out, so the
  recorded base names each setting once, with the value the runs use.
  """
  given = {_flag_name(token) for token in tokens}
  if "preset" in given:
    return list(tokens)
  return ([f"--preset={studies.BASE_PRESET}"] +
          [f"--{name}={value}" for name, value in
           studies.BASE_OVERRIDES.items() if name not in given] +
          list(tokens))


def run_command(tokens, configuration, base, model_dir, seed):
  """The program's command line for one run."""
  overrides = studies.resolve_overrides(configuration.overrides, base)
  return ([sys.executable, "-m", "simclr_tf.run"] + list(tokens) +
          [f"--{name}={value}" for name, value in overrides.items()] +
          [f"--model_dir={model_dir}", f"--seed={seed}"])


def cpu_description() -> str:
  """The CPU model, its cores, and whether it has AVX-512 and bfloat16."""
  model, cpu_flags = platform.processor() or "unknown CPU", set()
  try:
    with open("/proc/cpuinfo") as handle:
      for line in handle:
        if line.startswith("model name") and ":" in line:
          model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and ":" in line:
          cpu_flags = set(line.split(":", 1)[1].split())
  except OSError:
    pass
  vector = ("AVX-512" if "avx512f" in cpu_flags else
            "AVX2 only (no AVX-512)" if "avx2" in cpu_flags else
            "no AVX2")
  bf16 = ("native bfloat16" if {"avx512_bf16", "amx_bf16"} & cpu_flags
          else "no native bfloat16")
  return f"{model}, {os.cpu_count()} cores, {vector}, {bf16}"


def _format_seconds(seconds):
  minutes, seconds = divmod(int(round(seconds)), 60)
  return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _percent(metrics, key):
  value = metrics.get(key)
  return "n/a" if value is None else f"{100 * value:.1f}%"


def _last_error(log_path):
  try:
    with open(log_path, errors="replace") as handle:
      lines = [line.strip() for line in handle if line.strip()]
  except OSError:
    return "no log"
  errors = [line for line in lines if "error:" in line]
  return (errors or lines or ["no output"])[-1]


class _Child:
  """The run in progress; SIGTERM to the study is passed on to it, so it
  saves a checkpoint and the rerun resumes it.

  A SIGTERM that comes between runs (while the study probes or draws) is
  remembered, so the study stops before the next run instead of losing it.
  """

  def __init__(self):
    self.process = None
    self.stop_requested = False

  def forward(self, signum, frame):
    del frame
    self.stop_requested = True
    if self.process is not None and self.process.poll() is None:
      self.process.send_signal(signum)

  def note_interrupt(self, signum, frame):
    del signum, frame
    self.stop_requested = True

  def start(self, command, log_file):
    self.process = subprocess.Popen(command, stdout=log_file,
                                    stderr=subprocess.STDOUT)
    if self.stop_requested:  # the signal came while the run was starting
      self.process.send_signal(signal.SIGTERM)
    return self.process


def _write_results(study, output_dir, runs, header):
  rows = study_tables.summarize(study, runs)
  findings = [study_tables.decide(f, runs) for f in study.findings]
  files.atomic_write_text(os.path.join(output_dir, RESULTS_JSON), json.dumps(
      {"study": study.name, "title": study.title, "header": header,
       "runs": runs, "configurations": rows, "findings": findings},
      indent=2, sort_keys=True))
  files.atomic_write_text(os.path.join(output_dir, RESULTS_MD),
                          study_tables.markdown(study, rows, findings,
                                                header=header))
  # Imported here: matplotlib is needed only to draw.
  from simclr_tf.evaluation import study_figures  # pylint: disable=g-import-not-at-top
  base_epochs = int(FLAGS["train_epochs"].value or 1)
  study_figures.draw(study, rows, os.path.join(
      output_dir, study_figures.FIGURE_FILE), base_epochs=base_epochs,
                     subtitle=header.splitlines()[0] if header else "")
  return findings


def _measure(study, model_dir):
  """Runs the study's probes on a finished run and reads its metrics."""
  # Imported here: it needs TensorFlow, which --list does not.
  from simclr_tf.evaluation import study_metrics  # pylint: disable=g-import-not-at-top
  study_metrics.probe_run(model_dir, head_output=study.needs_head_probe,
                          log=lambda line: None)
  return study_metrics.read_run(model_dir)


def main(argv):
  if _STUDY.value is None:
    raise ValueError("--study is required: one of "
                     f"{', '.join(studies.STUDIES)}.")
  cli.check_at_least((_REPEATS, 1), (_FIRST_SEED, 0))
  study = studies.get(_STUDY.value)
  names = list(_RUNS.value or study.names())
  for name in names:
    study.configuration(name)  # raises KeyError naming the known ones
  if _LIST.value:
    for configuration in study.configurations:
      print(f"{configuration.name:28} " + " ".join(
          f"--{k}={v}" for k, v in configuration.overrides.items()))
    for finding in study.findings:
      print(f"finding: {finding.claim} [{finding.paper}]")
    return 0
  user_tokens = program_tokens(_command_line)
  check_tokens(study, user_tokens)
  tokens = base_tokens(user_tokens)
  base = {name: str(FLAGS[name].value) for name in ("train_epochs",)}
  output_dir = os.path.abspath(_OUTPUT_DIR.value or
                               os.path.join("runs", f"study_{study.name}"))
  os.makedirs(output_dir, exist_ok=True)
  seeds = range(_FIRST_SEED.value, _FIRST_SEED.value + _REPEATS.value)
  plan = [(study.configuration(name), seed) for seed in seeds
          for name in names]
  header = (f"simclr-tf-study --study={study.name} "
            f"--repeats={_REPEATS.value} " + " ".join(user_tokens)).strip()
  header += (f"\nbase: {' '.join(tokens)}\nmachine: {cpu_description()}; "
             f"date: {datetime.date.today().isoformat()}")
  print(f"[study {study.name}] {len(plan)} runs ({len(names)} "
        f"configurations x {_REPEATS.value} seeds) in {output_dir}; "
        f"machine: {cpu_description()}", flush=True)
  child = _Child()
  signal.signal(signal.SIGTERM, child.forward)
  # Ctrl-C reaches the run by itself (same process group); the study only
  # notes it, so it stops after the run has saved its checkpoint.
  signal.signal(signal.SIGINT, child.note_interrupt)
  runs, spent = [], []
  for index, (configuration, seed) in enumerate(plan, start=1):
    model_dir = os.path.join(output_dir, configuration.name, f"seed_{seed}")
    done_path = os.path.join(model_dir, RUN_METRICS)
    if os.path.exists(done_path):
      with open(done_path) as handle:
        record = json.load(handle)
      if _REMEASURE.value:
        record["metrics"] = dict(_measure(study, model_dir), **{
            studies.WALL_SECONDS: record["metrics"][studies.WALL_SECONDS]})
        files.atomic_write_text(done_path, json.dumps(record, indent=2,
                                                      sort_keys=True))
        print(f"[study {study.name}] measured {configuration.name} seed "
              f"{seed} again.", flush=True)
      runs.append(record)
      continue
    if child.stop_requested:
      print(f"[study {study.name}] stopped before {configuration.name} "
            f"seed {seed}. Rerun the same command to continue.",
            file=sys.stderr, flush=True)
      return cli.STOPPED_BY_SIGNAL
    os.makedirs(model_dir, exist_ok=True)
    command = run_command(tokens, configuration, base, model_dir, seed)
    start = time.time()
    log_path = os.path.join(model_dir, RUN_LOG)
    with open(log_path, "a") as log_file:
      log_file.write("$ " + " ".join(command[1:]) + "\n")
      log_file.flush()
      status = child.start(command, log_file).wait()
      child.process = None
    if (status == cli.STOPPED_BY_SIGNAL or status < 0 or
        (status != 0 and child.stop_requested)):
      print(f"[study {study.name}] stopped during {configuration.name} "
            f"seed {seed}; its checkpoint is kept. Rerun the same command "
            "to continue.", file=sys.stderr, flush=True)
      return cli.STOPPED_BY_SIGNAL
    if status != 0:
      return cli.fail(
          f"run {configuration.name} seed {seed} failed (exit {status}): "
          f"{_last_error(log_path)} (log: {log_path})",
          status=cli.TRAINING_FAILED, tool=TOOL)
    metrics = _measure(study, model_dir)
    seconds = time.time() - start
    metrics[studies.WALL_SECONDS] = seconds
    record = {"name": configuration.name, "seed": seed,
              "overrides": dict(configuration.overrides),
              "model_dir": model_dir, "metrics": metrics}
    files.atomic_write_text(done_path, json.dumps(record, indent=2,
                                                  sort_keys=True))
    runs.append(record)
    spent.append(seconds)
    _write_results(study, output_dir, runs, header)
    left = len(plan) - index
    estimate = sum(spent) / len(spent) * left
    print(f"[study {study.name}] run {index}/{len(plan)} "
          f"{configuration.name} seed {seed}: linear eval "
          f"{_percent(metrics, studies.LINEAR_EVAL_TOP_1)}, probe "
          f"{_percent(metrics, studies.PROBE_TOP_1)}, kNN "
          f"{_percent(metrics, studies.KNN_TOP_1)} in "
          f"{_format_seconds(seconds)}; {left} runs left, about "
          f"{_format_seconds(estimate)} left", flush=True)
  findings = _write_results(study, output_dir, runs, header)
  for finding in findings:
    print(f"[study {study.name}] {finding['verdict']:>13}: "
          f"{finding['claim']}", flush=True)
  print(f"Results: {os.path.join(output_dir, RESULTS_MD)}, "
        f"{os.path.join(output_dir, RESULTS_JSON)}, "
        f"{os.path.join(output_dir, 'results.png')}. TensorBoard: "
        f"tensorboard --logdir {output_dir}", flush=True)
  return 0


def _user_errors():
  return (ValueError, KeyError, OSError)


# The command line as typed (before the base and the preset are put under
# it): its program settings are what the user overrides.
_command_line = []


def argv_to_parse(argv):
  """The command line the study parses: the base under the user's program
  settings, then the study's own flags, a preset's flagfile first.

  Parsed as each run will be, so a bad flag stops the study before any run
  and the flags hold the base.

  Args:
    argv: the command line as typed, program name first.

  Returns:
    The argv for absl.

  Raises:
    config_lib.ConfigError: for an unknown preset.
  """
  own = [token for token in argv[1:]
         if not token.startswith("-") or _flag_name(token) in OWN_FLAGS]
  merged = [argv[0]] + base_tokens(program_tokens(argv)) + own
  return program_flags.argv_with_preset(merged, demo_by_default=False)


def entry():
  """Console-script entry point."""
  _command_line[:] = sys.argv
  try:
    sys.argv = argv_to_parse(sys.argv)
  except Exception as error:  # pylint: disable=broad-except
    sys.exit(cli.fail(str(error), tool=TOOL))
  cli.run(TOOL, main, _user_errors)


if __name__ == "__main__":
  entry()
