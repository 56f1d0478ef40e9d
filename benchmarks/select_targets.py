"""Choose the demo's pathway targets on the INNER split of her2st patient C.

Selection protocol: only the training sections are read — the manifest this script
writes holds C2, C3 and C4; the demo's test sections C5 and C6 are never opened. Every
candidate builds its pairs store from those three sections, trains the demo's alignment
(``PipelineConfig`` defaults: 112 px, batch 32, 100 steps, LoRA on the last 4 stages)
on C2 + C3 and is evaluated on C4 with :func:`stalign.pipeline.run_pipeline` (probes fit
on C2 + C3, tested on C4), next to the untrained baseline (no shuffled control here: the
choice is between targets, and the demo itself runs the control on every seed).

Score = the **depth-adjusted** gene readout of the aligned encoder on C4 (cubic in log
library size regressed out of targets and predictions, then Pearson; 50 HEST genes,
log1p), not the targets' correlation with depth (which AUCell or an in-sample regression
lower trivially). Candidates: ssGSEA (the default), ssGSEA on counts rarefied to
``--rarefy-depth`` (≈ the 10th percentile of the training spots' depth), scanpy's
control-gene-matched ``score_genes`` on log CP10k, and ssGSEA with depth regressed out
of the targets in training (fitted on C2 + C3 only).

Writes ``OUT/candidates.csv`` and ``OUT/README.md``::

    PYTHONPATH=src .venv/bin/python benchmarks/select_targets.py --out benchmarks/targets
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from stalign.pipeline import HER2ST_MANIFEST, PipelineConfig, run_pipeline

INNER = ("C2", "C3", "C4")


def _inner_manifest(out: Path) -> Path:
    """Write the her2st manifest restricted to the inner sections (absolute paths)."""
    rows = list(csv.DictReader(open(HER2ST_MANIFEST, newline="", encoding="utf-8")))
    keep = [r for r in rows if r["sample_id"] in INNER]
    for r in keep:
        for col in ("path", "image"):
            r[col] = str((Path(HER2ST_MANIFEST).parent / r[col]).resolve())
    path = out / "inner_manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    return path


def candidates(rarefy_depth: int) -> dict[str, dict]:
    """The target options compared, as PipelineConfig overrides."""
    return {
        "ssgsea": {},
        f"ssgsea, rarefied to {rarefy_depth}": {"rarefy_depth": rarefy_depth},
        "score_genes (log CP10k)": {"method": "score_genes"},
        "ssgsea, depth regressed out in training": {"target_transform": "depth_regression"},
    }


def _scores(table: pd.DataFrame) -> dict[str, float]:
    """Depth-adjusted and plain gene/pathway readouts of each feature row."""
    out = {}
    for row in table.itertuples():
        if row.metric.startswith("pearson") and row.task.startswith(("genes", "pathways")):
            out[f"{row.features} | {row.task} | {row.metric}"] = row.mean
    return out


def main() -> None:
    """Run every candidate on the inner split and write the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/targets")
    ap.add_argument("--rarefy-depth", type=int, default=2000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", nargs="*", default=None, help="run these candidates only")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="select_targets_"))
    manifest = _inner_manifest(work)
    rows = []
    for name, overrides in candidates(args.rarefy_depth).items():
        if args.only and name not in args.only:
            continue
        config = PipelineConfig(
            manifest=str(manifest),
            train_samples=("C2", "C3"),
            test_samples=("C4",),
            val_samples=(),
            seeds=tuple(args.seeds),
            references=("library_size",),
            shuffled_control=False,
            mil_epochs=5,
            **overrides,
        )
        t0 = time.perf_counter()
        result = run_pipeline(
            work / name.replace(" ", "_").replace(",", ""), config, progress=False
        )
        table = pd.read_csv(result.report.parent / "summary.csv")
        for key, value in _scores(table).items():
            features, task, metric = key.split(" | ")
            rows.append(
                {"candidate": name, "features": features, "task": task, "metric": metric,
                 "mean": value, "minutes": (time.perf_counter() - t0) / 60}
            )  # fmt: skip
        pd.DataFrame(rows).to_csv(out / "candidates.csv", index=False)
        logging.info("%s done in %.1f min", name, (time.perf_counter() - t0) / 60)
    settings = dataclasses.asdict(config)
    (out / "settings.txt").write_text(str(settings))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
