"""The package's shape: no import cycle among nnfeat's modules, every command registered explicitly, and a
command module that fails to import breaks the CLI (and so `make test`) instead of vanishing."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nnfeat"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: nnfeat modules it imports anywhere in its file (module level and inside functions)}."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and
                       ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                       for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:  # annotations only: no import at run time
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


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
        for w in graph[v]:
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
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_nnfeat_modules():
    graph = import_graph()
    assert "nnfeat.hooks" in graph and "nnfeat.layouts" in graph["nnfeat.hooks"]
    # package __init__ files re-export their submodules; the cycle check is about the modules that do the work
    work = {m: {t for t in ts if not _is_package(t)} for m, ts in graph.items() if not _is_package(m)}
    assert cycles(work) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_hooks_and_layouts_depend_on_torch_and_leaves_only():
    graph = import_graph()
    assert graph["nnfeat.layouts"] <= {"nnfeat.errors"}
    assert graph["nnfeat.hooks"] <= {"nnfeat.errors", "nnfeat.layouts"}


def _is_package(name: str) -> bool:
    return (ROOT / Path(*name.split(".")) / "__init__.py").is_file()


def test_every_command_module_is_registered_explicitly():
    from nnfeat import cli

    on_disk = {p.stem for p in (PACKAGE / "cli").glob("*.py")} - {"__init__", "__main__", "common"}
    assert {m.__name__.rpartition(".")[2] for m in cli.COMMAND_MODULES} == on_disk
    help_text = subprocess.run([sys.executable, "-m", "nnfeat", "--help"], capture_output=True, text=True,
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    for command in ("models", "layers", "render", "microscope", "examples", "atlas", "spectrum", "demo"):
        assert f"    {command}" in help_text


def test_a_broken_command_module_fails_loudly(tmp_path):
    """Copy the package, break one command module's import, and run `nnfeat --help` on the copy."""
    import shutil

    copy = tmp_path / "nnfeat"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "cli" / "examples.py"
    original = target.read_text()
    target.write_text(original + "\nimport nnfeat_module_that_does_not_exist\n")
    proc = subprocess.run([sys.executable, "-m", "nnfeat", "--help"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode != 0
    assert "nnfeat_module_that_does_not_exist" in proc.stderr
    # and the unbroken copy works, so the failure above is the broken import's
    target.write_text(original)
    proc = subprocess.run([sys.executable, "-m", "nnfeat", "--help"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0 and "examples" in proc.stdout
