"""Pathway-scoring benchmark: prints its figures (see benchmarks/README.md, "Pathway scoring").

(a) The 4 real MOB sections × Hallmark: stalign ssGSEA (default ties="average" and the
    gseapy-exact ties="gseapy") vs gseapy.ssgsea on the same matrices: time ratio (gene-set
    matching included) and agreement (per-pathway Pearson, max abs difference).
(b) Scale: N spots × 20,000 genes (sparse counts resampled from the real MOB spots, written
    to a backed .h5ad in benchmarks/_work) × 50 Hallmark sets with aucell / zscore / ssgsea;
    each method runs in its own subprocess, which reports wall time and peak RSS (ssgsea
    with the default ties="average").

    .venv/bin/python benchmarks/bench_pathways.py                  # both parts, 1,000,000 spots
    .venv/bin/python benchmarks/bench_pathways.py --n-spots 100000 --skip-gseapy
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
MOB = REPO / "data" / "examples" / "mob"
WORK = REPO / "benchmarks" / "_work"


def _quiet():
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)


def read_mob():
    import stalign as st

    out = []
    for i in range(1, 5):
        a = st.io.read_legacy_st(MOB / f"MOB{i}")
        out.append(a[a.obs["in_tissue"].to_numpy()].copy())
    return out


# --------------------------------------------------------------------------- (a)
def _time_ours(mobs, ties: str, repeats: int) -> tuple[float, float, list]:
    """Median wall and CPU seconds of one pass over all sections; the last pass's scores."""
    import stalign as st

    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = []
        for a in mobs:
            st.tl.score_pathways(a, "hallmark", method="ssgsea", ties=ties)
            out.append(a.obsm["pathway_scores"])
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return float(np.median(walls)), float(np.median(cpus)), out


def _agreement(ours: list, refs: list) -> tuple[float, float]:
    """Min per-pathway Pearson and max abs difference over all sections."""
    pearson, max_abs = [], 0.0
    for o, r in zip(ours, refs, strict=True):
        r = r.loc[o.index, o.columns]
        pearson += [np.corrcoef(o[c], r[c])[0, 1] for c in o.columns]
        max_abs = max(max_abs, float(np.abs(o.to_numpy() - r.to_numpy()).max()))
    return min(pearson), max_abs


def part_a(threads: int, repeats: int) -> None:
    import gseapy

    import stalign as st
    from stalign.tl._genesets import load_gene_sets

    sets = load_gene_sets("hallmark")
    mobs = read_mob()
    t0 = time.perf_counter()
    st.tl.score_pathways(mobs[0][:50].copy(), "hallmark", method="ssgsea")
    t_first = time.perf_counter() - t0  # numba kernels compiled or loaded from cache
    t_ref = c_ref = 0.0
    refs = []
    for a in mobs:
        df = pd.DataFrame(
            a.X.toarray().T, index=a.var["gene_symbols"].str.upper().to_numpy(), columns=a.obs_names
        )
        t0, c0 = time.perf_counter(), time.process_time()
        res = gseapy.ssgsea(df, sets, min_size=5, max_size=100000, threads=threads)
        t_ref += time.perf_counter() - t0
        c_ref += time.process_time() - c0
        refs.append(res.res2d.pivot(index="Name", columns="Term", values="NES").astype(float))
    n_spots = sum(a.n_obs for a in mobs)
    n_sets = (
        st.tl.score_pathways(mobs[0].copy(), "hallmark", copy=True).obsm["pathway_scores"].shape[1]
    )
    print(f"(a) MOB1-4 under tissue: {n_spots} spots x 1000 genes, Hallmark ({n_sets} sets)")
    print(
        f"    gseapy.ssgsea ({threads} thr), one pass    wall {t_ref:8.3f} s   CPU {c_ref:8.3f} s"
    )
    for ties in ("average", "gseapy"):
        t, c, ours = _time_ours(mobs, ties, repeats)
        r, d = _agreement(ours, refs)
        label = f"stalign ties={ties!r}"
        print(f"    {label:26s} wall {t:8.3f} s   CPU {c:8.3f} s (median of {repeats} passes)")
        print(f"      speed-up vs gseapy       wall {t_ref / t:8.1f} x   CPU {c_ref / c:8.1f} x")
        print(f"      agreement with gseapy NES: min Pearson {r:.10f}, max abs diff {d:.2e}")
    print(f"    (first stalign call in the process, 50 spots, excluded above: {t_first:.2f} s)")
    print("    ties='average' differs from gseapy only through tied counts (gseapy walks them")
    print("    in column order); without ties both equal gseapy (tests/test_pathways_ties.py)")


