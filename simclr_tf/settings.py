"""One declaration per setting: name, type, default, help and bounds.

A config section is a frozen dataclass whose fields are made with
`setting(...)`. Everything else is derived from that one declaration:

- the section's docstring lists each setting with its help;
- `check(section)` enforces the declared choices and bounds, with messages
  of the form "`name` must be ... Received: name=value";
- `simclr_tf.run` defines one absl flag per setting (`flag_name`) and builds
  the config from the parsed flags, so the program and the library share one
  set of defaults.

Checks that involve several settings stay in each section's `validate()`.
"""

import dataclasses
import typing
from typing import Any, Iterator, Optional, Sequence, Tuple

# Metadata keys of a setting's dataclass field.
_HELP = "help"
_FLAG = "flag"
_CHOICES = "choices"
_AT_LEAST = "at_least"
_ABOVE = "above"
_AT_MOST = "at_most"
_BELOW = "below"
_ROLES = "roles"

# What a setting is for, beyond its value: declared with the setting, so
# that every list of such settings is derived, not written out.
ARCHITECTURE = "architecture"  # Decides the model's variables' shapes.
FIXED_ON_RESUME = "fixed_on_resume"  # A run's checkpoints fix it.
RUN_LOCATION = "run_location"  # Where and on what a run runs, not what.
READS_IMAGES = "reads_images"  # How a tool finds and reads a dataset.
ROLES = (ARCHITECTURE, FIXED_ON_RESUME, RUN_LOCATION, READS_IMAGES)


class ConfigError(ValueError):
  """An invalid setting, with a message meant for the user as it is."""


def setting(default: Any, help: str, *,  # pylint: disable=redefined-builtin
            flag: Optional[str] = None,
            choices: Optional[Sequence[Any]] = None,
            at_least: Optional[float] = None, above: Optional[float] = None,
            at_most: Optional[float] = None,
            below: Optional[float] = None,
            roles: Sequence[str] = ()) -> Any:
  """Declares one setting as a dataclass field.

  Args:
    default: the one default, used by the library and the program alike.
    help: one or two sentences for `--help` and the section's docstring.
    flag: the command-line name when it is not the section's prefix plus the
      field name (the authors' name, e.g. "augment_on_device").
    choices: the allowed values.
    at_least: inclusive lower bound (numbers; each element of a tuple).
    above: exclusive lower bound.
    at_most: inclusive upper bound.
    below: exclusive upper bound.
    roles: what the setting is for, from `ROLES`; an architecture setting is
      also fixed on resume.

  Returns:
    A `dataclasses.Field` carrying the declaration in its metadata.
  """
  if not help:
    raise ValueError("Every setting needs a help text.")
  unknown = set(roles) - set(ROLES)
  if unknown:
    raise ValueError(f"`roles` must be among {', '.join(ROLES)}. "
                     f"Received: roles={tuple(roles)}")
  roles = set(roles)
  if ARCHITECTURE in roles:
    roles.add(FIXED_ON_RESUME)
  metadata = {_HELP: help, _FLAG: flag,
              _CHOICES: tuple(choices) if choices is not None else None,
              _AT_LEAST: at_least, _ABOVE: above, _AT_MOST: at_most,
              _BELOW: below, _ROLES: frozenset(roles)}
  return dataclasses.field(default=default, metadata=metadata)


def section(prefix: str = ""):
  """Class decorator for a config section: records its flag prefix and
  writes the settings' help into the docstring.

  Args:
    prefix: prepended to each field name to form its flag name (e.g.
      "linear_eval_" for the linear-evaluation section).

  Returns:
    The decorator.
  """

  def decorate(cls):
    cls.FLAG_PREFIX = prefix
    lines = ["", "Attributes:"]
    for field in dataclasses.fields(cls):
      lines.append(f"  {field.name}: {field.metadata[_HELP]}")
    cls.__doc__ = (cls.__doc__ or cls.__name__).rstrip() + "\n" + \
        "\n".join(lines) + "\n"
    return cls

  return decorate


def fields(section_type) -> Iterator[dataclasses.Field]:
  """The declared settings of a section type, in declaration order."""
  for field in dataclasses.fields(section_type):
    if _HELP in field.metadata:
      yield field


def has_role(field: dataclasses.Field, role: str) -> bool:
  """Whether a setting was declared with `role` (see `ROLES`)."""
  return role in field.metadata[_ROLES]


def names_with(section_type, role: str) -> Tuple[str, ...]:
  """The field names of a section's settings declared with `role`."""
  return tuple(field.name for field in fields(section_type)
               if has_role(field, role))


def help_of(field: dataclasses.Field) -> str:
  return field.metadata[_HELP]


def choices_of(field: dataclasses.Field) -> Optional[Tuple[Any, ...]]:
  return field.metadata[_CHOICES]


def flag_name(section_type, field: dataclasses.Field) -> str:
  """The command-line name of a setting."""
  return field.metadata[_FLAG] or getattr(section_type, "FLAG_PREFIX",
                                          "") + field.name


def value_type(section_type, field: dataclasses.Field):
  """(base type, optional, tuple length or None) of a setting.

  `Optional[float]` gives (float, True, None); `Tuple[float, float]` gives
  (float, False, 2).
  """
  hint = typing.get_type_hints(section_type)[field.name]
  optional = False
  args = typing.get_args(hint)
  if typing.get_origin(hint) is typing.Union and type(None) in args:
    optional = True
    hint = next(arg for arg in args if arg is not type(None))
  if typing.get_origin(hint) is tuple:
    element_types = typing.get_args(hint)
    return element_types[0], optional, len(element_types)
  return hint, optional, None


def check(section_value) -> None:
  """Checks every declared choice and bound of a section.

  Args:
    section_value: a section dataclass instance.

  Raises:
    ConfigError: naming the first setting out of bounds.
  """
  section_type = type(section_value)
  for field in fields(section_type):
    value = getattr(section_value, field.name)
    if value is None:
      continue
    name = flag_name(section_type, field)
    shown = f"Received: {name}={value!r}"
    allowed = choices_of(field)
    if allowed is not None and value not in allowed:
      raise ConfigError(f"`{name}` must be one of "
                        f"{', '.join(map(str, allowed))}. {shown}")
    meta = field.metadata
    for number in (value if isinstance(value, tuple) else (value,)):
      if isinstance(number, bool) or not isinstance(number, (int, float)):
        continue
      if number != number:  # NaN passes every comparison below.
        raise ConfigError(f"`{name}` must be a number. {shown}")
      if meta[_AT_LEAST] is not None and number < meta[_AT_LEAST]:
        raise ConfigError(f"`{name}` must be >= {meta[_AT_LEAST]}. {shown}")
      if meta[_ABOVE] is not None and number <= meta[_ABOVE]:
        raise ConfigError(f"`{name}` must be > {meta[_ABOVE]}. {shown}")
      if meta[_AT_MOST] is not None and number > meta[_AT_MOST]:
        raise ConfigError(f"`{name}` must be <= {meta[_AT_MOST]}. {shown}")
      if meta[_BELOW] is not None and number >= meta[_BELOW]:
        raise ConfigError(f"`{name}` must be < {meta[_BELOW]}. {shown}")
