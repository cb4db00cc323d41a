"""The layer rule of flood_cli, checked on the source (ast) and in fresh processes.

The layer rule. flood_cli is a foundation (core, config, runs) under the three commands'
parts (data, model, train for `flood train`; compare; sweep) and the CLI on top:

- core imports nothing of flood_cli outside core (the package root, for __version__,
  anyone may import).
- config imports only core. In particular config never imports runs.
- runs imports only core and config, and never torch at module level.
- data and model import only core and config.
- train imports core, config, runs, data and model.
- compare imports only core, config and runs: beside train, not above it. It never
  imports train, data, model, torch or transformers, at any level.
- predict imports core, config, runs, data, model, and of train only train.metrics
  and train.checkpoint, inside functions (torch is loaded only to predict).
- sweep imports core, config, runs and compare; train only inside functions (the
  worker), so the coordinator never loads torch.
- cli may import anything, but at module level only core: the rest inside the command
  that needs it, so that `flood --help` loads no torch, transformers or optuna.
- The pure parts import nothing of flood_cli: compare/stats.py and train/objectives.py.
- No import circles between flood_cli modules, counting module-level imports (those
  under `if TYPE_CHECKING:` included: they are the same dependency, only hidden), and
  none either when function-level imports are counted too.

Module-level imports and function-level imports are checked and reported apart: a
function-level import is allowed only to keep a heavy dependency out of a process.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "flood_cli"

# Which layers each layer may import (its own always): at module level, and inside functions.
MODULE_LEVEL = {
    "root": set(),
    "core": set(),
    "config": {"core"},
    "runs": {"core", "config"},
    "data": {"core", "config"},
    "model": {"core", "config"},
    "train": {"core", "config", "runs", "data", "model"},
    "compare": {"core", "config", "runs"},
    "sweep": {"core", "config", "runs", "compare"},
    "predict": {"core", "config", "runs", "data", "model"},
    "cli": {"core"},
}
ALL_LAYERS = set(MODULE_LEVEL)
FUNCTION_LEVEL = {**MODULE_LEVEL, "sweep": MODULE_LEVEL["sweep"] | {"train"}, "predict": MODULE_LEVEL["predict"] | {"train"}, "cli": ALL_LAYERS}
# The only train modules predict may import (inside functions): the metrics' math and the checkpoint reader.
PREDICT_TRAIN = {"flood_cli.train", "flood_cli.train.metrics", "flood_cli.train.checkpoint"}
# The package root (flood_cli/__init__.py: __version__) may be imported by every layer.
ANYONE = {"root"}
# Modules that import nothing of flood_cli at all.
PURE = ("flood_cli.compare.stats", "flood_cli.train.objectives")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. flood_cli.compare.reader
    target: str  # the imported module, e.g. flood_cli.runs.folder, or torch
    line: int
    in_function: bool
    type_checking: bool

    def __str__(self) -> str:
        where = "function-level" if self.in_function else ("TYPE_CHECKING" if self.type_checking else "module-level")
        return f"{self.source} imports {self.target} ({where}, line {self.line})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] == "__main__":
        return "cli"
    return parts[1]


def _resolve(source: str, node: ast.ImportFrom) -> list[str]:
    """The modules a `from X import a, b` imports: X.a where that is a module, else X."""
    base = node.module or ""
    if node.level:
        package = source.split(".")
        if MODULES[source].name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    targets = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        targets.append(candidate if candidate in MODULES else base)
    return targets


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str) -> list[Import]:
    tree = ast.parse(MODULES[source].read_text(encoding="utf-8"))
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(source, alias.name, child.lineno, in_function, type_checking) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.extend(Import(source, target, child.lineno, in_function, type_checking) for target in _resolve(source, child))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True, type_checking)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for part in child.body:
                    visit(ast.Module(body=[part], type_ignores=[]), in_function, True)
                for part in child.orelse:
                    visit(ast.Module(body=[part], type_ignores=[]), in_function, type_checking)
            else:
                visit(child, in_function, type_checking)

    visit(tree, False, False)
    return found


IMPORTS = [item for source in MODULES for item in imports_of(source)]
INTERNAL = [item for item in IMPORTS if item.target == "flood_cli" or item.target.startswith("flood_cli.")]


def _top(target: str) -> str:
    return target.split(".")[0]


def _layer_violations(in_function: bool) -> list[str]:
    rules = FUNCTION_LEVEL if in_function else MODULE_LEVEL
    bad = []
    for item in INTERNAL:
        if item.in_function != in_function:
            continue
        source, target = layer_of(item.source), layer_of(item.target)
        if target != source and target not in ANYONE and target not in rules[source]:
            bad.append(f"{item}: {source} may import only {', '.join(sorted(rules[source])) or 'nothing'} of flood_cli here")
    return bad


def test_the_scan_sees_the_package():
    assert {"flood_cli.config.schema", "flood_cli.compare.stats", "flood_cli.train.objectives", "flood_cli.cli.main"} <= set(MODULES)
    assert set(map(layer_of, MODULES)) <= ALL_LAYERS, set(map(layer_of, MODULES)) - ALL_LAYERS
    assert any(item.in_function for item in INTERNAL) and any(not item.in_function for item in INTERNAL)


def _circles(with_functions: bool) -> list[str]:
    """Every strongly connected component of more than one module (Tarjan), with its edges."""
    edges = [item for item in INTERNAL if (with_functions or not item.in_function) and item.target in MODULES and item.target != item.source]
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for item in edges:
        graph[item.source].add(item.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                connect(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            connect(module)
    described = []
    for component in components:
        inside = sorted({str(item) for item in edges if item.source in component and item.target in component})
        described.append(" <-> ".join(component) + ":\n    " + "\n    ".join(inside))
    return described


def test_no_import_circles_at_module_level():
    circles = _circles(with_functions=False)
    assert not circles, "import circles between flood_cli modules (module-level imports):\n" + "\n".join(circles)


def test_no_import_circles_hidden_inside_functions():
    """A circle closed by a function-level import is a circle too, only deferred."""
    circles = _circles(with_functions=True)
    assert not circles, "import circles between flood_cli modules (function-level imports counted):\n" + "\n".join(circles)


def test_layers_at_module_level():
    bad = _layer_violations(in_function=False)
    assert not bad, "module-level imports against the layer rule:\n" + "\n".join(bad)


def test_layers_inside_functions():
    bad = _layer_violations(in_function=True)
    assert not bad, "function-level imports against the layer rule:\n" + "\n".join(bad)


def test_config_never_imports_runs():
    bad = [str(item) for item in INTERNAL if layer_of(item.source) == "config" and layer_of(item.target) == "runs"]
    assert not bad, "\n".join(bad)


def test_compare_never_imports_torch_transformers_or_train():
    bad = [
        str(item) for item in IMPORTS
        if layer_of(item.source) == "compare"
        and (_top(item.target) in ("torch", "transformers") or item.target.startswith("flood_cli.train"))
    ]
    assert not bad, "compare must run without torch:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_nothing_of_flood(module: str):
    bad = [str(item) for item in INTERNAL if item.source == module]
    assert not bad, "\n".join(bad)


def test_runs_never_imports_torch_at_module_level():
    bad = [str(item) for item in IMPORTS if layer_of(item.source) == "runs" and not item.in_function and _top(item.target) == "torch"]
    assert not bad, "\n".join(bad)


def _loaded_after(statement: str, heavy: tuple[str, ...]) -> list[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return result.stdout.split()


def test_the_cli_loads_no_heavy_dependency():
    assert _loaded_after("import flood_cli.cli.main", ("torch", "transformers", "optuna")) == []


def test_the_sweep_coordinator_loads_no_torch():
    assert _loaded_after("import flood_cli.sweep.driver", ("torch", "transformers")) == []


def test_predict_imports_of_train_only_its_metrics_and_checkpoint_reader():
    bad = [
        str(item) for item in INTERNAL
        if layer_of(item.source) == "predict" and layer_of(item.target) == "train" and item.target not in PREDICT_TRAIN
    ]
    assert not bad, "predict may import only train.metrics and train.checkpoint of train:\n" + "\n".join(bad)
    assert not [str(item) for item in INTERNAL if layer_of(item.source) == "predict" and layer_of(item.target) == "train" and not item.in_function]
