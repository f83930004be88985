"""Package attributes that import their module on first use.

Subpackages whose modules need TensorFlow name some of those modules'
attributes at the package level. Importing them eagerly would make
`KERAS_BACKEND=jax` import TensorFlow through any import of the package, so
each such package lists its attributes and loads them on first access.
"""

import importlib
from typing import Callable, Dict, Tuple


def attributes(package: str, table: Dict[str, Tuple[str, str]]) -> Callable:
  """A module `__getattr__` that loads the attributes in `table`.

  Args:
    package: the package's `__name__`.
    table: attribute name to (module, attribute in it); the module is a
      submodule's name, or a full name starting with "simclr_tf.".

  Returns:
    The function to assign to the package's `__getattr__`.
  """
  def load(name):
    if name not in table:
      raise AttributeError(f"module {package!r} has no attribute {name!r}")
    module, attribute = table[name]
    if not module.startswith("simclr_tf."):
      module = f"{package}.{module}"
    value = getattr(importlib.import_module(module), attribute)
    setattr(importlib.import_module(package), name, value)
    return value
  return load
