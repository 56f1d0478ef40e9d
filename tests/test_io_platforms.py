"""Visium HD, Xenium, HEST-1k, generic .h5ad readers and ``stalign.io.read`` detection.

Visium HD and HEST folders are built in their real layout from real shared data
(tests/_fixtures_io.py); Xenium and the .h5ad come straight from ../shared/data.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stalign import _keys as K
from stalign.io import (
    MppMismatchWarning,
    detect_platform,
    read,
    read_h5ad,
    read_hest,
    read_visium_hd,
    read_xenium,
)

sys.path.insert(0, str(Path(__file__).parent))
from _fixtures_io import build_hest_sample, build_visium_hd


@pytest.fixture(scope="module")
def xenium_dir(shared_data):
    return shared_data / "xenium_mouse_brain_subset"


@pytest.fixture(scope="module")
def hd(xenium_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hd") / "sampleA" / "outs"
    truth = build_visium_hd(root, xenium_dir, bin_sizes=(8, 16), size_um=400.0)
    return root, truth


@pytest.fixture(scope="module")
def hest(mob_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hest")
    return root, build_hest_sample(root, mob_dir)


@pytest.fixture(scope="module")
def xenium(xenium_dir):
    return read_xenium(xenium_dir)


# --- Visium HD ------------------------------------------------------------------------


@pytest.mark.parametrize("bin_size", [8, 16])
def test_visium_hd_bins(hd, bin_size):
    root, truth = hd
    a = read(root, bin_size=bin_size)
    t = truth["bins"][bin_size]
    assert a.uns[K.STALIGN][K.PLATFORM] == "visium_hd"
    assert a.uns[K.STALIGN][K.LIBRARY_ID] == f"sampleA_square_{bin_size:03d}um"
    assert a.uns[K.STALIGN][K.MPP] == pytest.approx(0.2737)
    assert a.uns[K.STALIGN][K.SPOT_DIAMETER_UM] == bin_size
    # counts of the real cells are conserved by binning and read back per barcode
    assert a.X.sum() == truth["total"]
    order = pd.Index(t["barcodes"]).get_indexer(a.obs_names)
    assert (abs(a.X - t["X"][order]) > 0).nnz == 0
    # bin centre (µm) = (index + 0.5) × bin size; pixels × µm/px gives it back
    np.testing.assert_allclose(a.obsm[K.SPATIAL][:, 0] * 0.2737, (t["col"][order] + 0.5) * bin_size)
    assert a.obs[K.IN_TISSUE].all()


def test_visium_hd_bin_folder_and_missing_bin(hd):
    root, _ = hd
    a = read_visium_hd(root / "binned_outputs" / "square_016um", load_images=False)
    assert a.uns[K.STALIGN][K.SPOT_DIAMETER_UM] == 16
    with pytest.raises(
        FileNotFoundError,
        match=r"binned_outputs/square_002um/ \(found bins: \['square_008um', 'square_016um'\]\)",
    ):
        read_visium_hd(root, bin_size=2)


def test_visium_hd_inconsistent_scalefactors_warn(hd, tmp_path):
    root, _ = hd
    dst = tmp_path / "outs"
    shutil.copytree(root, dst)
    sf_path = dst / "binned_outputs" / "square_008um" / "spatial" / "scalefactors_json.json"
    sf = json.loads(sf_path.read_text())
    sf["microns_per_pixel"] = 0.5  # disagrees with bin_size_um / spot_diameter_fullres
    sf_path.write_text(json.dumps(sf))
    with pytest.warns(MppMismatchWarning, match="scalefactors=0.5 vs spot_pitch=0.2737"):
        read_visium_hd(dst, load_images=False)
    del sf["microns_per_pixel"]
    sf_path.write_text(json.dumps(sf))
    with pytest.raises(ValueError, match=r"missing \['microns_per_pixel'\]"):
        read_visium_hd(dst)


# --- Xenium ---------------------------------------------------------------------------


def test_xenium_without_image(xenium, xenium_dir):
    a = xenium
    cells = pd.read_csv(xenium_dir / "cells.csv.gz", index_col="cell_id")
    cells.index = cells.index.astype(str)
    assert a.n_vars == 248  # gene-expression features only (541 incl. controls)
    assert a.uns[K.STALIGN][K.MPP] == 0.2125
    assert a.uns[K.STALIGN][K.IMAGE_PATH] is None
    np.testing.assert_allclose(
        a.obsm[K.SPATIAL] * 0.2125, cells.loc[a.obs_names, ["x_centroid", "y_centroid"]]
    )
    # the transcript count in cells.csv equals the gene-expression counts of the matrix
    np.testing.assert_array_equal(
        np.asarray(a.X.sum(axis=1)).ravel(), cells.loc[a.obs_names, "transcript_counts"]
    )
    assert 5 < a.uns[K.STALIGN][K.SPOT_DIAMETER_UM] < 40  # median cell diameter, µm


def _he_for_xenium(a, tmp_path, mpp_he=0.5, offset=(40.0, 25.0)):
    """An 'H&E' (cell-density picture of the real cells) at mpp_he, shifted by offset px."""
    from PIL import Image

    um = a.obs[["x_centroid_um", "y_centroid_um"]].to_numpy()
    w = int(um[:, 0].max() / mpp_he + 2 * offset[0])
    h = int(um[:, 1].max() / mpp_he + 2 * offset[1])
    img = np.full((h // 8, w // 8, 3), 240, np.uint8)
    Image.fromarray(img).resize((w, h)).save(tmp_path / "he.jpg", quality=80)
    # H&E px -> morphology px: scale mpp_he / 0.2125, then shift
    s = mpp_he / 0.2125
    M = np.array([[s, 0, -offset[0] * s], [0, s, -offset[1] * s], [0, 0, 1]])
    np.savetxt(tmp_path / "he_imagealignment.csv", M, delimiter=",")
    return tmp_path / "he.jpg", tmp_path / "he_imagealignment.csv"


def test_xenium_with_he_alignment(xenium, xenium_dir, tmp_path):
    image, align = _he_for_xenium(xenium, tmp_path)
    a = read_xenium(xenium_dir, image=image, alignment=align, load_images=False)
    um = xenium.obs[["x_centroid_um", "y_centroid_um"]].to_numpy()
    np.testing.assert_allclose(a.obsm[K.SPATIAL], um / 0.5 + [40.0, 25.0], rtol=1e-9, atol=1e-6)
    assert a.uns[K.STALIGN][K.MPP] == pytest.approx(0.5)
    assert a.uns[K.STALIGN][K.MPP_SOURCE] == "xenium_alignment"
    # the same alignment in µm units gives the same placement
    M_um = np.loadtxt(align, delimiter=",")
    M_um[:2] *= 0.2125
    b = read_xenium(
        xenium_dir, image=image, alignment=M_um, alignment_units="micron", load_images=False
    )
    np.testing.assert_allclose(a.obsm[K.SPATIAL], b.obsm[K.SPATIAL], atol=1e-6)


def test_xenium_bad_alignment(xenium, xenium_dir, tmp_path):
    image, align = _he_for_xenium(xenium, tmp_path)
    with pytest.raises(ValueError, match=r"needs its alignment matrix"):
        read_xenium(xenium_dir, image=image)
    align.write_text("1,0,0\n0,1,0\n")
    with pytest.raises(
        ValueError,
        match=r"he_imagealignment.csv: expected a 3×3 affine matrix, found shape \(2, 3\)",
    ):
        read_xenium(xenium_dir, image=image, alignment=align)
    # a 10× too small scale: cells land far outside the H&E
    np.savetxt(align, np.diag([0.1, 0.1, 1.0]), delimiter=",")
    with pytest.raises(
        ValueError, match=r"cells.csv.gz: \d+ of 36602 spot centres lie outside the image"
    ):
        read_xenium(xenium_dir, image=image, alignment=align)


# --- HEST-1k --------------------------------------------------------------------------


def test_hest_sample(hest, mob_dir):
    root, truth = hest
    a = read(root)
    st = a.uns[K.STALIGN]
    assert st[K.PLATFORM] == "hest" and st[K.LIBRARY_ID] == truth["sample_id"]
    assert st[K.MPP] == pytest.approx(truth["mpp"]) and st[K.MPP_SOURCE] == "hest_metadata"
    assert st[K.SPOT_DIAMETER_UM] == 100.0
    assert st[K.IMAGE_PATH].endswith(f"wsis/{truth['sample_id']}.tif")
    np.testing.assert_allclose(a.obsm[K.SPATIAL], truth["pix"])
    spot = a.obs_names[7]
    np.testing.assert_array_equal(
        a[spot].layers[K.COUNTS_LAYER].toarray().ravel(), truth["counts"].loc[spot]
    )
    imgs = a.uns[K.SPATIAL][truth["sample_id"]][K.IMAGES]
    assert imgs["hires"].shape == (2000, 2000, 3)  # from a pyramid level, not level 0
    # twice the MOB pixel density: half the µm/px of the bundled jpg (~4.4 µm/px)
    assert 1.8 < st[K.MPP] < 2.6
    # the .h5ad path works too, and detection recognises it
    h5ad = root / "st" / f"{truth['sample_id']}.h5ad"
    assert detect_platform(h5ad) == "hest"
    b = read_hest(h5ad, load_images=False)
    assert b.n_obs == a.n_obs


def test_hest_bad_metadata_and_truncated_wsi(hest, tmp_path):
    root, truth = hest
    dst = tmp_path / "hest"
    shutil.copytree(root, dst)
    sid = truth["sample_id"]
    meta = dst / "metadata" / f"{sid}.json"
    m = json.loads(meta.read_text())
    m.pop("pixel_size_um_estimated")
    meta.write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"expected key 'pixel_size_um_estimated'"):
        read_hest(dst)
    m["pixel_size_um_estimated"] = 2 * truth["mpp"]  # disagrees with embedded/TIFF tags
    meta.write_text(json.dumps(m))
    with pytest.warns(MppMismatchWarning, match="disagree"):
        read_hest(dst, load_images=False)
    wsi = dst / "wsis" / f"{sid}.tif"
    data = wsi.read_bytes()
    wsi.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{sid}.tif: TIFF is truncated"):
        read_hest(dst)
    wsi.unlink()
    with pytest.raises(FileNotFoundError, match=rf"expected wsis/{sid}.tif"):
        read_hest(dst)


# --- generic .h5ad --------------------------------------------------------------------


def test_h5ad_log_normalised_kept_without_counts(shared_data, caplog):
    d = shared_data / "visium_mouse_brain_crop"
    a = read_h5ad(d / "test_data.h5ad", image=d / "test_img.jpg", spot_diameter_um=55.0)
    assert "not raw counts" in caplog.text
    assert K.COUNTS_LAYER not in a.layers and a.uns[K.STALIGN][K.X_IS_COUNTS] is False
    assert a.uns[K.STALIGN][K.MPP] == pytest.approx(55.0 / 89.44476048022638)
    lib = a.uns[K.SPATIAL][a.uns[K.STALIGN][K.LIBRARY_ID]]
    assert lib[K.IMAGES]["hires"].shape == (1717, 950, 3)  # from test_img.jpg itself
    with pytest.raises(ValueError, match=r"test_data.h5ad: expected raw integer counts"):
        read_h5ad(d / "test_data.h5ad", require_counts=True)


def test_h5ad_roundtrip_of_a_reader_output(mob_adata, tmp_path):
    path = tmp_path / "mob.h5ad"
    mob_adata.write_h5ad(path)
    a = read(path)
    assert a.uns[K.STALIGN][K.PLATFORM] == "legacy_st"
    assert a.uns[K.STALIGN][K.MPP] == pytest.approx(mob_adata.uns[K.STALIGN][K.MPP])
    assert a.uns[K.STALIGN][K.IMAGE_PATH] == mob_adata.uns[K.STALIGN][K.IMAGE_PATH]
    assert (a.layers[K.COUNTS_LAYER] != mob_adata.layers[K.COUNTS_LAYER]).nnz == 0


def test_h5ad_without_spatial(tmp_path):
    import anndata as ad

    ad.AnnData(np.ones((3, 2), np.float32)).write_h5ad(tmp_path / "x.h5ad")
    with pytest.raises(ValueError, match=r"x.h5ad: expected spot coordinates in obsm\['spatial'\]"):
        read(tmp_path / "x.h5ad")


# --- detection ------------------------------------------------------------------------


def test_detect_platform(examples_dir, mob_dir, hd, xenium_dir, tmp_path):
    assert detect_platform(mob_dir / "MOB1") == "legacy_st"
    assert detect_platform(mob_dir / "MOB1.tsv.gz") == "legacy_st"
    assert detect_platform(examples_dir / "visium_human_heart") == "visium"
    assert detect_platform(examples_dir / "visium_mouse_brain") == "visium"
    assert detect_platform(hd[0]) == "visium_hd"
    assert detect_platform(xenium_dir) == "xenium"
    with pytest.raises(ValueError, match=r"cannot tell the platform .*looked for:\n  visium "):
        detect_platform(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing to read"):
        read(tmp_path / "nope")
    with pytest.raises(ValueError, match="platform must be one of"):
        read(tmp_path, platform="slide-seq")
