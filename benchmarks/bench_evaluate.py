"""Evaluation benchmark: probe costs and the reference numbers on the bundled MOB store.

Prints (no timed assertions):
1. HEST ridge probe vs ridge_cv vs MLP wall time on real MOB features (ratios to ridge);
2. `evaluate` wall time with threads=1 vs threads=None (ratio), same inputs;
3. the reference table (colour histogram, 8x8 pixels, squidpy features, random ViT-tiny)
   on MOB, train on one animal / test on the other (leave one patient out).

Usage: .venv/bin/python benchmarks/bench_evaluate.py [--store DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=None, help="existing MOB pairs store (else built)")
    ap.add_argument("--size-px", type=int, default=32)
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    from stalign import bench
    from stalign.pairs import build_pairs

    tmp = Path(tempfile.mkdtemp(prefix="bench_evaluate_"))
    store = Path(args.store) if args.store else tmp / "pairs"
    if args.store is None:
        t = time.perf_counter()
        build_pairs(
            REPO / "data/manifests/examples.csv",
            store,
            mpp=4.7,
            size_px=args.size_px,
            progress=False,
        )
        print(
            f"built MOB store ({args.size_px} px at 4.7 µm/px) in {time.perf_counter() - t:.1f} s"
        )
    data = bench.load_pairs_arrays(store)
    pats = data.obs["patient_id"].to_numpy()
    smp = data.obs["sample_id"].to_numpy()
    X = bench.downsampled_pixels(data.patches)
    print(f"{len(pats)} spots, {X.shape[1]}-d 8x8-pixel features")

    print("\n1. probe cost (genes, leave one patient out), threads=1")
    times = {}
    with threadpool_limits(1):
        for probe in ("ridge", "ridge_cv", "mlp"):
            t = time.perf_counter()
            r = bench.gene_prediction(
                X, data.counts, pats, gene_names=data.gene_names, samples=smp, probe=probe
            )
            times[probe] = time.perf_counter() - t
            print(
                f"  {probe:9s} {times[probe]:6.2f} s  ({times[probe] / times['ridge']:.1f}x ridge)"
                f"  pearson {r.mean:.3f} ± {r.std:.3f}"
            )

    print("\n2. evaluate() wall time, threads=1 vs threads=None (histogram + pixels, 1 seed)")
    wall = {}
    for threads in (1, None):
        t = time.perf_counter()
        bench.evaluate(
            store,
            [],
            out=tmp / f"ev_{threads}",
            references=("histogram", "pixels"),
            seeds=(0,),
            n_marker_genes=1,
            n_marker_pathways=1,
            threads=threads,
            progress=False,
        )
        wall[threads] = time.perf_counter() - t
        print(f"  threads={threads}: {wall[threads]:.1f} s")
    print(f"  ratio None/1 = {wall[None] / wall[1]:.2f}")

    print("\n3. reference features on MOB (all references, seeds 0 1 2), threads=1")
    t = time.perf_counter()
    res = bench.evaluate(
        store, [], out=tmp / "ev_refs", image_size=112, seeds=(0, 1, 2), threads=1, progress=False
    )
    print(f"  {time.perf_counter() - t:.1f} s; report {res.report}")
    tab = res.table[res.table["metric"].isin(["pearson", "recall@5", "profile_corr", "roc_auc"])]
    print(tab.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
