"""The import graph of `simclr_tf`, read from the source (no imports run).

Every `import` statement counts, also those inside functions: a cycle hidden
behind a function-local import is still a cycle.

Rooms are the package's subpackages and its root modules. `LAYERS` orders
them top to bottom; an edge from a room to one above it is an upward edge.

Usage: python tests/import_graph.py   (prints the figures BUILD.md records)
"""

import ast
import os
import sys
from typing import Dict, List, Set, Tuple

PACKAGE = "simclr_tf"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), PACKAGE)

# Top to bottom; each room may import only rooms below it (or itself).
LAYERS = (
    ("run",),
    ("tools",),
    ("training",),
    ("evaluation",),
    ("export",),
    ("checkpoints",),
    ("data",),
    ("models",),
    ("augment",),
    ("storage",),
    ("losses", "optimizers", "replicas"),
    ("config",),
    ("settings", "_lazy", "__init__"),
)


def modules() -> Dict[str, str]:
  """Dotted module name to its file, for every module of the package."""
  found = {}
  for directory, _, names in os.walk(ROOT):
    for name in names:
      if not name.endswith(".py"):
        continue
      path = os.path.join(directory, name)
      relative = os.path.relpath(path, os.path.dirname(ROOT))[:-3]
      parts = relative.split(os.sep)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      found[".".join(parts)] = path
  return found


def _imported(tree: ast.AST, known: Set[str]) -> Set[str]:
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      candidates = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      # `from package import submodule` imports the submodule; the
      # package's own attributes otherwise.
      submodules = [f"{node.module}.{alias.name}" for alias in node.names
                    if f"{node.module}.{alias.name}" in known]
      candidates = submodules if len(submodules) == len(node.names) else (
          [node.module] + submodules)
    else:
      continue
    for name in candidates:
      if name.startswith(PACKAGE) and name in known:
        names.add(name)
  return names


def edges() -> Dict[str, Set[str]]:
  """Module to the package's modules it imports."""
  known = modules()
  graph = {}
  for name, path in known.items():
    with open(path) as handle:
      tree = ast.parse(handle.read(), path)
    graph[name] = _imported(tree, set(known)) - {name}
  return graph


def room(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
  """The strongly connected components of more than one module."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []
  counter = [0]

  def visit(node):
    index[node] = low[node] = counter[0]
    counter[0] += 1
    stack.append(node)
    on_stack.add(node)
    for target in graph.get(node, ()):
      if target not in index:
        visit(target)
        low[node] = min(low[node], low[target])
      elif target in on_stack:
        low[node] = min(low[node], index[target])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        found.append(sorted(component))

  sys.setrecursionlimit(10000)
  for node in sorted(graph):
    if node not in index:
      visit(node)
  return found


def layer_of(room_name: str) -> int:
  for rank, rooms in enumerate(LAYERS):
    if room_name in rooms:
      return rank
  raise KeyError(f"room {room_name!r} is in no layer of LAYERS")


def upward_edges(graph: Dict[str, Set[str]]) -> List[Tuple[str, str]]:
  """Edges to a room in a higher layer than the importer's."""
  return sorted((source, target) for source, targets in graph.items()
                for target in targets
                if layer_of(room(target)) < layer_of(room(source)))


def levels(graph: Dict[str, Set[str]]) -> int:
  """The longest import chain, in modules (cycles broken arbitrarily)."""
  depth = {}

  def longest(node, active):
    if node in depth:
      return depth[node]
    active = active | {node}
    best = 1 + max((longest(target, active) for target in graph[node]
                    if target not in active), default=0)
    depth[node] = best
    return best

  return max(longest(node, frozenset()) for node in graph)


def figures() -> dict:
  graph = edges()
  root_modules = [name for name in graph
                  if name.count(".") == 1 and
                  not os.path.isdir(os.path.join(ROOT, name.split(".")[1]))]
  rooms = {room(name) for name in graph}
  return {"root_modules": len(root_modules), "rooms": len(rooms),
          "modules": len(graph), "levels": levels(graph),
          "edges": sum(len(targets) for targets in graph.values()),
          "cycles": len(cycles(graph)),
          "upward_edges": len(upward_edges(graph))}


if __name__ == "__main__":
  for key, value in figures().items():
    print(f"{key}: {value}")
  graph = edges()
  for component in cycles(graph):
    print("cycle:", " <-> ".join(component))
  for source, target in upward_edges(graph):
    print("upward:", source, "->", target)
