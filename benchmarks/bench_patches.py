"""Patch extraction benchmark: stalign's lazy tile reader vs reading the level into memory.

Builds large pyramidal, tiled, JPEG-compressed TIFFs at 0.25 µm/px from the real MOB1
H&E (upsampled 2× and mirror-tiled; written tile by tile from a generator, so building
never holds a level in memory), places ~100,000 spot centres on a grid, and extracts
224-px patches at 0.5 µm/px (level 1) with tissue fractions:

* ``stalign``: ``stalign.im.iter_patches(order='spatial')`` — reads only the tiles the
  patches touch (decoded in a thread pool, LRU-cached);
* ``stalign-obs-random``: the same in a random spot order (``order='obs'`` on shuffled
  spots: worst case for the tile cache; fewer spots);
* ``naive``: ``tifffile.imread(level=1)`` (the whole needed level in memory), then crop.

Each approach runs in its own subprocess so its peak RSS (``ru_maxrss``) is its own.
Run:  .venv/bin/python benchmarks/bench_patches.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work"
MOB = REPO / "data" / "examples" / "mob" / "MOB1.jpg"
MPP0 = 0.25  # µm/px of the synthetic slides' level 0
TILE = 256


def _source_levels(n_levels: int) -> list[np.ndarray]:
    """MOB1 upsampled 2× (cropped to a multiple of 2**n_levels), then halved per level."""
    from PIL import Image

    img = Image.open(MOB).convert("RGB")
    side = (min(img.size) // 2**n_levels) * 2**n_levels
    img = img.crop((0, 0, side, side)).resize((2 * side, 2 * side), Image.Resampling.LANCZOS)
    out = [np.asarray(img)]
    for _ in range(1, n_levels):
        out.append(np.asarray(Image.fromarray(out[-1]).reduce(2)))
    return out


def _mirror(i: np.ndarray, period: int) -> np.ndarray:
    """Mirror-tile indices: 0..p-1, p-1..0, 0..p-1, ... (no seams)."""
    m = i % (2 * period)
    return np.where(m < period, m, 2 * period - 1 - m)


def _tiles(src: np.ndarray, height: int, width: int):
    """Yield the (TILE, TILE, 3) tiles of a height×width mirror-tiled mosaic of src."""
    p = src.shape[0]
    for y0 in range(0, height, TILE):
        rows = _mirror(np.arange(y0, y0 + TILE), p)
        band = src[rows]
        for x0 in range(0, width, TILE):
            yield band[:, _mirror(np.arange(x0, x0 + TILE), p)]


def build_slide(size: int) -> Path:
    """Write (once) a size×size px pyramidal tiled JPEG TIFF at 0.25 µm/px; return its path."""
    import tifffile

    path = WORK / f"mob_mosaic_{size}px.tif"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    dims = [size]
    while dims[-1] > 1024:
        dims.append(-(-dims[-1] // 2))
    src = _source_levels(len(dims))
    tmp = path.with_suffix(".tmp.tif")
    t0 = time.perf_counter()
    opts = {"tile": (TILE, TILE), "compression": "jpeg", "compressionargs": {"level": 90}}
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for k, d in enumerate(dims):
            kw = {"subifds": len(dims) - 1} if k == 0 else {"subfiletype": 1}
            if k == 0:
                kw |= {"resolution": (1e4 / MPP0, 1e4 / MPP0), "resolutionunit": "CENTIMETER"}
            tw.write(
                _tiles(src[k], d, d),
                shape=(d, d, 3),
                dtype=np.uint8,
                photometric="rgb",
                maxworkers=2,
                **opts,
                **kw,
            )
    os.replace(tmp, path)
    print(
        f"  built {path.name}: {size}×{size} px, {path.stat().st_size / 2**20:.0f} MiB, "
        f"{len(dims)} levels, {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return path


def spot_grid(size: int, n_target: int) -> np.ndarray:
    """~n_target spot centres on a square grid covering the slide (margin: one patch)."""
    margin = 224  # level-0 px = one 112 µm patch at 0.5 µm/px (half-width 224)
    side = size - 2 * margin
    step = side / np.sqrt(n_target)
    g = margin + step / 2 + np.arange(int(side // step)) * step
    xx, yy = np.meshgrid(g, g)
    return np.column_stack([xx.ravel(), yy.ravel()])


# ---------------------------------------------------------------------------------- child
def _rss_mb() -> float:
    """Peak RSS of this process (MB).

    ``VmHWM`` from /proc is per address space; ``ru_maxrss`` would also count the
    parent's RSS at fork/exec time on Linux, so it is only the fallback.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(approach: str, slide: str, n_spots: int, batch_size: int) -> dict:
    import stalign.im as im

    size = int(Path(slide).stem.split("_")[-1].removesuffix("px"))
    coords = spot_grid(size, n_spots)
    if approach == "stalign-obs-random":
        coords = coords[np.random.default_rng(0).permutation(len(coords))][:n_spots]
    base_rss = _rss_mb()
    checksum = 0.0
    t0 = time.perf_counter()
    if approach.startswith("stalign"):
        order = "spatial" if approach == "stalign" else "obs"
        with im.open_image(slide) as img:
            for b in im.iter_patches(
                image=img,
                coords=coords,
                mpp=0.5,
                size_px=224,
                batch_size=batch_size,
                order=order,
                progress=False,
            ):
                checksum += float(b.tissue_fraction.sum())
    elif approach == "naive":
        import tifffile

        with im.open_image(slide) as img:  # same Otsu threshold as stalign
            thr = im.tissue_threshold(img)
        level = tifffile.imread(slide, level=1)  # the needed level, whole
        for s in range(0, len(coords), batch_size):
            c = coords[s : s + batch_size]
            # level-1 top-left of each 224-px patch (same rounding as stalign)
            x0 = np.floor((c[:, 0] + 0.5) / 2 - 112 + 0.5).astype(int)
            y0 = np.floor((c[:, 1] + 0.5) / 2 - 112 + 0.5).astype(int)
            batch = np.stack([level[y : y + 224, x : x + 224] for x, y in zip(x0, y0, strict=True)])
            checksum += float(im.tissue_fraction(batch, thr).sum())
    else:
        raise SystemExit(f"unknown approach {approach}")
    dt = time.perf_counter() - t0
    return {
        "approach": approach,
        "slide_px": size,
        "n": len(coords),
        "seconds": dt,
        "patches_per_s": len(coords) / dt,
        "peak_rss_mb": _rss_mb(),
        "rss_before_mb": base_rss,
        "checksum": checksum,
    }


