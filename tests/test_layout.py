"""The package's layout: rooms by concern, no cycles, no upward imports,
TensorFlow-free where the JAX backend needs it, tools runnable by module."""

import os
import subprocess
import sys

import command_line
import import_graph


def test_the_package_root_holds_at_most_eight_modules():
  figures = import_graph.figures()
  assert figures["root_modules"] <= 8, figures


def test_no_import_cycles_and_no_upward_imports():
  graph = import_graph.edges()
  assert import_graph.cycles(graph) == []
  assert import_graph.upward_edges(graph) == []


def test_the_library_never_imports_the_program_or_its_tools():
  graph = import_graph.edges()
  for source, targets in graph.items():
    if import_graph.room(source) in ("run", "tools"):
      continue
    bad = [t for t in targets if import_graph.room(t) in ("run", "tools")]
    assert not bad, (source, bad)


def test_an_upward_import_is_found(tmp_path, monkeypatch):
  # The check itself can fail: storage importing training is an upward edge.
  graph = {"simclr_tf.storage.run_dir": {"simclr_tf.training.distribute"},
           "simclr_tf.training.distribute": set()}
  assert import_graph.upward_edges(graph) == [
      ("simclr_tf.storage.run_dir", "simclr_tf.training.distribute")]
  assert import_graph.cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]


def test_packages_the_jax_backend_uses_import_no_tensorflow():
  code = (
      "import sys\n"
      "import simclr_tf.storage.run_dir, simclr_tf.storage.atomic_dir\n"
      "import simclr_tf.storage.export_layout, simclr_tf.storage.config_file\n"
      "import simclr_tf.training.stages, simclr_tf.training.keras_trainer\n"
      "import simclr_tf.checkpoints.keras_weights, simclr_tf.augment.batched\n"
      "import simclr_tf.training, simclr_tf.checkpoints, simclr_tf.export\n"
      "import simclr_tf.augment, simclr_tf.evaluation, simclr_tf.storage\n"
      "print('tensorflow' in sys.modules)\n")
  result = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True,
      timeout=300, cwd=command_line.REPO,
      env=dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=command_line.REPO))
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "False"


def test_a_tool_runs_as_a_module_from_a_checkout(tmp_path):
  # The docs run tools as `python -m simclr_tf.tools.NAME` from the
  # repository root: no install, no PYTHONPATH.
  env = {key: value for key, value in os.environ.items()
         if key != "PYTHONPATH"}
  result = subprocess.run(
      [sys.executable, "-E", "-m", "simclr_tf.tools.show_augmentations",
       "--helpshort"], capture_output=True, text=True, timeout=300,
      cwd=command_line.REPO, env=env)
  # absl's --helpshort exits 1 after printing the tool's flags.
  assert "Error" not in result.stderr, result.stderr[-2000:]
  assert "--num_views" in result.stdout, result.stderr[-2000:]