# --------------------------------------------------------------------------- (b) data
POOL = 100_000


def make_scale_data(path: Path, n_spots: int, n_genes: int = 20000, seed: int = 0) -> None:
    """Write n_spots x n_genes counts resampled from real MOB spots to a backed .h5ad.

    More than POOL spots: rows are drawn with replacement from the POOL-spot file
    (generated first, see _make_pool), so generation stays a fast vectorised copy.
    """
    if n_spots <= POOL:
        _make_pool(path, n_spots, n_genes, seed)
        return
    import anndata as ad
    import h5py

    pool_path = path.with_name(f"scale_{POOL}.h5ad")
    if not pool_path.exists():
        _make_pool(pool_path, POOL, n_genes, seed)
    pool = ad.read_h5ad(pool_path)
    x = sp.csr_matrix(pool.X)
    rng = np.random.default_rng(seed + 1)
    step = 20000
    skel = ad.AnnData(X=x[rng.integers(0, POOL, size=min(step, n_spots))], var=pool.var)
    skel.write_h5ad(path)
    nnz, done = skel.X.nnz, skel.n_obs
    with h5py.File(path, "a") as f:
        xd = ad.io.sparse_dataset(f["X"])
        while done < n_spots:
            c = x[rng.integers(0, POOL, size=min(step, n_spots - done))]
            xd.append(c)
            nnz, done = nnz + c.nnz, done + c.shape[0]
        del f["obs"]
        ad.io.write_elem(f, "obs", pd.DataFrame(index=[f"s{i}" for i in range(n_spots)]))
    print(f"    data: {n_spots} spots drawn from {pool_path.name}, {nnz / n_spots:.0f} nnz/spot")


def _make_pool(path: Path, n_spots: int, n_genes: int, seed: int) -> None:
    """Write n_spots x n_genes counts resampled from real MOB spots to a backed .h5ad.

    Real part: the 1000 MOB genes of a randomly drawn real spot. Padding: each of the
    other genes copies a random real template gene and gets Binomial(count, 0.005) of
    its counts in that spot, so spatial/layer structure and count distributions stay
    real-looking. Names: Hallmark genes missing from the panel (mouse-style case) so all
    50 Hallmark sets are present, then Reactome/WikiPathways genes, then Gm<n>.
    """
    import anndata as ad
    import h5py

    from stalign.tl._genesets import load_gene_sets

    rng = np.random.default_rng(seed)
    mobs = read_mob()
    genes = mobs[0].var_names
    pool = sp.vstack([m[:, genes].X for m in mobs]).tocsr().astype(np.float32)
    panel_upper = set(mobs[0].var["gene_symbols"].str.upper())
    extra: list[str] = []
    for coll in ("hallmark", "reactome", "wikipathways"):
        for gs in load_gene_sets(coll).values():
            extra += [g for g in gs if g.upper() not in panel_upper]
    extra = list(dict.fromkeys(g.capitalize() for g in extra))
    n_pad = n_genes - len(genes)
    extra = extra[:n_pad] + [f"Gm{10000 + i}" for i in range(n_pad - len(extra[:n_pad]))]
    names = list(mobs[0].var["gene_symbols"]) + extra
    template = rng.integers(0, len(genes), size=n_pad)
    order = np.argsort(template, kind="stable")
    pad_ptr = np.searchsorted(template[order], np.arange(len(genes) + 1))
    p_thin = 0.005

    def chunk(n):
        rows = rng.integers(0, pool.shape[0], size=n)
        real = pool[rows]
        r = np.repeat(np.arange(n), np.diff(real.indptr))
        t, c = real.indices, real.data.astype(np.int64)
        reps = pad_ptr[t + 1] - pad_ptr[t]
        rr, cc = np.repeat(r, reps), np.repeat(c, reps)
        starts = np.repeat(pad_ptr[t], reps)
        within = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
        pad_gene = len(genes) + order[starts + within]
        k = rng.binomial(cc, p_thin)
        keep = k > 0
        rows_all = np.concatenate([r, rr[keep]])
        cols_all = np.concatenate([t, pad_gene[keep]])
        vals = np.concatenate([real.data, k[keep].astype(np.float32)])
        full = sp.csr_matrix((vals, (rows_all, cols_all)), shape=(n, n_genes), dtype=np.float32)
        full.sort_indices()
        return full

    step = 2000
    path.parent.mkdir(parents=True, exist_ok=True)
    first = chunk(min(step, n_spots))
    var = pd.DataFrame({"gene_symbols": names}, index=pd.Index(names).astype(str))
    var.index = ad.utils.make_index_unique(var.index)
    skel = ad.AnnData(X=first, var=var)
    skel.write_h5ad(path)
    nnz = first.nnz
    with h5py.File(path, "a") as f:
        x = ad.io.sparse_dataset(f["X"])
        done = first.shape[0]
        while done < n_spots:
            c = chunk(min(step, n_spots - done))
            x.append(c)
            nnz += c.nnz
            done += c.shape[0]
        del f["obs"]
        ad.io.write_elem(f, "obs", pd.DataFrame(index=[f"s{i}" for i in range(n_spots)]))
    print(f"    data: {n_spots} spots x {n_genes} genes, {nnz / n_spots:.0f} non-zeros/spot")