def check_identical(slide: Path, n: int = 64) -> float:
    """Max |stalign - naive crop| over n patches (the two must read the same pixels)."""
    import tifffile

    import stalign.im as im

    size = int(slide.stem.split("_")[-1].removesuffix("px"))
    coords = spot_grid(size, 1000)[:n]
    with im.open_image(slide) as img:
        got, _ = img.read_patches(coords, size_px=224, mpp=0.5)
    store = tifffile.imread(slide, level=1, aszarr=True)
    import zarr

    z = zarr.open(store, mode="r")
    x0 = np.floor((coords[:, 0] + 0.5) / 2 - 112 + 0.5).astype(int)
    y0 = np.floor((coords[:, 1] + 0.5) / 2 - 112 + 0.5).astype(int)
    want = np.stack([z[y : y + 224, x : x + 224] for x, y in zip(x0, y0, strict=True)])
    return float(np.abs(got.astype(int) - want).max())


def run_child(approach: str, slide: Path, n_spots: int, batch_size: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        approach,
        "--slide",
        str(slide),
        "--n-spots",
        str(n_spots),
        "--batch-size",
        str(batch_size),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller slides and fewer spots")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--slide", help=argparse.SUPPRESS)
    ap.add_argument("--n-spots", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--sizes", type=int, nargs="+", help="slide sides in px")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.slide, args.n_spots, args.batch_size)))
        return
    sizes = args.sizes or ([12_000, 24_000] if args.quick else [25_000, 50_000])
    n_spots = 20_000 if args.quick else args.n_spots
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; slides {sizes} px at "
        f"{MPP0} µm/px; {n_spots} spots; 224 px patches at 0.5 µm/px",
        flush=True,
    )
    rows = []
    for size in sizes:
        slide = build_slide(size)
        diff = check_identical(slide)
        print(f"  {size} px: max |stalign - naive| over 64 patches = {diff:.0f}", flush=True)
        for approach in ("stalign", "stalign-obs-random", "naive"):
            n = n_spots if approach != "stalign-obs-random" else min(n_spots, 10_000)
            r = run_child(approach, slide, n, args.batch_size)
            rows.append(r)
            print(
                f"  {size:>6} px  {approach:<19} {r['n']:>7} patches  "
                f"{r['patches_per_s']:8.0f} patches/s  peak RSS {r['peak_rss_mb']:7.0f} MB",
                flush=True,
            )
    print("\n| slide (px) | approach | patches | patches/s | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['slide_px']:,} | {r['approach']} | {r['n']:,} | "
            f"{r['patches_per_s']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    for size in sizes:
        s = next(r for r in rows if r["slide_px"] == size and r["approach"] == "stalign")
        nv = next(r for r in rows if r["slide_px"] == size and r["approach"] == "naive")
        speed = s["patches_per_s"] / nv["patches_per_s"]
        rss = s["peak_rss_mb"] / nv["peak_rss_mb"]
        print(f"{size} px: stalign/naive throughput ratio {speed:.2f}, peak RSS ratio {rss:.2f}")


if __name__ == "__main__":
    main()
