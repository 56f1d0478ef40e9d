"""Data feeding: images/s that `PairsDataset` + `DataLoader` deliver at 224 px.

Builds two small real stores from the MOB sections at 224 px / 0.5 µm/px (HEST
geometry), one raw and one JPEG (q90), then for each store and 1 / 2 worker processes
iterates a shuffled `DataLoader` (batch 64, `collate_pairs`, as `stalign train` does)
and prints images/s and images/s per worker core. Separately it times the training
augmentations (`crop_batch` + `augment_batch`, which `fit` runs on the training device
after the transfer) on the CPU, per core.

``workers=0`` loads in the main process and also reports images per CPU-second, the
load-independent cost on a shared machine.

Usage: .venv/bin/python benchmarks/bench_loader.py [--batches 40] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST_COLS = "sample_id,patient_id,organ,species,platform,path,image,mpp,source,license"


def build_stores(tmp: Path, size_px: int) -> dict[str, Path]:
    """Two sections of MOB at ``size_px`` px / 0.5 µm/px, raw and JPEG."""
    from stalign.pairs import build_pairs, merge_pairs

    mob = REPO / "data/examples/mob"
    rows = [
        f"{s},{p},olfactory_bulb,mus_musculus,legacy_st,{mob / f'{s}.tsv.gz'},"
        f"{mob / f'{s}.jpg'},,bench,MIT"
        for s, p in (("MOB1", "mouse1"), ("MOB3", "mouse2"))
    ]
    manifest = tmp / "manifest.csv"
    manifest.write_text("\n".join([MANIFEST_COLS, *rows]) + "\n")
    stores = {}
    for enc in ("raw", "jpeg"):
        out = tmp / f"pairs_{enc}"
        t = time.perf_counter()
        build_pairs(
            manifest,
            out,
            mpp=0.5,
            size_px=size_px,
            jpeg=enc == "jpeg",
            progress=False,
            report=False,
        )
        merge_pairs(out, report=False)
        print(f"built {enc} store ({size_px} px) in {time.perf_counter() - t:.1f} s")
        stores[enc] = out
    return stores


def loader_rate(store: Path, workers: int, batches: int, batch_size: int) -> tuple[float, float]:
    """Images/s of a shuffled DataLoader over ``store`` (first batch excluded: start-up).

    Also returns images per CPU-second of the loading processes (``workers=0``: the
    main process does the work, so this is load independent: images/s of one core
    that is not shared).
    """
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from stalign.pairs import PairsDataset
    from stalign.train import collate_pairs

    ds = PairsDataset(store)
    sampler = RandomSampler(
        ds,
        replacement=True,
        num_samples=(batches + 1) * batch_size,
        generator=torch.Generator().manual_seed(0),
    )
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_pairs,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    it = iter(loader)
    next(it)  # workers started, files opened
    t, cpu = time.perf_counter(), time.process_time()
    n = 0
    for batch in it:
        n += batch["image"].shape[0]
    return n / (time.perf_counter() - t), n / (time.process_time() - cpu)


def augment_rate(size_px: int, batch_size: int, repeats: int) -> float:
    """Images/s of the training augmentations (crop + flips/rot90 + colour) on 1 CPU core."""
    import torch

    from stalign.train import augment_batch, crop_batch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 3, size_px, size_px)
    t = time.perf_counter()
    for _ in range(repeats):
        y = crop_batch(x, jitter_px=8, out_px=size_px, generator=g)
        augment_batch(y, g, color_jitter=0.1)
    return repeats * batch_size / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-px", type=int, default=224)
    ap.add_argument("--batches", type=int, default=40, help="timed batches per setting")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    stores = build_stores(tmp, args.size_px)
    print(f"\nCPU cores: {os.cpu_count()}; load average before: {os.getloadavg()[0]:.1f}")
    print(f"\n1. PairsDataset + DataLoader, {args.size_px} px, batch {args.batch_size}, shuffled")
    print("  store  workers  images/s  images/s per worker core  (images per CPU-second)")
    for enc, store in stores.items():
        for w in [0, *args.workers]:
            rate, per_cpu = loader_rate(store, w, args.batches, args.batch_size)
            extra = f"  ({per_cpu:.0f}, main process only)" if w == 0 else ""
            print(f"  {enc:5s}  {w:7d}  {rate:8.0f}  {rate / max(w, 1):10.0f}{extra}", flush=True)
    rate = augment_rate(args.size_px, args.batch_size, repeats=max(args.batches // 4, 3))
    print(
        f"\n2. training augmentations (crop_batch + augment_batch) on 1 CPU core: "
        f"{rate:.0f} images/s (in `fit` they run on the training device)"
    )
    print(f"  load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
