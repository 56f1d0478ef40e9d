"""stalign.io.read_legacy_st on the real MOB sections."""

from __future__ import annotations

import gzip
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image

from stalign import _keys as K
from stalign.io import MppMismatchWarning, estimate_mpp_from_grid, read_legacy_st


def test_mob_layout(mob_adata, mob_dir):
    a = mob_adata
    raw = pd.read_csv(mob_dir / "MOB1.tsv.gz", sep="\t", index_col=0)
    table = pd.read_csv(mob_dir / "alignment_table_MOB1.tsv", sep="\t")
    ids = table.x.astype(str) + "x" + table.y.astype(str)
    # every kept spot is in both files; those without a position were dropped
    assert set(a.obs_names) == set(raw.index) & set(ids)
    assert a.uns[K.SPATIAL]["MOB1"][K.METADATA]["n_dropped_without_position"] == len(
        set(raw.index) - set(ids)
    )
    assert sp.issparse(a.X) and a.X.dtype == np.float32
    assert (a.layers[K.COUNTS_LAYER] != a.X).nnz == 0
    # counts joined by spot id, not row position: compare a few spots against the raw table
    for spot in a.obs_names[[0, 500, -1]]:
        np.testing.assert_array_equal(a[spot].X.toarray().ravel(), raw.loc[spot].to_numpy())
    # coordinates joined by id as well
    by_id = table.set_index(ids)
    np.testing.assert_allclose(
        a.obsm[K.SPATIAL], by_id.loc[a.obs_names, ["pixel_x", "pixel_y"]].to_numpy()
    )
    assert a.obs[K.IN_TISSUE].sum() == int(table.selected.sum())
    assert a.var[K.GENE_IDS].iloc[0].startswith("ENSMUSG")
    assert "Penk" in a.var_names  # symbols mapped from mouse_genes.tsv.gz
    assert a.var_names.is_unique


def test_mob_stalign_uns(mob_adata):
    st = mob_adata.uns[K.STALIGN]
    assert st[K.PLATFORM] == "legacy_st"
    assert st[K.IMAGE_PATH].endswith("MOB1.jpg")
    assert st[K.MPP_SOURCE] == "spot_pitch"
    # 1905-px image covering a ~6.5 mm ST array frame: a few µm per px
    assert 3.5 < st[K.MPP] < 5.5
    sf = mob_adata.uns[K.SPATIAL]["MOB1"][K.SCALEFACTORS]
    assert sf[K.SF_SPOT_DIAMETER] == pytest.approx(100.0 / st[K.MPP])
    imgs = mob_adata.uns[K.SPATIAL]["MOB1"][K.IMAGES]
    assert imgs["hires"].shape == (1905, 1905, 3)  # ≤ 2000 px: the full image
    assert max(imgs["lowres"].shape[:2]) == 600
    assert sf["tissue_lowres_scalef"] == pytest.approx(600 / 1905)


def test_grid_pitch_matches_neighbour_distance(mob_dir):
    table = pd.read_csv(mob_dir / "alignment_table_MOB2.tsv", sep="\t")
    fit = estimate_mpp_from_grid(table)
    # checkerboard indexing: one array unit is half the 200 µm pitch
    assert fit["um_per_unit_x"] == 100.0 and fit["um_per_unit_y"] == 100.0
    # independent check: diagonal neighbours are 100·√2 µm apart
    from scipy.spatial import cKDTree

    pix = table[["pixel_x", "pixel_y"]].to_numpy()
    d, _ = cKDTree(pix).query(pix, k=2)
    nn_um = np.median(d[:, 1]) * fit["mpp"]
    assert nn_um == pytest.approx(100 * np.sqrt(2), rel=0.05)
    assert fit["residual_px"] < 3


def test_full_square_grid_uses_whole_pitch():
    # classic 1k array: every integer (x, y), 200 µm per unit; 50 px per unit → 4 µm/px
    x, y = np.meshgrid(np.arange(1, 11), np.arange(1, 12))
    t = pd.DataFrame({"x": x.ravel(), "y": y.ravel()})
    t["pixel_x"], t["pixel_y"] = 10 + 50.0 * t.x, 20 + 50.0 * t.y
    fit = estimate_mpp_from_grid(t)
    assert fit["mpp"] == pytest.approx(4.0)


def test_user_mpp_wins_and_warns_on_disagreement(mob_dir):
    with pytest.warns(MppMismatchWarning, match="disagree"):
        a = read_legacy_st(mob_dir / "MOB1.tsv.gz", mpp=1.0, load_images=False)
    assert a.uns[K.STALIGN][K.MPP] == 1.0 and a.uns[K.STALIGN][K.MPP_SOURCE] == "user"


def test_missing_positions_raise(mob_dir):
    with pytest.raises(ValueError, match=r"no row in .*alignment_table_MOB1.tsv"):
        read_legacy_st(mob_dir / "MOB1", missing_positions="raise")


def test_drop_is_logged(mob_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="stalign.io"):
        read_legacy_st(mob_dir / "MOB3", load_images=False)
    assert "dropping spots without a position" in caplog.text


def _copy_section(mob_dir, tmp_path, section="MOB4"):
    for name in (f"{section}.tsv.gz", f"alignment_table_{section}.tsv", f"{section}.jpg"):
        shutil.copy(mob_dir / name, tmp_path / name)
    return tmp_path / section


