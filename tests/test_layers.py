"""The package's imports point down and never close a circle (read with `ast`, nothing is run).

Layers, lowest first (a module may import its own layer and any lower one):
  core        errors, io, host_memory, preemption, runs, configs (the package's plumbing)
  data        rltf_jax.data
  models      rltf_jax.models, checkpoints (models read the vocabulary's special tokens)
  training, sampling, generator (the generator protocol)
  methods     one trainer plus one sampler per method
  evaluation  rltf_jax.evaluation
  pipeline    pipeline, synthesize
  reporting   rltf_jax.reporting, sweep, batch (reports, plots, collected results, many runs)
  commands    cli, rltf_jax.commands, bench, every `__main__.py` and `if __name__ == "__main__":`
Every import counts, a function's own included: a lazy import is still an arrow. Only the code
under `if __name__ == "__main__":` (a deprecated `python -m` entry point) is the command layer's.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rltf_jax"

# (layer, rank, module prefixes); the longest matching prefix names a module's layer.
LAYERS = [
    ("core", 0, ("rltf_jax", "rltf_jax.errors", "rltf_jax.io", "rltf_jax.host_memory",
                 "rltf_jax.preemption", "rltf_jax.runs", "rltf_jax.configs")),
    ("data", 1, ("rltf_jax.data",)),
    ("models", 2, ("rltf_jax.models", "rltf_jax.checkpoints")),
    ("training", 3, ("rltf_jax.training",)),
    ("sampling", 3, ("rltf_jax.sampling", "rltf_jax.generator")),
    ("methods", 4, ("rltf_jax.methods",)),
    ("evaluation", 5, ("rltf_jax.evaluation",)),
    ("pipeline", 6, ("rltf_jax.pipeline", "rltf_jax.synthesize")),
    ("reporting", 7, ("rltf_jax.reporting", "rltf_jax.sweep", "rltf_jax.batch")),
    ("commands", 8, ("rltf_jax.cli", "rltf_jax.commands", "rltf_jax.bench")),
]
COMMANDS = "commands"


def module_name(path: Path, root: Path) -> str:
  parts = list(path.relative_to(root.parent).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> tuple[str, int]:
  if module.endswith(".__main__"):
    return COMMANDS, max(rank for _, rank, _ in LAYERS)
  best = None
  for name, rank, prefixes in LAYERS:
    for prefix in prefixes:
      if module == prefix or module.startswith(prefix + "."):
        if best is None or len(prefix) > best[0]:
          best = (len(prefix), name, rank)
  assert best is not None, f"{module} is in no layer: add it to LAYERS"
  return best[1], best[2]


def _is_main_guard(node: ast.AST) -> bool:
  return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
          and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
          and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators))


def _imports(tree: ast.AST, module: str, is_package: bool, modules: set[str]):
  """(imported rltf_jax module, line, under a __main__ guard) for every import statement."""
  found = []

  def target(name: str) -> str | None:
    while name and name not in modules:   # `from pkg import function` -> pkg
      name = name.rpartition(".")[0]
    return name or None

  def visit(node, guarded):
    for child in ast.iter_child_nodes(node):
      inner = guarded or _is_main_guard(child)
      if isinstance(child, ast.Import):
        found.extend((target(a.name), child.lineno, inner) for a in child.names)
      elif isinstance(child, ast.ImportFrom):
        if child.level:
          package = module if is_package else module.rpartition(".")[0]
          for _ in range(child.level - 1):
            package = package.rpartition(".")[0]
          base = f"{package}.{child.module}" if child.module else package
        else:
          base = child.module or ""
        for alias in child.names:
          found.append((target(f"{base}.{alias.name}"), child.lineno, inner))
      visit(child, inner)

  visit(tree, False)
  return [(m, line, g) for m, line, g in found if m and m.split(".")[0] == "rltf_jax"]


def import_graph(root: Path = PACKAGE):
  """{module: [(imported module, line, under a __main__ guard)]} over every .py under `root`."""
  files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
  modules = set(files)
  return {m: _imports(ast.parse(p.read_text(), str(p)), m, p.name == "__init__.py", modules)
          for m, p in files.items()}


def upward_imports(graph) -> list[str]:
  out = []
  for module, imports in graph.items():
    for imported, line, guarded in imports:
      (low, low_rank), (high, high_rank) = layer_of(module), layer_of(imported)
      if guarded:
        low, low_rank = COMMANDS, max(rank for _, rank, _ in LAYERS)
      if high_rank > low_rank or (high_rank == low_rank and high != low and low != COMMANDS):
        out.append(f"{module}:{line} ({low}) imports {imported} ({high})")
  return out


def circles(graph) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan), ignoring imports under a
  `__main__` guard (they run after every module is loaded)."""
  edges = {m: sorted({i for i, _, g in imports if not g and i != m}) for m, imports in graph.items()}
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def connect(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in edges.get(v, ()):
      if w not in index:
        connect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(edges):
    if v not in index:
      connect(v)
  return out


def test_every_module_has_a_layer():
  for module in import_graph():
    layer_of(module)


def test_no_import_points_up():
  assert upward_imports(import_graph()) == []


def test_no_import_circle():
  assert circles(import_graph()) == []


def test_the_library_imports_nothing_from_the_repository_and_leaves_sys_path_alone():
  """The package is installable: no import of the repository's `configs`, `tests` or `launch`, and
  no `sys.path` edit (the library's configs are `rltf_jax.configs`)."""
  found = []
  for path in sorted(PACKAGE.rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
      found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {n}" for n in names
                if n.split(".")[0] in ("configs", "tests", "launch", "conftest")]
      if (isinstance(node, ast.Attribute) and node.attr == "path"
          and isinstance(node.value, ast.Name) and node.value.id == "sys"):
        found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} touches sys.path")
  assert found == []


def test_the_checks_can_fail(tmp_path):
  """A circle and an upward import in a made-up package are both found."""
  pkg = tmp_path / "rltf_jax"
  (pkg / "data").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "data" / "__init__.py").write_text("")
  (pkg / "data" / "load.py").write_text("def f():\n  from rltf_jax import pipeline\n")
  (pkg / "pipeline.py").write_text("from rltf_jax.data import load\n")
  (pkg / "cli.py").write_text("if __name__ == '__main__':\n  from rltf_jax import pipeline\n")
  graph = import_graph(pkg)
  assert upward_imports(graph) == ["rltf_jax.data.load:2 (data) imports rltf_jax.pipeline (pipeline)"]
  assert circles(graph) == [["rltf_jax.data.load", "rltf_jax.pipeline"]]


@pytest.mark.parametrize("line,expected", [
    ("from rltf_jax.evaluation import metrics", "rltf_jax.evaluation.metrics"),
    ("from rltf_jax.evaluation.metrics import f1", "rltf_jax.evaluation.metrics"),
    ("import rltf_jax.evaluation.metrics as m", "rltf_jax.evaluation.metrics"),
    ("from . import metrics", "rltf_jax.evaluation.metrics"),
    ("from .. import io", "rltf_jax.io"),
])
def test_imports_resolve_to_modules(line, expected):
  modules = {"rltf_jax", "rltf_jax.io", "rltf_jax.evaluation", "rltf_jax.evaluation.metrics"}
  found = _imports(ast.parse(line), "rltf_jax.evaluation.plots", False, modules)
  assert [m for m, _, _ in found] == [expected]
