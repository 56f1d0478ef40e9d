"""Tissue QC of build_pairs on the shipped MOB sections: the platform's call is trusted,
the mask drops only what is off tissue, the QC report shows the mask and both rules."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stalign import pl
from stalign.pairs import PairsParams, build_pairs, read_index

# the default 112 µm field of view (224 px at 0.5 µm/px) in fewer pixels: 32 px at 3.5 µm/px
FOV_112 = {"mpp": 3.5, "size_px": 32, "gene_sets": None, "progress": False}


@pytest.fixture(scope="module")
def shipped_store(tmp_path_factory, examples_dir):
    out = tmp_path_factory.mktemp("tissue_qc") / "pairs"
    manifest = examples_dir.parent / "manifests" / "examples.csv"
    result = build_pairs(manifest, out, **FOV_112)
    assert set(result.table["status"]) == {"done"}
    return out


def _spots(out, sid) -> pd.DataFrame:
    return pd.read_csv(out / "samples" / sid / "spots.csv", index_col=0, keep_default_na=False)


@pytest.mark.slow
def test_no_in_tissue_spot_with_mask_coverage_is_dropped(shipped_store):
    index = read_index(shipped_store)
    params = index["params"]
    assert params["tissue_qc"] == "mask" and params["min_mask_coverage"] == 0.1
    assert [s["sample_id"] for s in index["samples"]] == ["MOB1", "MOB2", "MOB3", "MOB4"]
    for s in index["samples"]:
        df = _spots(shipped_store, s["sample_id"])
        called = df["in_tissue"] & df["patch_in_image"] & (df["total_counts"] > 0)
        covered = called & (df["tissue_fraction"] >= params["min_mask_coverage"])
        assert covered.sum() > 350 and df.loc[covered, "kept"].all()
        # on these sections the mask covers every spot the curators put under tissue
        assert covered.sum() == called.sum()
        # the per-pixel rule would have dropped some of them (fat-free brain: pale layers)
        old = called & (df["tissue_fraction_pixels"] >= params["tissue_threshold"])
        assert old.sum() < covered.sum()
        rec = json.loads((shipped_store / "samples" / s["sample_id"] / "_SUCCESS").read_text())
        qc = rec["tissue_qc"]
        assert qc["rule"] == "mask" and qc["in_tissue_call"] and qc["min_tissue_fraction"] == 0.1
        assert 0 < qc["mask"]["saturation_low"] < qc["mask"]["saturation_high"]
        assert "tissue_mask.png" in rec["files"]


@pytest.mark.slow
def test_report_shows_mask_outline_and_kept_fraction_before_after(shipped_store):
    report = (shipped_store / "qc" / "report.md").read_text()
    assert "tissue QC by the slide's tissue mask" in report
    assert "kept % of in-tissue" in report and "kept % of in-tissue, pixel rule" in report
    row = next(line for line in report.splitlines() if line.startswith("| MOB3 "))
    header = next(line for line in report.splitlines() if line.startswith("| sample "))
    cells = dict(
        zip(
            [c.strip() for c in header.strip("|").split("|")],
            [c.strip() for c in row.strip("|").split("|")],
            strict=True,
        )
    )
    assert float(cells["kept % of in-tissue"]) == 100.0
    assert float(cells["kept % of in-tissue, pixel rule"]) < 90.0
    mask = np.asarray(Image.open(shipped_store / "samples" / "MOB3" / "tissue_mask.png"))
    thumb = np.asarray(Image.open(shipped_store / "samples" / "MOB3" / "thumbnail.png"))
    assert mask.shape == thumb.shape[:2] and 0.05 < (mask > 127).mean() < 0.3


def test_qc_spots_draws_the_mask_outline(mob_dir):
    thumb = np.full((40, 60, 3), 240, np.uint8)
    spots = pd.DataFrame({"x": [10.0, 50.0], "y": [10.0, 30.0], "reason": ["", "low_tissue"]})
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 15:45] = 255
    fig = pl.qc_spots(thumb, spots, scale=1.0, tissue_mask=mask)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "tissue mask" in labels
    paths = [p for c in ax.collections for p in getattr(c, "get_paths", list)()]
    outline = max(paths, key=lambda p: len(p.vertices)).vertices
    assert outline[:, 0].min() >= 14 and outline[:, 0].max() <= 45
    with pytest.raises(ValueError, match="thumbnail's shape"):
        pl.qc_spots(thumb, spots, scale=1.0, tissue_mask=mask[:10])


def test_tissue_qc_parameters_are_recorded_and_checked():
    d = PairsParams().to_dict()
    assert d["tissue_qc"] == "mask" and d["min_mask_coverage"] == 0.1
    assert PairsParams(tissue_qc="pixels").to_dict() != d  # part of the fingerprint input
    with pytest.raises(ValueError, match="tissue_qc must be"):
        PairsParams(tissue_qc="otsu")
    with pytest.raises(ValueError, match="min_mask_coverage"):
        PairsParams(min_mask_coverage=1.5)
