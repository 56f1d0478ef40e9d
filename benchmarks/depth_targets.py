"""How much sequencing depth the pathway training targets carry, per scoring method.

For every section of her2st patient C (C2..C6, ``../shared/data/her2st_patient_C``) and
MOB1 (``data/examples/mob``), prints the median over Hallmark pathways of
|Pearson(log total counts, score)| for ssGSEA, z-score, ULM, AUCell, scanpy's
``score_genes`` and ssGSEA on counts rarefied to the section's 10th-percentile depth
(spots below it left out), with the median r of two rarefaction draws. Compare with the
table of issue 19.

Run: ``.venv/bin/python benchmarks/depth_targets.py [--shared ../shared/data]``
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import stalign as st
from stalign.io import read_legacy_st

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ssgsea", "zscore", "ulm", "aucell", "score_genes")


def sections(shared: Path) -> dict[str, object]:
    """her2st C2..C6 (spots under tissue only, as shipped) and MOB1 (all barcodes)."""
    her2st = shared / "her2st_patient_C"
    out = {}
    for n in range(2, 7):
        out[f"her2st C{n}"] = read_legacy_st(
            her2st / f"C{n}.tsv.gz", positions=her2st / f"C{n}_spots.tsv", load_images=False
        )
    out["MOB1"] = read_legacy_st(ROOT / "data" / "examples" / "mob" / "MOB1", load_images=False)
    return out


def median_abs_r(adata) -> float:
    """Median over pathways of |r(score, log total counts)| from the recorded diagnostics."""
    table = pd.DataFrame(adata.uns["pathway_scores"]["depth"])
    return float(table["r_log_counts"].abs().median())


def one_section(adata) -> dict[str, object]:
    """The row of one section: median UMIs and median |r| per method."""
    total = np.asarray(adata.X.sum(axis=1)).ravel()
    row: dict[str, object] = {"spots": adata.n_obs, "median UMIs": int(np.median(total))}
    for method in METHODS:
        t = time.perf_counter()
        st.tl.score_pathways(adata, method=method, progress=False)
        row[method] = round(median_abs_r(adata), 3)
        row[f"{method} s"] = round(time.perf_counter() - t, 1)
    depth = int(np.quantile(total, 0.1))
    st.tl.score_pathways(adata, rarefy_depth=depth, rarefy_draws=2, progress=False)
    rec = adata.uns["pathway_scores"]["rarefaction"]
    row["rarefied depth"] = depth
    row["ssgsea rarefied (2 draws)"] = round(median_abs_r(adata), 3)
    row["r of 2 draws"] = round(float(rec["median_draw_agreement_r"]), 3)
    return row


def main() -> None:
    """Print the table (markdown)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    args = p.parse_args()
    logging.getLogger("stalign").setLevel(logging.ERROR)  # the depth warnings are the point
    warnings.simplefilter("ignore", UserWarning)  # gene sets dropped on MOB's 1,000 genes
    rows = {}
    for name, adata in sections(args.shared).items():
        rows[name] = one_section(adata)
        print(name, rows[name], flush=True)
    table = pd.DataFrame.from_dict(rows, orient="index")  # ints stay ints
    cols = [str(c) for c in table.columns]
    print("\n| section | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for name, row in table.astype(object).iterrows():  # object: ints stay ints
        print(f"| {name} | " + " | ".join(str(v) for v in row.to_numpy()) + " |")


if __name__ == "__main__":
    main()
