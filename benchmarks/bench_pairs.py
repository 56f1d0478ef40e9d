"""Benchmark of `stalign build-pairs`: throughput with 1 and 2 workers, JPEG size/PSNR, RSS.

Prints its figures; nothing is asserted. Run from the repository root:

    .venv/bin/python benchmarks/bench_pairs.py [--synthetic-samples 8]

* MOB manifest: the 4 bundled sections (64 px at 4.7 µm/px, Hallmark ssGSEA).
* Synthetic manifest: N samples built from the real MOB sections (copies under new
  ids, cycling MOB1..MOB4), the shape of a larger atlas build.
* Bytes per pair: raw uint8 vs JPEG (q=90, 4:4:4) with PSNR, for the demo geometry
  (64 px at 4.7 µm/px) and the HEST geometry (224 px at 0.5 µm/px).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
MOB = REPO / "data" / "examples" / "mob"
HEADER = "sample_id,patient_id,organ,species,platform,path,image,mpp,source,license\n"
STAMP_PAIRS = 1_800_000
CPU_S: dict = {}  # (manifest, workers) -> CPU seconds of the last run (all processes)


def synthetic_manifest(tmp: Path, n: int) -> Path:
    data = tmp / "synthetic"
    data.mkdir()
    shutil.copy(MOB / "mouse_genes.tsv.gz", data / "mouse_genes.tsv.gz")
    rows = []
    for i in range(n):
        src = f"MOB{i % 4 + 1}"
        sid = f"S{i:03d}"
        for a, b in (
            (f"{src}.tsv.gz", f"{sid}.tsv.gz"),
            (f"{src}.jpg", f"{sid}.jpg"),
            (f"alignment_table_{src}.tsv", f"alignment_table_{sid}.tsv"),
        ):
            os.symlink(MOB / a, data / b)
        rows.append(
            f"{sid},patient{i // 2},olfactory_bulb,mus_musculus,legacy_st,"
            f"synthetic/{sid}.tsv.gz,,,copy of {src},MIT\n"
        )
    p = tmp / "synthetic.csv"
    p.write_text(HEADER + "".join(rows))
    return p


def timed_build(manifest: Path, out: Path, workers: int, **kw) -> tuple[float, int, int]:
    from stalign.pairs import build_pairs

    def cpu() -> float:
        a = resource.getrusage(resource.RUSAGE_SELF)
        b = resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    t, c = time.perf_counter(), cpu()
    r = build_pairs(manifest, out, workers=workers, progress=False, report=False, **kw)
    dt = time.perf_counter() - t
    CPU_S[(str(manifest), workers)] = cpu() - c
    return dt, int(r.table["n_pairs"].sum()), int(r.table["n_spots"].sum())


def jpeg_figures(patches: np.ndarray, quality: int = 90) -> tuple[float, float, float]:
    from stalign.pairs import decode_jpeg, encode_jpeg, psnr

    sizes, psnrs = [], []
    for p in patches:
        data = encode_jpeg(p, quality=quality)
        sizes.append(len(data))
        psnrs.append(psnr(p, decode_jpeg(data)))
    raw = patches[0].nbytes
    return raw, float(np.mean(sizes)), float(np.mean(psnrs))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--synthetic-samples", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    kw = {"mpp": 4.7, "size_px": 64}
    print(
        f"cores: {os.cpu_count()}; load average before: {os.getloadavg()[0]:.1f}; "
        f"geometry: {kw['size_px']} px at {kw['mpp']} µm/px"
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results = {}
        manifests = {
            "MOB (4 samples)": REPO / "data" / "manifests" / "examples.csv",
            f"synthetic ({args.synthetic_samples} samples)": synthetic_manifest(
                tmp, args.synthetic_samples
            ),
        }
        for name, manifest in manifests.items():
            # alternate 1, 2, 1, 2 workers and keep each one's best run: the machine is
            # shared, so the minimum is the least disturbed figure
            for rep in range(args.repeats):
                for w in (1, 2):
                    out = tmp / f"{name[:3]}-{w}-{rep}"
                    dt, pairs, spots = timed_build(manifest, out, w, **kw)
                    if (name, w) not in results or dt < results[(name, w)][0]:
                        results[(name, w)] = (dt, pairs, spots)
                    if rep:
                        shutil.rmtree(out)
            for w in (1, 2):
                dt, pairs, spots = results[(name, w)]
                cpu_s = CPU_S[(str(manifest), w)]
                print(
                    f"{name:>26}  workers={w}: {dt:6.1f} s  {pairs / dt:6.1f} pairs/s  "
                    f"{spots / dt:6.1f} spots/s  ({pairs} pairs of {spots} spots; "
                    f"CPU {cpu_s:.1f} s = {cpu_s / dt:.2f} cores busy)"
                )
            s = results[(name, 1)][0] / results[(name, 2)][0]
            print(f"{name:>26}  speed-up 2 vs 1 workers: {s:.2f}x (best of {args.repeats})")

        # bytes per pair on disk (whole shard: patches.h5 + pairs.h5ad + QC files)
        store = tmp / "MOB-1-0"
        shard_bytes = sum(p.stat().st_size for p in (store / "samples").rglob("*") if p.is_file())
        n_pairs = results[("MOB (4 samples)", 1)][1]
        with h5py.File(store / "samples" / "MOB1" / "patches.h5", "r") as f:
            demo = f["img"][:]
        raw, jpg, q = jpeg_figures(demo)
        print(
            f"\nbytes/pair (64 px @ 4.7 µm/px): raw {raw:.0f} B, JPEG q90 {jpg:.0f} B "
            f"({raw / jpg:.1f}x smaller), PSNR {q:.1f} dB; whole shard on disk (raw) "
            f"{shard_bytes / n_pairs:.0f} B/pair"
        )
        # HEST geometry on a subset of real spots
        from stalign import _keys as K
        from stalign import im, io

        adata = io.read_legacy_st(MOB / "MOB1")
        adata = adata[adata.obs[K.IN_TISSUE].to_numpy(bool)][:200].copy()
        hest = im.extract_patches(adata, mpp=0.5, size_px=224, progress=False)
        raw224, jpg224, q224 = jpeg_figures(hest)
        print(
            f"bytes/pair (224 px @ 0.5 µm/px): raw {raw224:.0f} B, JPEG q90 {jpg224:.0f} B "
            f"({raw224 / jpg224:.1f}x smaller), PSNR {q224:.1f} dB (MOB is ~4.4 µm/px: "
            "these patches are ~9x up-sampled, so they compress unusually well)"
        )

        rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rss_kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        print(f"\npeak RSS: main process {rss_self:.0f} MiB, largest worker {rss_kids:.0f} MiB")

        # extrapolation to a STAMP-sized atlas (1.8 M pairs)
        syn = f"synthetic ({args.synthetic_samples} samples)"
        dt2, p2, s2 = results[(syn, 2)]
        other = shard_bytes / n_pairs - raw  # h5ad + QC bytes per pair besides the patch
        print(f"\nextrapolation to {STAMP_PAIRS:,} pairs:")
        for label, per_pair in (
            ("224 px raw", raw224 + other),
            ("224 px JPEG", jpg224 + other),
            ("64 px raw", raw + other),
        ):
            print(f"  disk {label:>11}: {STAMP_PAIRS * per_pair / 1e9:7.1f} GB")
        print(
            f"  time at this run's 2-worker rate ({p2 / dt2:.1f} kept pairs/s, MOB keeps only "
            f"{p2 / s2:.0%} of spots): {STAMP_PAIRS / (p2 / dt2) / 3600:.1f} h on 2 cores; "
            f"if every spot were kept ({s2 / dt2:.1f} spots/s): "
            f"{STAMP_PAIRS / (s2 / dt2) / 3600:.1f} h. Scales with cores/nodes (--workers, "
            "--shard); 224-px patches cost more per pair than these 64-px ones."
        )


if __name__ == "__main__":
    main()
