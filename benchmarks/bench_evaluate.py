"""Evaluation benchmark: probe costs and the reference numbers on the bundled MOB store.

Prints (no timed assertions):
1. HEST ridge probe vs ridge_cv vs MLP wall time on real MOB features (ratios to ridge);
2. `evaluate` wall time with threads=1 vs threads=None (ratio), same inputs;
3. the reference table (colour histogram, 8x8 pixels, squidpy features, random ViT-tiny)
   on MOB, train on one animal / test on the other (leave one patient out);
4. with ``--scale N ...`` instead: stores of N pairs grown by copying the MOB sections
   under new ids (64-px patches), and `stalign evaluate` in a reduced configuration (two
   small encoders, histogram + random references, one seed) on each, in a fresh
   process: wall time and peak RSS.

Usage: .venv/bin/python benchmarks/bench_evaluate.py [--store DIR]
       .venv/bin/python benchmarks/bench_evaluate.py --scale 10000 100000
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
    ap.add_argument(
        "--scale",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="only the scale benchmark, on stores of N pairs",
    )
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.scale:
        scale(args.scale, args.threads)
        return
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


# ------------------------------------------------------------------------------ scale
def grow_store(base: Path, out: Path, n_pairs: int) -> Path:
    """Copy ``base``'s sections under new ids (patches hard-linked) until ``n_pairs``.

    Every copy keeps its patient, so the split stays leave-one-animal-out with two
    folds and per-section retrieval pools keep their size. Each copy gets the
    original's ``_SUCCESS`` record with the checksums of its own files, so the store
    passes the shard checks of `stalign evaluate`.
    """
    import hashlib
    import json
    import os
    import shutil

    import anndata as ad

    index = json.loads((base / "index.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    for name in ("build.json",):
        if (base / name).is_file():
            shutil.copy(base / name, out / name)
    samples, total, copy = [], 0, 0
    originals = {
        s["sample_id"]: ad.read_h5ad(base / s["path"] / "pairs.h5ad") for s in index["samples"]
    }
    while total < n_pairs:
        for s in index["samples"]:
            if total >= n_pairs:
                break
            sid = f"{s['sample_id']}_c{copy:03d}"
            d = out / "samples" / sid
            d.mkdir(parents=True, exist_ok=True)
            if not (d / "patches.h5").exists():
                os.link(base / s["path"] / "patches.h5", d / "patches.h5")
            a = originals[s["sample_id"]].copy()
            a.obs["sample_id"] = sid
            a.write_h5ad(d / "pairs.h5ad")
            files = {
                name: {
                    "bytes": (d / name).stat().st_size,
                    "sha256": hashlib.sha256((d / name).read_bytes()).hexdigest(),
                }
                for name in ("pairs.h5ad", "patches.h5")
            }
            record = json.loads((base / s["path"] / "_SUCCESS").read_text())
            (d / "_SUCCESS").write_text(json.dumps({**record, "files": files}, indent=1))
            samples.append({**s, "sample_id": sid, "path": f"samples/{sid}", "files": files})
            total += s["n_pairs"]
        copy += 1
    index.update(samples=samples, n_samples=len(samples), n_pairs=total)
    (out / "index.json").write_text(json.dumps(index, indent=1))
    return out


def scale_run(store: Path, exports: list[Path], out: Path, threads: int) -> tuple[float, float]:
    """`stalign evaluate` (reduced configuration) in a fresh process: wall s, peak RSS MiB."""
    import subprocess
    import sys

    cmd = [
        "/usr/bin/time",
        "-f",
        "PEAK_RSS_KB %M",
        sys.executable,
        "-m",
        "stalign",
        "evaluate",
        str(store),
        "--encoder",
        f"baseline={exports[0]}",
        "--encoder",
        f"aligned={exports[1]}",
        "--out",
        str(out),
        "--references",
        "histogram,random",
        "--image-size",
        "64",
        "--seeds",
        "0",
        "--n-markers",
        "1",
        "1",
        "--mil-epochs",
        "5",
        "--threads",
        str(threads),
        "--no-progress",
    ]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    kb = [int(line.split()[1]) for line in p.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
    return wall, kb[-1] / 1024


def scale(sizes: list[int], threads: int) -> None:
    """Grow 64-px MOB stores to ``sizes`` pairs and time `stalign evaluate` on each."""
    import torch

    from stalign import models
    from stalign.pairs import build_pairs, merge_pairs

    tmp = Path(tempfile.mkdtemp(prefix="bench_evaluate_scale_"))
    base = tmp / "mob64"
    build_pairs(
        REPO / "data/manifests/examples.csv",
        base,
        mpp=4.7,
        size_px=64,
        progress=False,
        report=False,
    )
    merge_pairs(base, report=False)
    exports = []
    for name, seed in (("small_a", 0), ("small_b", 1)):
        torch.manual_seed(seed)
        enc = models.create_encoder("vit_tiny_patch16_224", img_size=64, depth=2)
        exports.append(models.export_timm(enc, tmp / "exports" / name))
    print(
        "\n4. scale: `stalign evaluate` (2 small encoders, histogram + random, 1 seed), "
        f"{threads} thread(s)"
    )
    print("  pairs     sections  wall s   s/1k pairs  peak RSS MiB")
    for n in sizes:
        store = grow_store(base, tmp / f"store_{n}", n)
        import json

        idx = json.loads((store / "index.json").read_text())
        wall, rss = scale_run(store, exports, tmp / f"eval_{n}", threads)
        print(
            f"  {idx['n_pairs']:8d}  {idx['n_samples']:8d}  {wall:7.1f}  "
            f"{wall / idx['n_pairs'] * 1e3:10.2f}  {rss:12.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
