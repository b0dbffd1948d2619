"""The package's import structure, measured from the code: import arrows, circles (package ``__init__`` files
included), imports that run back up the layers, imports of nnfeat's own modules inside functions, and the largest
modules. ``tests/test_structure.py`` enforces the rules from the same functions.

    python experiments/structure.py            # the counts, one per line
    python experiments/structure.py --list     # and every upward import and function-level import

The layers, lowest first (a module may import its own layer or a lower one; ``nnfeat/__init__.py``, the public
facade, and ``nnfeat/__main__.py`` sit above them all)::

    base      nnfeat/*.py that are not listed below (errors, io, seeds, devices, hooks, units, images, results)
    models    nnfeat/models/
    engine    nnfeat/engine/            the render engine
    analysis  nnfeat/analysis/          tensors in, tensors out (and the cached collection stage)
    views     nnfeat/views/             pages and figures from plain data
    ops       nnfeat/ops/               one module per operation and its Result
    cli       nnfeat/cli/               one module per command
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nnfeat"
#: Optional extras: imported where they are used, so nnfeat runs without them.
OPTIONAL_EXTRAS = ("timm", "onnx", "onnxruntime", "onnxscript", "umap", "tensorboard", "transformers", "captum",
                   "safetensors")
LAYERS = ("base", "models", "engine", "analysis", "views", "ops", "cli")
FACADE = {"nnfeat", "nnfeat.__main__", "nnfeat.objectives", "nnfeat.cli.__main__"}  # public entry points above every layer


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    """The layer index of ``module`` (None for the public facade)."""
    if module in FACADE:
        return None
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS[1:]:
        return LAYERS.index(parts[1])
    return 0


@dataclass
class Imports:
    """Every import of an nnfeat module inside nnfeat, with where it stands."""

    modules: dict[str, Path]
    graph: dict[str, set[str]] = field(default_factory=dict)
    in_functions: list[tuple[str, int, str, str]] = field(default_factory=list)  # (module, line, target, reason)
    #: every import inside a function, of any module: (module, line, imported name, reason comment or "")
    lazy: list[tuple[str, int, str, str]] = field(default_factory=list)


def _enclosing_function_lines(tree: ast.AST) -> dict[int, ast.AST]:
    inside: dict[int, ast.AST] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if node is not fn:
                    inside[id(node)] = fn
    return inside


def read_imports(package: Path = PACKAGE) -> Imports:
    """Parse every module of ``package``: the import graph and the function-level imports of nnfeat modules."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    found = Imports(modules, {name: set() for name in modules})
    for name, path in modules.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text, str(path))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and
                       ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                       for n in ast.walk(block)}
        inside = _enclosing_function_lines(tree)
        for node in ast.walk(tree):
            if id(node) in typing_only:  # annotations only: no import at run time
                continue
            if id(node) in inside and isinstance(node, (ast.Import, ast.ImportFrom)):
                line = lines[node.lineno - 1]
                imported = (node.names[0].name if isinstance(node, ast.Import)
                            else "." * node.level + (node.module or ""))
                found.lazy.append((name, node.lineno, imported, line.split("#", 1)[1].strip() if "#" in line else ""))
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.graph[name].add(target)
                    if id(node) in inside:
                        line = lines[node.lineno - 1]
                        reason = line.split("#", 1)[1].strip() if "#" in line else ""
                        found.in_functions.append((name, node.lineno, target, reason))
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _is_package(imports: Imports, name: str) -> bool:
    return imports.modules[name].name == "__init__.py"


def upward(imports: Imports) -> list[tuple[str, str]]:
    """(importer, imported) pairs where the imported module sits in a higher layer, or where a package's
    submodule imports its own package ``__init__`` (which re-exports the submodules: a circle in waiting)."""
    found = []
    for name, targets in imports.graph.items():
        mine = layer_of(name)
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs is None and mine is not None:
                found.append((name, target))
            elif mine is not None and theirs is not None and theirs > mine:
                found.append((name, target))
            elif (_is_package(imports, target) and name.startswith(target + ".") and target != "nnfeat"
                  and not name.endswith(".__main__")):
                found.append((name, target))
    return found


def unexplained_lazy_imports(imports: Imports) -> list[str]:
    """Imports inside functions that are neither of an optional extra nor carry a ``# reason`` comment."""
    return [f"{name}:{line} {imported}" for name, line, imported, reason in imports.lazy
            if not reason and imported.split(".")[0] not in OPTIONAL_EXTRAS]


def module_lines(package: Path = PACKAGE) -> list[tuple[int, str]]:
    """(lines, path) of every module, largest first."""
    return sorted(((len(p.read_text().splitlines()), str(p.relative_to(package.parent)))
                   for p in package.rglob("*.py")), reverse=True)


def counts(package: Path = PACKAGE) -> dict[str, object]:
    imports = read_imports(package)
    largest = module_lines(package)[0]
    return {"modules": len(imports.modules),
            "import arrows": sum(len(t) for t in imports.graph.values()),
            "circles": len(cycles(imports.graph)),
            "upward imports": len(upward(imports)),
            "function-level imports of nnfeat modules": len(imports.in_functions),
            "function-level imports of any module": len(imports.lazy),
            "  of which neither an optional extra nor explained": len(unexplained_lazy_imports(imports)),
            "largest module": f"{largest[1]} ({largest[0]} lines)",
            "modules over 400 lines": sum(1 for n, _ in module_lines(package) if n > 400)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list every circle, upward and function-level import")
    args = parser.parse_args()
    for key, value in counts().items():
        print(f"{key}: {value}")
    if args.list:
        imports = read_imports()
        for circle in cycles(imports.graph):
            print("circle:", " -> ".join(circle))
        for a, b in upward(imports):
            print(f"upward: {a} -> {b}")
        for name, line, target, reason in sorted(imports.in_functions):
            print(f"in function: {name}:{line} -> {target}" + (f"  # {reason}" if reason else ""))
        for entry in unexplained_lazy_imports(imports):
            print(f"unexplained lazy import: {entry}")
        for n, path in module_lines():
            if n > 400:
                print(f"over 400 lines: {path} ({n})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
