"""absl flags derived from the settings' declarations (`settings.setting`).

The program (`simclr_tf.run`) defines one flag per setting of every config
section; a tool defines the few it needs (`define_setting_flags(only=...)`).
Either way the flag's name, type, default, help and choices are the
declaration's, and its bounds are checked by `settings.check` when the
section is built from the flags (`section_from_flags`), so a tool's
`--dataset` cannot drift from the program's.
"""

from typing import Dict, Iterable, Optional, Tuple

from absl import flags

from simclr_tf import settings


class _AutoBoolParser(flags.BooleanParser):
  """A boolean flag that also takes "auto", meaning None (pick for me)."""

  def parse(self, argument):
    if isinstance(argument, str) and argument.lower() == "auto":
      return None
    return super().parse(argument)

  def flag_type(self):
    return "bool or auto"


class _FloatTupleParser(flags.ArgumentParser):
  """LOW,HIGH (or any fixed count) of floats, as a tuple."""

  def __init__(self, name, length):
    self._name = name
    self._length = length

  def parse(self, argument):
    if isinstance(argument, tuple):
      return argument
    parts = [part.strip() for part in str(argument).split(",")]
    try:
      values = tuple(float(part) for part in parts)
    except ValueError:
      values = ()
    if len(values) != self._length:
      raise ValueError(f"--{self._name} takes {self._length} numbers "
                       f"separated by commas. Received: {argument!r}")
    return values

  def flag_type(self):
    return f"{self._length} floats"


class _FloatTupleSerializer(flags.ArgumentSerializer):

  def serialize(self, value):
    return ",".join(repr(float(number)) for number in value)


def define_setting_flag(section_type, field, flag_values) -> str:
  """Defines the absl flag of one declared setting.

  Args:
    section_type: the config section class declaring the setting.
    field: the setting's dataclass field.
    flag_values: the `FlagValues` to define it in.

  Returns:
    The flag's name.
  """
  name = settings.flag_name(section_type, field)
  help_text = settings.help_of(field)
  default = field.default
  base, optional, length = settings.value_type(section_type, field)
  choices = settings.choices_of(field)
  if length is not None:
    flags.DEFINE(_FloatTupleParser(name, length), name, default, help_text,
                 flag_values, serializer=_FloatTupleSerializer())
  elif base is bool and optional:
    flag_values[name] = flags.BooleanFlag(name, default, help_text)
    flag_values[name].parser = _AutoBoolParser()
  elif base is bool:
    flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
  elif base is str and choices:
    flags.DEFINE_enum(name, default, choices, help_text,
                      flag_values=flag_values)
  elif base is str:
    flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
  elif base is int:
    flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
  elif base is float:
    flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
  else:
    raise TypeError(f"No flag type for setting {name} of type {base}.")
  return name


def define_setting_flags(
    sections: Iterable[Tuple[str, type]], flag_values=flags.FLAGS, *,
    only: Optional[Iterable[str]] = None) -> Dict[str, Tuple[str, str]]:
  """Defines one flag per declared setting of the given sections.

  Args:
    sections: (section name, section class) pairs, e.g.
      `ExperimentConfig.sections()`.
    flag_values: the `FlagValues` to define them in.
    only: flag names to define; None defines every setting's flag.

  Returns:
    {flag name: (section name, field name)}.

  Raises:
    ValueError: two settings share a flag, or `only` names a flag that no
      setting declares.
  """
  wanted = None if only is None else set(only)
  names = {}
  for section_name, section_type in sections:
    for field in settings.fields(section_type):
      name = settings.flag_name(section_type, field)
      if wanted is not None and name not in wanted:
        continue
      if name in names:
        raise ValueError(f"Two settings share the flag --{name}.")
      define_setting_flag(section_type, field, flag_values)
      names[name] = (section_name, field.name)
  missing = (wanted or set()) - set(names)
  if missing:
    raise ValueError(f"No setting declares the flag(s) "
                     f"{', '.join('--' + name for name in sorted(missing))}.")
  return names


def section_values(setting_flags: Dict[str, Tuple[str, str]],
                   flag_values=flags.FLAGS) -> Dict[str, dict]:
  """The parsed values of setting flags, grouped by section.

  Args:
    setting_flags: what `define_setting_flags` returned.
    flag_values: the parsed `FlagValues`.

  Returns:
    {section name: {field name: value}}, for the sections that have flags.
  """
  sections = {}
  for name, (section_name, field_name) in setting_flags.items():
    sections.setdefault(section_name, {})[field_name] = \
        flag_values[name].value
  return sections
