r"""Checks the docs' commands against the code: `python -m
simclr_tf.tools.check_docs [--root=DIR] [FILE.md ...]`.

Every shell command in a fenced block of `README.md` and `docs/*.md` that
starts this package's program or one of its tools is parsed by that
program's own flag parser, in a fresh process per program, as the program
would parse it: presets and flagfiles applied, the study's base under its
settings. Commands of the program itself (`simclr-tf`, `python -m
simclr_tf.run`) also build and validate their `ExperimentConfig`, so a mode,
dataset name or combination of settings that the program refuses fails
here. A flag that no longer exists, a preset that is not shipped or a tool
that moved fails the check with the file and line of the command.

A `$ command` shown with the `error: ...` line that it prints must be
refused with that line. The commands are not run: most train for minutes
or read data, exports and checkpoints that are not on this machine.
Commands of other programs (`pip`, `gsutil`, `pytest`) are listed as not
checked. `tests/test_check_docs.py` runs this over the repository's docs.

Exit status: 0 when every checked command parses, 1 when one does not, 2 for
bad arguments.
"""

import argparse
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

PROGRAM_MODULE = "simclr_tf.run"
STUDY_MODULE = "simclr_tf.tools.study"
_REPO = pathlib.Path(__file__).resolve().parent.parent.parent
# The console scripts of pyproject.toml (the docs are in a checkout, so is it).
_SCRIPT_LINE = re.compile(r'^(simclr-tf[\w-]*)\s*=\s*"([\w.]+):\w+"')
_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Fenced blocks of these languages may hold shell commands (a text block
# shows the command that wrote a result); python blocks hold code.
_SHELL_BLOCKS = ("", "bash", "sh", "shell", "console", "text")
# Programs other than this package's that the docs run, reported as not
# checked; any other first word in a shell block is output, not a command.
OTHER_PROGRAMS = ("pip", "pip3", "tensorboard", "bash", "sh", "gsutil", "git",
                  "cd", "export", ".", "source", "mkdir", "ls", "cp", "mv",
                  "rm", "curl", "wget", "tar", "unzip", "nvidia-smi",
                  "docker")
_ERROR_LINE = re.compile(r"^(?:[\w-]+: )?error: (.*)$")
_LAUNCHER = "simclr_tf.tools.launch_local_cluster"


@dataclasses.dataclass(frozen=True)
class Command:
  """One command of the docs.

  Attributes:
    path: the Markdown file, relative to the root.
    line: the line of the command's first line in that file (1-based).
    text: the command as written, continuation lines joined.
    module: the package module that it runs, or None for another program.
    argv: the arguments after the program, the module's name first.
    expected_error: for a `$ command` shown with the `error: ...` line that
      it prints, that line's message; the command must be refused with it.
  """
  path: str
  line: int
  text: str
  module: Optional[str]
  argv: List[str]
  expected_error: Optional[str] = None


def console_scripts(root: pathlib.Path = _REPO) -> Dict[str, str]:
  """The package's console scripts, from the checkout's pyproject.toml.

  Args:
    root: the checkout.

  Returns:
    {script name: module}.
  """
  scripts = {}
  for line in (root / "pyproject.toml").read_text(
      encoding="utf-8").splitlines():
    match = _SCRIPT_LINE.match(line.strip())
    if match:
      scripts[match.group(1)] = match.group(2)
  return scripts


def _shell_lines(text: str):
  """(first line number, joined line, the error line after it or None) of
  each line of the fenced shell blocks."""
  fenced, shell = False, False
  pending, start = "", 0
  joined = []
  for number, line in enumerate(text.splitlines(), start=1):
    if line.lstrip().startswith("```"):
      fenced = not fenced
      shell = fenced and line.strip()[3:].strip().lower() in _SHELL_BLOCKS
      pending = ""
      joined.append(None)  # a block's end: no error line follows across it
      continue
    if not shell:
      continue
    stripped = line.strip()
    if not pending:
      start = number
    if stripped.endswith("\\"):
      pending += stripped[:-1] + " "
      continue
    joined.append((start, pending + stripped))
    pending = ""
  for index, item in enumerate(joined):
    if item is None:
      continue
    following = joined[index + 1] if index + 1 < len(joined) else None
    error = None
    if item[1].startswith("$ ") and following is not None:
      match = _ERROR_LINE.match(following[1])
      error = match.group(1) if match else None
    yield item[0], item[1], error


def _simple_commands(line: str) -> List[List[str]]:
  """The token lists of a shell line's simple commands (split at `&&`,
  `||`, `;` and `|`), comments dropped."""
  lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  lexer.commenters = "#"
  parts = [[]]
  for token in lexer:
    if token in ("&&", "||", ";", "|"):
      parts.append([])
    else:
      parts[-1].append(token)
  return [tokens for tokens in parts if tokens]


def _module_of(tokens: Sequence[str], scripts: Dict[str, str]):
  """(module, its arguments) of one simple command, or (None, tokens)."""
  tokens = list(tokens)
  while tokens and _ASSIGNMENT.match(tokens[0]):
    tokens.pop(0)  # VAR=value before the command
  if not tokens:
    return None, tokens
  if tokens[0] in scripts:
    return scripts[tokens[0]], tokens[1:]
  if _PYTHON.match(os.path.basename(tokens[0])) and len(tokens) > 1:
    rest = [t for t in tokens[1:] if t not in ("-E", "-u", "-B")]
    if len(rest) > 1 and rest[0] == "-m" and rest[1].startswith("simclr_tf"):
      return rest[1], rest[2:]
    if rest and rest[0].endswith(".py") and "tools/" in rest[0]:
      return "simclr_tf.tools." + pathlib.Path(rest[0]).stem, rest[1:]
  return None, tokens


def commands(path: pathlib.Path, root: pathlib.Path = _REPO,
             scripts: Optional[Dict[str, str]] = None) -> List[Command]:
  """The commands in one Markdown file's fenced blocks.

  A line of `a && b ; c` gives three commands; `$ ` prompts and comments
  are dropped; lines ending in a backslash are joined.

  Args:
    path: the Markdown file.
    root: the directory that paths are shown relative to.
    scripts: {console script: module}; default `console_scripts(root)`.

  Returns:
    The commands, in file order.
  """
  scripts = console_scripts(root) if scripts is None else scripts
  try:
    shown = str(path.resolve().relative_to(root.resolve()))
  except ValueError:
    shown = str(path)
  found = []
  for number, line, error in _shell_lines(path.read_text(encoding="utf-8")):
    line = line[2:] if line.startswith("$ ") else line
    if not line or line.startswith("#"):
      continue
    parts = []
    try:
      simple = _simple_commands(line)
    except ValueError:  # unbalanced quotes: not a shell line
      continue
    for tokens in simple:
      part = " ".join(shlex.quote(token) for token in tokens)
      module, argv = _module_of(tokens, scripts)
      if module is None and tokens[0] not in OTHER_PROGRAMS and \
          not _PYTHON.match(os.path.basename(tokens[0])):
        continue  # output shown in a shell block
      parts.append(Command(shown, number, part, module,
                           [module or tokens[0]] + list(argv)))
      if module == _LAUNCHER and "--" in argv:
        # The launcher's worker command is a command of its own.
        inner = argv[argv.index("--") + 1:]
        inner_module, inner_argv = _module_of(inner, scripts)
        if inner_module:
          parts.append(Command(shown, number, " ".join(inner), inner_module,
                               [inner_module] + list(inner_argv)))
    if error is not None and len(parts) == 1:
      parts = [dataclasses.replace(parts[0], expected_error=error)]
    found.extend(parts)
  return found


def default_docs(root: pathlib.Path = _REPO) -> List[pathlib.Path]:
  """README.md and every page of docs/ under `root`."""
  return [root / "README.md"] + sorted((root / "docs").glob("*.md"))


def _parse_one(module_name: str, argv: List[str]) -> Optional[str]:
  """Parses one command line as `module_name` would; the error or None."""
  import importlib  # pylint: disable=g-import-not-at-top

  from absl import flags  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(module_name)
  if hasattr(module, "parse_args"):
    # An argparse tool (the launcher): its parser exits on bad input.
    module.parse_args(argv[1:])
    return None
  from simclr_tf.tools import cli  # pylint: disable=g-import-not-at-top
  program_flags = None
  if module_name == PROGRAM_MODULE:
    # Imported by the program only: it defines the program's flags, which
    # a tool's own would clash with.
    from simclr_tf.tools import program_flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS
  flag_values.unparse_flags()
  # The program prints a line when the demo preset applies; this process's
  # stdout is the report.
  with contextlib.redirect_stdout(sys.stderr):
    if program_flags:
      argv = program_flags.argv_with_preset(argv)
    elif module_name == STUDY_MODULE:
      argv = module.argv_to_parse(argv)
    left = flag_values(argv)
    refusal = io.StringIO()
    with contextlib.redirect_stderr(refusal):
      if cli.reject_positional(left) is not None:
        return _ERROR_LINE.match(refusal.getvalue().strip()).group(1)
    if program_flags:
      program_flags.config_from_flags().validate()
    elif module_name == STUDY_MODULE and flag_values["study"].value:
      from simclr_tf.evaluation import studies  # pylint: disable=g-import-not-at-top
      studies.get(flag_values["study"].value)
  return None


def _worker(module_name: str) -> None:
  """Reads argvs (JSON) on stdin, prints one error or null per argv."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  results = []
  for argv in json.load(sys.stdin):
    try:
      results.append(_parse_one(module_name, argv))
    except SystemExit as error:
      results.append(f"exited while parsing (status {error.code})")
    except Exception as error:  # pylint: disable=broad-except
      # The line the program would print after "error: ".
      text = str(error).strip().splitlines()
      results.append(text[0] if text else type(error).__name__)
  print(json.dumps(results))


def check(paths: Sequence[pathlib.Path], root: pathlib.Path = _REPO,
          log=print) -> Dict[str, list]:
  """Parses every package command of `paths` with its program's parser.

  Args:
    paths: Markdown files.
    root: the checkout: flagfiles in the commands are relative to it.
    log: takes one line per command.

  Returns:
    {"passed": [...], "failed": [(command, error)], "other": [...]}, the
    commands of other programs under "other".
  """
  found = [c for path in paths for c in commands(path, root)]
  by_module: Dict[str, List[Command]] = {}
  for command in found:
    if command.module:
      by_module.setdefault(command.module, []).append(command)
  report = {"passed": [], "failed": [],
            "other": [c for c in found if not c.module]}
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(_REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                      if p])
  # The docs' commands name the TensorFlow backend unless they say
  # otherwise; parsing needs no accelerator.
  env.pop("KERAS_BACKEND", None)
  for module, group in sorted(by_module.items()):
    log(f"[check_docs] parsing {len(group)} command(s) of {module}")
    result = subprocess.run(
        [sys.executable, "-c",
         "import sys; from simclr_tf.tools import check_docs; "
         "check_docs._worker(sys.argv[1])", module],
        input=json.dumps([c.argv for c in group]), capture_output=True,
        text=True, cwd=root, env=env, timeout=600)
    try:
      errors = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
      tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
      errors = [f"{module} could not be imported: {tail}"] * len(group)
    for command, error in zip(group, errors):
      expected = command.expected_error
      if expected is not None:
        if error is None:
          error = f"the docs show it refused with {expected!r}; it parses"
        elif error != expected:
          error = (f"the docs show it refused with {expected!r}; the "
                   f"program says {error!r}")
        else:
          error = None
      if error is None:
        report["passed"].append(command)
      else:
        report["failed"].append((command, error))
        log(f"FAIL {command.path}:{command.line}: {command.text}\n"
            f"     {error}")
  return report


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="check_docs", description=__doc__.split("\n\n")[0])
  parser.add_argument("files", nargs="*", type=pathlib.Path,
                      help="Markdown files (default: README.md, docs/*.md)")
  parser.add_argument("--root", type=pathlib.Path, default=_REPO,
                      help="the checkout (default: this package's)")
  args = parser.parse_args(argv)
  paths = args.files or default_docs(args.root)
  missing = [str(p) for p in paths if not p.is_file()]
  if missing:
    print(f"check_docs: error: no such file: {', '.join(missing)} (the docs "
          "are in a checkout of the repository, not in an installed "
          "package; pass --root=CHECKOUT)", file=sys.stderr)
    return 2
  report = check(paths, args.root)
  others = sorted({c.argv[0] for c in report["other"]})
  print(f"[check_docs] {len(report['passed'])} command(s) parse, "
        f"{len(report['failed'])} fail, in {len(paths)} file(s); not "
        f"checked (other programs): {', '.join(others) or 'none'}")
  return 1 if report["failed"] else 0


if __name__ == "__main__":
  sys.exit(main())
