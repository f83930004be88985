"""The flags of the SimCLR program, and the presets under them.

`simclr_tf.run` and the tools that take the program's settings (the
benchmark, the study) share these: one flag per declared setting of
`simclr_tf.config` (`setting_flags`), `--preset`, and the rule that puts a
preset's flagfile under the command line.
"""

import dataclasses
import pathlib

from absl import flags

from simclr_tf import config as config_lib
from simclr_tf import settings
from simclr_tf.tools import setting_flags

FLAGS = flags.FLAGS

PRESETS_DIR = pathlib.Path(__file__).resolve().parent.parent / "presets"
DEMO_PRESET = "demo"
# Settings that say where and on what a run happens, not what it trains:
# with only these (or nothing) on the command line the demo preset runs.
RUN_LOCATION_FLAGS = tuple(
    settings.flag_name(section.type, field)
    for section in dataclasses.fields(config_lib.ExperimentConfig)
    for field in settings.fields(section.type)
    if settings.has_role(field, settings.RUN_LOCATION))

flags.DEFINE_string(
    "preset", None, "A shipped preset (simclr_tf/presets/NAME.cfg, also "
    "reachable as flags/NAME.cfg in a checkout), applied before the other "
    "flags, which override it: demo, cifar10_pretrain, imagenet_pretrain, "
    "... 'none' runs the built-in defaults (the authors' ImageNet recipe). "
    "Unset: the demo when no flag other than "
    f"{', '.join('--' + name for name in RUN_LOCATION_FLAGS)} is given and "
    "there is no --flagfile, else none.")


def define_setting_flags(flag_values=FLAGS):
  """Defines one flag per declared setting of `ExperimentConfig`.

  Args:
    flag_values: the `FlagValues` to define them in.

  Returns:
    {flag name: (section name, field name)}.
  """
  return setting_flags.define_setting_flags(
      config_lib.ExperimentConfig.sections(), flag_values)


SETTING_FLAGS = define_setting_flags()


def config_from_flags(values=FLAGS) -> config_lib.ExperimentConfig:
  """Turns parsed flags into one `ExperimentConfig` (not yet validated).

  Args:
    values: parsed absl flag values.

  Returns:
    The config.
  """
  sections = setting_flags.section_values(SETTING_FLAGS, values)
  return config_lib.ExperimentConfig(**{
      section_name: section_type(**sections.get(section_name, {}))
      for section_name, section_type in
      config_lib.ExperimentConfig.sections()})


def preset_path(name: str) -> pathlib.Path:
  """The flagfile of a shipped preset.

  Raises:
    config_lib.ConfigError: for a name that is not shipped.
  """
  path = PRESETS_DIR / f"{name}.cfg"
  if not path.is_file():
    known = sorted(p.stem for p in PRESETS_DIR.glob("*.cfg"))
    raise config_lib.ConfigError(
        f"--preset must be none or one of {', '.join(known)}. "
        f"Received: preset={name!r}")
  return path


def _named_flags(argv):
  """The flag names on a command line ("--nofoo" and "--foo=1" name foo)."""
  names = []
  for argument in argv[1:]:
    if not argument.startswith("-") or argument in ("-", "--"):
      continue
    name = argument.lstrip("-").split("=", 1)[0]
    if name.startswith("no") and name[2:] in FLAGS and \
        isinstance(FLAGS[name[2:]], flags.BooleanFlag):
      name = name[2:]
    names.append(name)
  return names


def _preset_of(argv, demo_by_default):
  """The preset a command line asks for, or None; see the --preset help."""
  for argument in argv[1:]:
    if argument.startswith("--preset="):
      value = argument.split("=", 1)[1]
      return None if value == "none" else value
  if not demo_by_default:
    return None
  named = _named_flags(argv)
  if "flagfile" in named:
    return None
  if all(name in RUN_LOCATION_FLAGS or name not in SETTING_FLAGS
         for name in named):
    return DEMO_PRESET
  return None


def argv_with_preset(argv, demo_by_default: bool = True):
  """Puts the preset's flagfile first, so the command line overrides it.

  Args:
    argv: the command line, program name first.
    demo_by_default: without --preset, a command line of run-location flags
      only runs the demo preset (the program); False: only an explicit
      --preset applies (tools with their own defaults).

  Returns:
    The command line to parse.

  Raises:
    config_lib.ConfigError: for an unknown preset.
  """
  preset = _preset_of(argv, demo_by_default)
  if preset is None:
    return list(argv)
  path = preset_path(preset)
  if preset == DEMO_PRESET and "--preset=demo" not in argv:
    print(f"Running the offline demo preset ({path}); any flag other than "
          f"{', '.join('--' + n for n in RUN_LOCATION_FLAGS)} turns it off "
          "(or pass --preset=demo).", flush=True)
  return [argv[0], f"--flagfile={path}"] + list(argv[1:])
