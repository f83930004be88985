"""The tools' dataset flags are the settings' declarations, not copies.

Checked from outside, as a user meets them: each tool's `--helpxml` (what
absl defined: name, help, default, type) against `DataConfig`'s
declarations, and a bound the declaration sets against the tool's exit.
"""

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

from simclr_tf import settings
from simclr_tf.config import AugmentConfig
from simclr_tf.config import DataConfig

import command_line

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ("embed", "linear_probe", "show_augmentations")
# The DataConfig settings a tool reads its images with.
DATASET_SETTINGS = ("dataset", "data_dir", "synthetic_train_examples",
                    "synthetic_test_examples", "synthetic_seed")
# absl's --helpxml type names.
_XML_TYPES = {str: "string", int: "int", float: "float", bool: "bool"}


def _tool(name, args):
  return subprocess.run(
      [sys.executable, "-m", f"tools.{name}"] + args, capture_output=True,
      text=True, cwd=REPO, timeout=300,
      env=dict(os.environ, PYTHONPATH=REPO))


def _declared(name, section=DataConfig):
  field, = [f for f in settings.fields(section)
            if settings.flag_name(section, f) == name]
  return field


def _defined_flags(tool):
  result = _tool(tool, ["--helpxml"])  # absl exits 1 after printing it
  assert result.stdout.startswith("<?xml"), result.stderr[-2000:]
  return {flag.findtext("name"): flag for flag in
          ElementTree.fromstring(result.stdout).iter("flag")}


@pytest.mark.parametrize("tool,section,names", [
    ("linear_probe", DataConfig, ("train_split", "eval_split")),
    ("show_augmentations", DataConfig, ("train_split", "image_size")),
    ("show_augmentations", AugmentConfig,
     ("color_jitter_strength", "use_blur", "crop_area_range",
      "blur_probability", "grayscale_probability")),
])
def test_tools_take_the_programs_names_and_defaults(tool, section, names):
  defined = _defined_flags(tool)
  for name in names:
    field = _declared(name, section)
    assert defined[name].findtext("meaning") == settings.help_of(field), name
    if isinstance(field.default, (bool, int, float, str)):
      expected = (str(field.default).lower() if isinstance(field.default, bool)
                  else str(field.default))
      assert defined[name].findtext("default") == expected, name


@pytest.mark.parametrize("tool", TOOLS)
def test_dataset_flags_have_the_declared_help_default_and_type(tool):
  result = _tool(tool, ["--helpxml"])  # absl exits 1 after printing it
  assert result.stdout.startswith("<?xml"), result.stderr[-2000:]
  defined = {flag.findtext("name"): flag for flag in
             ElementTree.fromstring(result.stdout).iter("flag")}
  for name in DATASET_SETTINGS:
    field = _declared(name)
    flag = defined[name]
    assert flag.findtext("meaning") == settings.help_of(field), name
    # absl writes a None default as an empty element.
    expected_default = "" if field.default is None else str(field.default)
    assert flag.findtext("default") == expected_default, name
    base, _, _ = settings.value_type(DataConfig, field)
    assert flag.findtext("type") == _XML_TYPES[base], name
  # `--help` (not only --helpfull) lists them as the tool's own flags.
  short_help = _tool(tool, ["--help"]).stdout
  assert all(f"--{name}:" in short_help for name in DATASET_SETTINGS)


def test_a_declared_bound_stops_the_tool_in_the_programs_words(tmp_path):
  field = _declared("synthetic_train_examples")
  assert field.metadata["at_least"] == 1  # the bound checked below
  result = _tool("linear_probe", [
      "--baseline=raw_pixels", "--image_size=8", "--dataset=synthetic_shapes",
      f"--data_dir={tmp_path}", "--synthetic_train_examples=0",
      f"--output={tmp_path / 'probe.json'}"])
  assert command_line.one_error_line(result, "linear_probe") == (
      "linear_probe: error: `synthetic_train_examples` must be >= 1. "
      "Received: synthetic_train_examples=0")
  assert not (tmp_path / "probe.json").exists()