def test_genes_by_spots_orientation_and_no_gene_table(mob_dir, tmp_path):
    prefix = _copy_section(mob_dir, tmp_path)
    df = pd.read_csv(f"{prefix}.tsv.gz", sep="\t", index_col=0)
    df.T.to_csv(f"{prefix}.tsv.gz", sep="\t")  # genes × spots
    a = read_legacy_st(prefix, load_images=False)
    assert a.var_names[0].startswith("ENSMUSG")  # no gene table: ids as names
    assert a.uns[K.STALIGN][K.LIBRARY_ID] == "MOB4"
    spot = a.obs_names[10]
    np.testing.assert_array_equal(a[spot].X.toarray().ravel(), df.loc[spot].to_numpy())


def test_negative_counts(mob_dir, tmp_path):
    prefix = _copy_section(mob_dir, tmp_path)
    df = pd.read_csv(f"{prefix}.tsv.gz", sep="\t", index_col=0)
    df.iloc[3, 7] = -2
    df.to_csv(f"{prefix}.tsv.gz", sep="\t")
    with pytest.raises(ValueError, match=r"MOB4.tsv.gz: expected non-negative raw counts, found 1"):
        read_legacy_st(prefix, load_images=False)


def test_non_integer_counts(mob_dir, tmp_path):
    prefix = _copy_section(mob_dir, tmp_path)
    df = pd.read_csv(f"{prefix}.tsv.gz", sep="\t", index_col=0)
    np.log1p(df).to_csv(f"{prefix}.tsv.gz", sep="\t")
    with pytest.raises(ValueError, match=r"MOB4.tsv.gz: expected raw integer counts"):
        read_legacy_st(prefix, load_images=False)


def test_duplicate_spot_ids(mob_dir, tmp_path):
    prefix = _copy_section(mob_dir, tmp_path)
    with gzip.open(f"{prefix}.tsv.gz", "rt") as fh:
        lines = fh.readlines()
    with gzip.open(f"{prefix}.tsv.gz", "wt") as fh:
        fh.writelines([*lines, lines[5]])
    with pytest.raises(ValueError, match=r"MOB4.tsv.gz: expected unique barcodes / spot ids"):
        read_legacy_st(prefix, load_images=False)


def test_duplicate_positions(mob_dir, tmp_path):
    prefix = _copy_section(mob_dir, tmp_path)
    path = tmp_path / "alignment_table_MOB4.tsv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines, lines[1]]))
    with pytest.raises(ValueError, match=r"alignment_table_MOB4.tsv: expected one row per barcode"):
        read_legacy_st(prefix, load_images=False)


def test_bad_alignment_columns(mob_dir, tmp_path):
    prefix = _copy_section(mob_dir, tmp_path)
    path = tmp_path / "alignment_table_MOB4.tsv"
    t = pd.read_csv(path, sep="\t").drop(columns="pixel_x")
    t.to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"expected columns \['x', 'y', 'pixel_x', 'pixel_y'\]"):
        read_legacy_st(prefix)


def test_coordinates_outside_image(mob_dir, tmp_path):
    prefix = _copy_section(mob_dir, tmp_path)
    # a smaller image than the alignment table refers to (crop of the real H&E)
    with Image.open(mob_dir / "MOB4.jpg") as im:
        im.crop((0, 0, 1000, 1000)).save(tmp_path / "MOB4.jpg")
    with pytest.raises(
        ValueError, match=r"lie outside the image .*MOB4.jpg \(expected 0 <= x <= 1000"
    ):
        read_legacy_st(prefix)


def test_non_image_file(mob_dir, tmp_path):
    prefix = _copy_section(mob_dir, tmp_path)
    (tmp_path / "MOB4.jpg").write_text("this is not an image\n")
    with pytest.raises(ValueError, match=r"MOB4.jpg: expected an image"):
        read_legacy_st(prefix)


def test_truncated_jpeg(mob_dir, tmp_path):
    prefix = _copy_section(mob_dir, tmp_path)
    data = (mob_dir / "MOB4.jpg").read_bytes()
    (tmp_path / "MOB4.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"MOB4.jpg: cannot decode the image data"):
        read_legacy_st(prefix)


def test_missing_files(mob_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="legacy ST counts not found"):
        read_legacy_st(tmp_path / "MOB9")
    shutil.copy(mob_dir / "MOB1.tsv.gz", tmp_path / "MOB1.tsv.gz")
    with pytest.raises(FileNotFoundError, match=r"alignment_table_MOB1\.tsv"):
        read_legacy_st(tmp_path / "MOB1.tsv.gz")


@pytest.mark.faults
def test_a_missing_gene_name_table_is_explained_in_file_words(mob_dir, tmp_path, caplog):
    """Issue 21.14: without mouse_genes.tsv.gz the user was told about adata.var[...]."""
    for name in ("MOB1.tsv.gz", "MOB1.jpg", "alignment_table_MOB1.tsv"):
        shutil.copy(mob_dir / name, tmp_path / name)
    with caplog.at_level("WARNING", logger="stalign"):
        adata = read_legacy_st(tmp_path / "MOB1.tsv.gz")
    assert adata.var_names[0].startswith("ENSMUSG")
    text = " ".join(r.getMessage() for r in caplog.records if "gene-name table" in r.getMessage())
    assert str(tmp_path / "MOB1.tsv.gz") in text and "mouse_genes.tsv.gz" in text
    assert "adata" not in text
    caplog.clear()
    shutil.copy(mob_dir / "mouse_genes.tsv.gz", tmp_path / "mouse_genes.tsv.gz")
    with caplog.at_level("WARNING", logger="stalign"):
        read_legacy_st(tmp_path / "MOB1.tsv.gz")
    assert not [r for r in caplog.records if "gene-name table" in r.getMessage()]
