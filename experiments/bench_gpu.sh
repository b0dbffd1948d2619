#!/usr/bin/env bash
# Rows 1, 3 and 4 of experiments/bench_render.py on CUDA (plus row L, the levers): torchvision googlenet
# (random weights, so no ../shared is needed) at 224 px, batch 64. About 5 minutes on one H100.
#
#   bash experiments/bench_gpu.sh                 # writes out/bench/bench_render.{json,md}
#   ROWS=1,3,4 OUT=/some/dir bash experiments/bench_gpu.sh
#
# Python: $PYTHON, else .venv/bin/python, else python3. Lucent (row 3) runs from, in this order:
#   * wheels in $LUCENT_WHEELS (default .whl/) holding kornia-0.4.1, torch_lucent-0.1.8 and decorator
#     (pure-Python; fetch them where pip works with
#      `pip download --no-deps -d .whl kornia==0.4.1 torch-lucent==0.1.8 decorator`),
#     installed with --target into a temporary folder that only the lucent worker sees;
#   * the venv made by experiments/setup_lucent.sh (.venv-lucent);
#   * otherwise row 3 says it was skipped.
# Without CUDA the benchmark stops with a one-line message and exit status 2.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
ROWS="${ROWS:-1,3,4,L}"
OUT="${OUT:-out}"
WHEELS="${LUCENT_WHEELS:-.whl}"
LUCENT_ARGS=()
if ls "$WHEELS"/kornia-0.4.1*.whl "$WHEELS"/torch_lucent-*.whl >/dev/null 2>&1; then
  SITE="$(mktemp -d /tmp/lucent-site.XXXXXX)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" \
    "$WHEELS"/kornia-0.4.1*.whl "$WHEELS"/torch_lucent-*.whl "$WHEELS"/decorator-*.whl
  LUCENT_ARGS=(--lucent-python "$PY" --lucent-pythonpath "$SITE")
fi
export PYTHONUNBUFFERED=1
exec "$PY" experiments/bench_render.py --device cuda --preset gpu --rows "$ROWS" --out "$OUT" \
  ${LUCENT_ARGS[@]+"${LUCENT_ARGS[@]}"} "$@"
