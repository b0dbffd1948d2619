"""The README's examples still run: its Python API block as it is, and its command-line block's quick commands."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
README = (ROOT / "README.md").read_text()

needs_shared = pytest.mark.skipif(not (SHARED / "models").is_dir(), reason="../shared is absent (CI has it)")


def block(heading: str, language: str) -> str:
    section = README.split(f"## {heading}\n", 1)[1]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


@needs_shared
@pytest.mark.slow
def test_python_api_block_runs(tmp_path):
    code = block("Python API", "python")
    # run in a scratch copy of the layout the README assumes (repo root with ../shared beside it)
    (tmp_path / "repo").mkdir()
    os.symlink(SHARED, tmp_path / "shared")
    script = "import torch\ntorch.set_num_threads(1)\n" + code + "\nprint('API-OK', result.images.shape)\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path / "repo", capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "NNFEAT_WEIGHTS_PATH": str(SHARED / "models")},
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "API-OK" in proc.stdout
    assert (tmp_path / "repo" / "out" / "layer3" / "render.png").is_file()


@needs_shared
@pytest.mark.slow
def test_command_line_block_quick_commands_run(tmp_path):
    lines = [line.split("  #")[0].strip() for line in block("Command line", "bash").splitlines()]
    commands = [shlex.split(line) for line in lines if line.startswith("nnfeat ")]
    quick = [words for words in commands if words[1] in ("models", "layers", "render") and "--spectrum" not in words]
    assert len(quick) >= 8
    for words in quick:
        extra = ["--steps", "2", "--quiet", "--out", str(tmp_path / "out")] if words[1] == "render" else []
        proc = subprocess.run([sys.executable, "-m", "nnfeat", *words[1:], *extra], cwd=ROOT, capture_output=True,
                              text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "NNFEAT_WEIGHTS_PATH": str(SHARED / "models"),
                                   "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, f"{' '.join(words)}\n{proc.stderr[-2000:]}"
