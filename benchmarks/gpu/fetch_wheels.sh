#!/usr/bin/env bash
# Download the wheels of device-wheels.txt into .whl/ at the repository root (ignored
# by git through .git/info/exclude), for the device machine's Python 3.12 on x86-64.
# Run here, on the machine with network access; then carry .whl with the device call.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
grep -v '^#' benchmarks/gpu/device-wheels.txt | grep -v '^$' | xargs \
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl
ls -l .whl
du -sh .whl
