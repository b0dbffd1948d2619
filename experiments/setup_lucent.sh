#!/usr/bin/env bash
# Set up the lucent side of experiments/bench_render.py (row 3): a separate venv, never a dependency of nnfeat.
#
#   bash experiments/setup_lucent.sh            # creates .venv-lucent next to .venv (git-ignored by .venv*/)
#
# torch-lucent 0.1.8 requires kornia<=0.4.1, so the venv gets its own kornia 0.4.1 and torch-lucent
# (both --no-deps), plus lucent's import-time need `decorator` (lucent_side.py stands in for IPython,
# which lucent imports only for notebook display). torch, torchvision,
# numpy, tqdm and pillow come from nnfeat's own .venv through a .pth file; .pth paths are appended
# after the venv's site-packages, so the old kornia shadows nnfeat's kornia 0.9 in this venv only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAIN_VENV="${MAIN_VENV:-$ROOT/.venv}"
LUCENT_VENV="${LUCENT_VENV:-$ROOT/.venv-lucent}"

[ -x "$MAIN_VENV/bin/python" ] || { echo "setup_lucent: $MAIN_VENV/bin/python not found; create nnfeat's venv first" >&2; exit 1; }
PY="$(readlink -f "$MAIN_VENV/bin/python")"
"$PY" -m venv "$LUCENT_VENV"
MAIN_SITE="$("$MAIN_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
LUCENT_SITE="$("$LUCENT_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$LUCENT_VENV/bin/python" -m pip install --quiet --no-deps "torch-lucent==0.1.8" "kornia==0.4.1"
"$LUCENT_VENV/bin/python" -m pip install --quiet --no-deps decorator
echo "$MAIN_SITE" > "$LUCENT_SITE/zz_nnfeat_venv.pth"
"$LUCENT_VENV/bin/python" - <<'PY'
import sys, types
try:
    import IPython.display  # noqa: F401
except ImportError:  # as lucent_side.py does
    sys.modules["IPython"] = types.ModuleType("IPython"); sys.modules["IPython.display"] = types.ModuleType("IPython.display")
import kornia, torch, lucent
from lucent.optvis import render, param, transform, objectives  # noqa: F401
assert kornia.__version__ == "0.4.1", kornia.__version__
print(f"lucent venv ready: torch {torch.__version__}, kornia {kornia.__version__}, lucent {lucent.__version__}")
PY
