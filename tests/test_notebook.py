"""The tour notebook (experiments/tour.ipynb) runs top to bottom in a real Jupyter kernel and shows its pictures.

The notebook is executed from ``experiments/`` (its relative paths are written for that folder) with ``OUT``
redirected to a temp folder, so the run leaves nothing in the repository and never reuses a stale atlas
cache; the executed copy is written to the temp folder too, for inspection.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "experiments" / "tour.ipynb"
SHARED = ROOT.parent / "shared"
RENDERING_CALLS = ("nnfeat.render(", "examples(", "build_atlas(")


def _jupyter():
    """nbformat and nbclient, or a failure that says what to install (they are test dependencies)."""
    try:
        import ipykernel  # noqa: F401  (the kernel nbclient starts; it also provides the python3 kernelspec)
        import nbclient
        import nbformat
    except ImportError as error:
        pytest.fail(f"the notebook test needs nbclient, nbformat and ipykernel in this environment ({error}); "
                    f"install them with: pip install nbclient nbformat ipykernel")
    return nbformat, nbclient


def _parameters_index(nb) -> int:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            return i
    raise AssertionError("tour.ipynb has no code cell tagged 'parameters'")


def test_notebook_is_stored_without_outputs():
    nbformat, _ = _jupyter()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"tour.ipynb is stored with outputs (clear them): {cell.source[:60]!r}"


@pytest.mark.slow
def test_tour_notebook_runs(tmp_path, monkeypatch):
    if not SHARED.is_dir():
        pytest.skip(f"the tour needs the shared weights and CIFAR-10 images at {SHARED} (absent here)")
    nbformat, nbclient = _jupyter()
    if not os.environ.get("NNFEAT_WEIGHTS_PATH"):
        monkeypatch.setenv("NNFEAT_WEIGHTS_PATH", str(SHARED / "models"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel inherits this environment

    nb = nbformat.read(NOTEBOOK, as_version=4)
    out = tmp_path / "out"
    injected = nbformat.v4.new_code_cell(f"OUT = {str(out)!r}  # injected by tests/test_notebook.py")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(_parameters_index(nb) + 1, injected)

    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "experiments")}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / "tour.executed.ipynb")

    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    for cell in code_cells:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"cell {cell.source[:60]!r} raised {errors[0].ename}: {errors[0].evalue}"
    rendering = [cell for cell in code_cells if any(call in cell.source for call in RENDERING_CALLS)]
    assert len(rendering) >= 7
    for cell in rendering:
        pictures = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert pictures, f"cell {cell.source[:60]!r} shows no picture (end it with the result)"
    assert (out / "atlas" / "atlas.html").is_file()
    assert (out / "layer3-0..7" / "render.json").is_file()
