"""The package's shape: the layers run one way (no import circle, package ``__init__`` files included; nothing
imports a higher layer), nnfeat's own modules imported at module level, no module over 400 lines, one module per
operation with its command, every command registered explicitly, and a command module that fails to import breaks
the CLI (and so `make test`) instead of vanishing. The measurement is ``experiments/structure.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nnfeat"


def _structure():
    """``experiments/structure.py``: the measurement these rules share with the counts in the README."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("nnfeat_structure", ROOT / "experiments" / "structure.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("nnfeat_structure", module)
    spec.loader.exec_module(module)
    return module


S = _structure()

#: The most imports of nnfeat's own modules that may stand inside functions (each with its reason in a comment).
MAX_FUNCTION_LEVEL_IMPORTS = 15
MAX_MODULE_LINES = 400


def test_no_import_circle_anywhere_package_inits_included():
    imports = S.read_imports(PACKAGE)
    assert "nnfeat.hooks" in imports.graph and "nnfeat.layouts" in imports.graph["nnfeat.hooks"]
    assert S.cycles(imports.graph) == []


def test_no_import_runs_back_up_the_layers():
    """base <- models <- engine <- analysis <- views <- ops <- cli (experiments/structure.py's docstring)."""
    assert S.upward(S.read_imports(PACKAGE)) == []


def test_the_cycle_check_finds_a_cycle():
    assert S.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _planted(tmp_path, module: str, line: str) -> Path:
    """A copy of the package with ``line`` appended to ``module`` (a path under nnfeat/)."""
    import shutil

    copy = tmp_path / "nnfeat"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + "\n" + line + "\n")
    return copy


def test_a_planted_upward_import_and_circle_are_found(tmp_path):
    """The rules above can fail: an analysis module that imports a view (upward), the sheets module importing a
    page that imports it (a circle), and a report submodule importing its package (the circle the report had),
    each planted in a copy of the package."""
    copy = _planted(tmp_path / "up", "analysis/heatmap.py", "from nnfeat.views.sheets import labelled_sheet")
    assert ("nnfeat.analysis.heatmap", "nnfeat.views.sheets") in S.upward(S.read_imports(copy))
    assert "nnfeat.views.sheets" in S.read_imports(PACKAGE).graph["nnfeat.views.heatmap_page"]
    copy = _planted(tmp_path / "circle", "views/sheets.py", "import nnfeat.views.heatmap_page")
    assert any({"nnfeat.views.sheets", "nnfeat.views.heatmap_page"} <= set(c)
               for c in S.cycles(S.read_imports(copy).graph))
    copy = _planted(tmp_path / "init", "ops/report/stages.py", "from nnfeat.ops.report import report")
    assert ("nnfeat.ops.report.stages", "nnfeat.ops.report") in S.upward(S.read_imports(copy))


def test_imports_inside_functions_are_few_and_say_why():
    """nnfeat's own modules are imported at module level; the few lazy ones carry their reason."""
    imports = S.read_imports(PACKAGE)
    listed = [f"{name}:{line} -> {target}" for name, line, target, _ in imports.in_functions]
    assert len(listed) < MAX_FUNCTION_LEVEL_IMPORTS, listed
    assert [f"{name}:{line}" for name, line, _, reason in imports.in_functions if not reason] == []


def test_other_imports_inside_functions_are_optional_extras_or_say_why():
    """timm, onnx, umap, tensorboard, transformers, captum, safetensors are optional; any other lazy import (a heavy
    library only one path needs) carries its reason in a comment."""
    assert S.unexplained_lazy_imports(S.read_imports(PACKAGE)) == []


def test_no_module_over_400_lines():
    assert [(path, n) for n, path in S.module_lines(PACKAGE) if n > MAX_MODULE_LINES] == []


def test_hooks_and_layouts_depend_on_torch_and_leaves_only():
    graph = S.read_imports(PACKAGE).graph
    assert graph["nnfeat.layouts"] <= {"nnfeat.errors"}
    assert graph["nnfeat.hooks"] <= {"nnfeat.errors", "nnfeat.layouts"}


def test_every_operation_has_its_module_and_command():
    """One module per public operation under nnfeat/ops, and cli/X.py maps onto it."""
    operations = ("render", "microscope", "examples", "atlas", "heatmap", "filters", "project", "saliency",
                  "attention", "uncertainty", "graph", "report", "spectrum")
    for name in operations:
        assert (PACKAGE / "ops" / f"{name}.py").is_file() or (PACKAGE / "ops" / name / "__init__.py").is_file(), name
        assert (PACKAGE / "cli" / f"{name}.py").is_file(), name


def test_every_command_module_is_registered_explicitly():
    from nnfeat import cli

    on_disk = {p.stem for p in (PACKAGE / "cli").glob("*.py")
               if not p.stem.endswith("_options")} - {"__init__", "__main__", "common"}
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
