#!/usr/bin/env bash
# stalign's two commands. Each sets up (or reuses) the environment in .venv/ first.
#   ./run.sh demo [OUT]   build pairs -> train -> evaluate on the bundled human breast-cancer sections (her2st C)
#   ./run.sh test [ARGS]  the test suite (what CI runs)
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))'; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "run.sh: error: Python >= 3.11 not found (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

setup_env() {
  local stamp=.venv/.stalign-install-stamp
  local want
  want=$(cat pyproject.toml run.sh | sha256sum | cut -c1-16)
  if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "run.sh: setting up .venv (first run: a few minutes, torch is ~5.5 GB) ..." >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # timm needs torchvision; this is the only torch/torchvision pair that imports here.
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install -q -e ".[dev,openslide,spatialdata,weights]"
  echo "$want" > "$stamp"
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo)
    setup_env
    exec .venv/bin/stalign -v demo --out "${1:-results/demo}"
    ;;
  test)
    setup_env
    # two pytest workers on two cores: one math thread each, or OpenMP oversubscribes
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
    exec .venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
    ;;
  *)
    echo "usage: ./run.sh demo [OUT] | ./run.sh test [PYTEST ARGS]" >&2
    exit 2
    ;;
esac
