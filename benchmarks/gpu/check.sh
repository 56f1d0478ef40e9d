#!/usr/bin/env bash
# The device check on a lent GPU machine: install the carried wheels (if any) into
# /tmp/site, put this checkout's src/ first on PYTHONPATH (nothing is installed), log
# the card's state, and run check.py. README.md beside this file says how to call it.
#   benchmarks/gpu/check.sh OUT [check.py options...]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: benchmarks/gpu/check.sh OUT [check.py options]}
shift
py=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,temperature.gpu \
  --format=csv 2>&1 | tee "$out/nvidia-smi.csv" || true
df -h /dev/shm /tmp || true  # DataLoader workers hand batches over through /dev/shm
exec "$py" benchmarks/gpu/check.py --out "$out" --work /tmp/stalign-gpu-check "$@"
