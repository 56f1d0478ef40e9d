#!/usr/bin/env bash
# Fingerprint of a reduced demo, for refactors that must keep outputs byte-identical.
#   scripts/refactor_fingerprint.sh OUT [REV]
# Copies the working tree (or, with REV, that git revision) to a scratch folder whose path
# has a fixed length, runs `stalign demo` there with few steps and two seeds on the bundled
# her2st example (using this checkout's .venv), then writes OUT/sha256.txt over the pairs
# shards (pairs.h5ad, patches.h5), runs.csv, summary.csv, per_target_*.csv, report.md and the
# figures, with the scratch path masked (outputs record absolute paths).
# Compare two with: diff A/sha256.txt B/sha256.txt
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "$1"); rev=${2:-}
rm -rf "$out"; mkdir -p "$out" /tmp/fpr
scratch=$(mktemp -d /tmp/fpr/XXXXXXXX)   # fixed length: 17 characters
trap 'rm -rf "$scratch"' EXIT
mkdir "$scratch/s"
if [ -n "$rev" ]; then
  git -C "$here" archive "$rev" | tar -x -C "$scratch/s"
else
  git -C "$here" ls-files -co --exclude-standard -z | (cd "$here" && xargs -0 cp --parents -t "$scratch/s" 2>/dev/null || true)
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONHASHSEED=0
( cd "$scratch/s" && PYTHONPATH="$scratch/s/src" "$here/.venv/bin/python" -m stalign demo --out "$scratch/d" \
    --max-steps 4 --seeds 0 1 --mil-epochs 2 --no-progress ) > "$out/log.txt" 2>&1 || { tail "$out/log.txt"; exit 1; }
"$here/.venv/bin/python" - "$scratch" "$out" <<'PY'
import hashlib, sys
from pathlib import Path
scratch, out = sys.argv[1].encode(), Path(sys.argv[2])
root = Path(sys.argv[1]) / "d"
keep = lambda p: p.name in {"pairs.h5ad", "patches.h5", "runs.csv", "summary.csv", "report.md"} \
    or (p.name.startswith("per_target_") and p.suffix == ".csv") or p.suffix == ".png"
lines = []
for p in sorted(q for q in root.rglob("*") if q.is_file() and keep(q)):
    data = p.read_bytes().replace(scratch, b"X" * len(scratch))
    lines.append(f"{hashlib.sha256(data).hexdigest()}  {p.relative_to(root)}")
(out / "sha256.txt").write_text("\n".join(lines) + "\n")
print(len(lines), "files hashed")
PY
cp -r "$scratch/d" "$out/demo"
