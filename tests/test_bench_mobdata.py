"""Helpers shared by the bench tests: load bundled MOB sections without stalign.io.

(Kept independent of the readers so the bench tests run whatever lands there.)
"""

from pathlib import Path

import numpy as np
import pandas as pd

PATIENT = {"MOB1": "animal1", "MOB2": "animal1", "MOB3": "animal2", "MOB4": "animal2"}


def load_mob(mob_dir: Path, section: str):
    """Return (counts DataFrame spots × gene symbols, pixel xy (n, 2), jpg path)."""
    counts = pd.read_csv(mob_dir / f"{section}.tsv.gz", sep="\t", index_col=0)
    genes = pd.read_csv(mob_dir / "mouse_genes.tsv.gz", sep="\t", index_col=0)["gene_name"]
    counts.columns = [genes.get(c, c) for c in counts.columns]
    counts = counts.loc[:, ~counts.columns.duplicated()]
    al = pd.read_csv(mob_dir / f"alignment_table_{section}.tsv", sep="\t")
    al = al[al["selected"] == 1]
    al.index = [f"{x}x{y}" for x, y in zip(al["x"], al["y"], strict=True)]
    common = [b for b in al.index if b in counts.index]
    xy = al.loc[common, ["pixel_x", "pixel_y"]].to_numpy(dtype=float)
    return counts.loc[common], xy, mob_dir / f"{section}.jpg"


def test_load_mob_helper(mob_dir):
    counts, xy, jpg = load_mob(mob_dir, "MOB1")
    assert counts.shape[0] == xy.shape[0] > 200
    assert jpg.is_file()
    assert np.isfinite(xy).all()
