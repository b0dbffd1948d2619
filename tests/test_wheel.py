"""nnfeat as a user installs it: a wheel built from the tree, installed into a fresh virtual environment.

The fresh environment gets the wheel (``--no-deps``) and borrows the dependencies (torch, ...) from the
test interpreter's site-packages through a ``.pth`` path line. Such a line only appends that folder to
``sys.path``; the ``.pth`` files inside it (the editable install's finder) are not run, so the source
tree stays invisible: every ``nnfeat`` module and every page template must come from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
#: every page template in the source tree (the wheel must ship each one)
TEMPLATES = tuple(sorted(p.name for p in (REPO / "nnfeat" / "views" / "templates").iterdir() if p.is_file()))
assert {"page.html", "atlas.html", "microscope.html", "scatter.html", "graph.html", "report.html"} <= set(TEMPLATES)
#: what a build never needs from the tree (and what must not leak stale files into the wheel)
NOT_BUILT = (".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "test-artifacts", "out")


def _run(command: list[str], *, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(map(str, command))} exited {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n"
        f"--- stderr\n{done.stderr[-3000:]}"
    )
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(fresh venv's python, its site-packages, subprocess env, a work folder outside the tree)."""
    root = tmp_path_factory.mktemp("wheel")
    # build from a copy of the tree: setuptools' in-tree build/ folder would litter the checkout and can
    # carry files deleted since an earlier build into the wheel
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_BUILT), symlinks=True)
    wheels = root / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", str(wheels)], cwd=root)
    (wheel,) = wheels.glob("nnfeat-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    missing = [name for name in TEMPLATES if f"nnfeat/views/templates/{name}" not in names]
    assert not missing, f"the wheel lacks the page templates {missing}: see [tool.setuptools.package-data]"

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], cwd=root)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=root).stdout.strip())
    (site / "nnfeat-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(NNFEAT_HOME=str(root / "home"), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
               PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1")
    work = root / "work"
    work.mkdir()
    return python, site, env, work


def test_nnfeat_and_its_templates_come_from_the_wheel(installed):
    python, site, env, work = installed
    probe = ("import json, nnfeat, nnfeat.views, nnfeat.views.templating as t, torch;"
             "print(json.dumps({'nnfeat': nnfeat.__file__, 'views': nnfeat.views.__file__,"
             " 'css': t.template_text('atlas.css')}))")
    found = json.loads(_run([str(python), "-c", probe], cwd=work, env=env).stdout)
    assert Path(found["nnfeat"]).resolve() == (site / "nnfeat" / "__init__.py").resolve()
    assert Path(found["views"]).resolve().is_relative_to(site.resolve())
    templates = site / "nnfeat" / "views" / "templates"
    assert templates.is_dir() and sorted(p.name for p in templates.iterdir()) == sorted(TEMPLATES)
    assert found["css"] == (templates / "atlas.css").read_text(encoding="utf-8")


def test_render_command_from_the_wheel(installed):
    python, _, env, work = installed
    _run([str(python), "-m", "nnfeat", "render", "digits-cnn", "bn2:0..3", "--steps", "4", "--quiet", "--out", "R"],
         cwd=work, env=env)
    assert (work / "R" / "render.png").is_file()
    assert (work / "R" / "render.json").is_file()
    json.loads((work / "R" / "render.json").read_text())


def test_atlas_command_page_uses_the_installed_templates(installed):
    python, site, env, work = installed
    templates = site / "nnfeat" / "views" / "templates"
    # a marker only the installed copy of the stylesheet has: it reaches the page only if the page read that copy
    marker = "/* read from the installed wheel's package data */\n"
    with open(templates / "atlas.css", "a", encoding="utf-8") as css:
        css.write(marker)
    _run([str(python), "-m", "nnfeat", "atlas", "digits-cnn", "conv3", "--images", "digits", "--n", "400",
          "--per-image", "1", "--grid", "4", "--min-count", "2", "--steps", "4", "--icon-size", "16",
          "--layout", "pca", "--quiet", "--out", "A"], cwd=work, env=env)
    page = (work / "A" / "atlas.html").read_text(encoding="utf-8")
    assert marker in page
    for name in ("atlas.css", "atlas.js"):
        assert (templates / name).read_text(encoding="utf-8") in page, name