# --------------------------------------------------------------------------- (b) child
def _vm_hwm_gb() -> float:
    """Peak RSS of this process (VmHWM; unlike ru_maxrss it is not inherited over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def child(method: str, path: str, chunk_size: int) -> None:
    import anndata as ad

    import stalign as st

    a = ad.read_h5ad(path, backed="r")
    warm = a[:200].to_memory()  # compile / load the numba kernels outside the timing
    st.tl.score_pathways(warm, "hallmark", method=method, progress=False)
    rss0 = _vm_hwm_gb()
    t0, c0 = time.perf_counter(), time.process_time()
    st.tl.score_pathways(a, "hallmark", method=method, chunk_size=chunk_size, progress=False)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _vm_hwm_gb()
    n_sets = a.obsm["pathway_scores"].shape[1]
    out = {"time_s": dt, "cpu_s": cpu, "peak_rss_gb": peak, "rss_before_gb": rss0, "sets": n_sets}
    print(json.dumps(out))


def part_b(n_spots: int, methods: list[str], chunk_size: int, regenerate: bool) -> None:
    path = WORK / f"scale_{n_spots}.h5ad"
    print(f"(b) scale: {n_spots} spots x 20000 genes x Hallmark, backed .h5ad, chunk {chunk_size}")
    if regenerate or not path.exists():
        t0 = time.perf_counter()
        make_scale_data(path, n_spots)
        print(f"    generated {path.name} in {time.perf_counter() - t0:.1f} s (not timed below)")
    for method in methods:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            method,
            str(path),
            "--chunk-size",
            str(chunk_size),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(f"    {method}: FAILED\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"    {method:7s} wall {r['time_s']:7.1f} s  CPU {r['cpu_s']:7.1f} s  "
            f"peak RSS {r['peak_rss_gb']:.2f} GB "
            f"(after imports + opening: {r['rss_before_gb']:.2f} GB), {r['sets']} sets"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-spots", type=int, default=1_000_000)
    p.add_argument("--methods", default="aucell,zscore,ssgsea")
    p.add_argument("--chunk-size", type=int, default=5000)
    p.add_argument("--threads", type=int, default=2, help="gseapy threads in part (a)")
    p.add_argument("--repeats", type=int, default=5, help="stalign passes in part (a)")
    p.add_argument("--skip-gseapy", action="store_true", help="skip part (a)")
    p.add_argument("--skip-scale", action="store_true", help="skip part (b)")
    p.add_argument("--regenerate", action="store_true")
    p.add_argument("--child", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    _quiet()
    if args.child:
        child(args.child[0], args.child[1], args.chunk_size)
        return
    if not args.skip_gseapy:
        part_a(args.threads, args.repeats)
    if not args.skip_scale:
        part_b(args.n_spots, args.methods.split(","), args.chunk_size, args.regenerate)


if __name__ == "__main__":
    main()
