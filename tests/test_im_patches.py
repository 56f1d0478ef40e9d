"""Spot → patch extraction on the real MOB1 section, tissue QC, HEST patch files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import stalign.im as im
from stalign import _keys as K


def test_extract_patches_writes_qc_keys_in_obs_order(mob_adata):
    patches = im.extract_patches(mob_adata, mpp=4.0, size_px=32, progress=False)
    n = mob_adata.n_obs
    assert patches.shape == (n, 32, 32, 3) and patches.dtype == np.uint8
    obs = mob_adata.obs
    assert obs[K.PATCH_IN_IMAGE].dtype == bool and obs[K.PATCH_IN_IMAGE].all()
    assert obs[K.TISSUE_FRACTION].between(0, 1).all()
    # default: the platform's call (legacy ST `selected`) is trusted, the mask only
    # removes patches that are really off tissue
    want = obs[K.PATCH_IN_IMAGE] & obs[K.IN_TISSUE] & (obs[K.TISSUE_FRACTION] >= 0.1)
    assert (obs[K.PATCH_IN_TISSUE] == want).all()
    params = mob_adata.uns[K.PATCHES]
    assert params["mpp"] == 4.0 and params["size_px"] == 32 and params["tissue_threshold"] == 0.5
    assert params["tissue_qc"] == "mask" and params["min_mask_coverage"] == 0.1
    assert params["in_tissue_call"] is True
    mask = params["tissue_mask"]
    assert 0 < mask["saturation_low"] < mask["saturation_high"] < 255
    assert mask["closing_um"] > 0 and mask["mask_mpp"] >= mob_adata.uns["stalign"]["mpp"]
    # obs order: patch i is the one centred on spot i
    with im.open_image(mob_adata) as img:
        for i in (0, n // 2, n - 1):
            cx, cy = mob_adata.obsm["spatial"][i]
            np.testing.assert_array_equal(patches[i], img.read_patch(cx, cy, size_px=32, mpp=4.0))


def test_pixel_rule_is_kept_as_an_option(mob_adata):
    im.extract_patches(mob_adata, mpp=4.0, size_px=32, tissue_qc="pixels", progress=False)
    obs = mob_adata.obs
    want = obs[K.PATCH_IN_IMAGE] & (obs[K.TISSUE_FRACTION] >= 0.5)
    assert (obs[K.PATCH_IN_TISSUE] == want).all()
    params = mob_adata.uns[K.PATCHES]
    assert params["tissue_qc"] == "pixels" and params["in_tissue_call"] is False
    assert 0 < params["saturation_threshold"] < 255 and "tissue_mask" not in params
    with im.open_image(mob_adata) as img:
        thr = im.tissue_threshold(img)
        patch = img.read_patch(*mob_adata.obsm["spatial"][7], size_px=32, mpp=4.0)
    np.testing.assert_allclose(obs[K.TISSUE_FRACTION].iloc[7], im.tissue_fraction(patch, thr))


@pytest.mark.parametrize("tissue_qc", ["mask", "pixels"])
def test_tissue_fraction_separates_tissue_from_background_spots(mob_adata, tissue_qc):
    # the image alone (use_in_tissue=False) against the curated under-tissue call
    im.extract_patches(
        mob_adata, mpp=4.0, size_px=24, tissue_qc=tissue_qc, use_in_tissue=False, progress=False
    )
    tf = mob_adata.obs[K.TISSUE_FRACTION].to_numpy()
    under = mob_adata.obs[K.IN_TISSUE].to_numpy(bool)  # the alignment table's `selected`
    assert under.sum() > 100 and (~under).sum() > 100
    assert tf[under].mean() > 0.5 > 0.1 > tf[~under].mean()
    # rank separation (AUC) between the curated under-tissue call and our tissue fraction
    ranks = tf.argsort().argsort()
    n1, n0 = under.sum(), (~under).sum()
    auc = (ranks[under].sum() - n1 * (n1 - 1) / 2) / (n1 * n0)
    assert auc > 0.9
    agree = (mob_adata.obs[K.PATCH_IN_TISSUE].to_numpy() == under).mean()
    assert agree > 0.9


def test_extract_patches_copy_leaves_the_input_unchanged(mob_adata):
    obs_before, uns_before = list(mob_adata.obs.columns), set(mob_adata.uns)
    patches, result = im.extract_patches(mob_adata, mpp=4.0, size_px=16, copy=True, progress=False)
    assert list(mob_adata.obs.columns) == obs_before and set(mob_adata.uns) == uns_before
    assert result is not mob_adata and K.PATCH_IN_TISSUE in result.obs
    assert result.uns[K.PATCHES]["size_px"] == 16
    in_place = im.extract_patches(mob_adata, mpp=4.0, size_px=16, progress=False)
    np.testing.assert_array_equal(patches, in_place)
    assert (result.obs[K.PATCH_IN_TISSUE] == mob_adata.obs[K.PATCH_IN_TISSUE]).all()


def test_iter_patches_batches_equal_extract_and_are_bounded(mob_adata):
    sub = mob_adata[:150].copy()
    full = im.extract_patches(sub, mpp=4.0, size_px=16, progress=False)
    batches = list(im.iter_patches(sub, mpp=4.0, size_px=16, batch_size=64, progress=False))
    assert [len(b) for b in batches] == [64, 64, 22]
    np.testing.assert_array_equal(np.concatenate([b.images for b in batches]), full)
    np.testing.assert_array_equal(np.concatenate([b.barcodes for b in batches]), sub.obs_names)
    np.testing.assert_allclose(
        np.concatenate([b.tissue_fraction for b in batches]), sub.obs[K.TISSUE_FRACTION]
    )
    spatial = list(
        im.iter_patches(sub, mpp=4.0, size_px=16, batch_size=64, order="spatial", progress=False)
    )
    idx = np.concatenate([b.index for b in spatial])
    assert sorted(idx.tolist()) == list(range(150)) and idx.tolist() != list(range(150))
    placed = np.empty_like(full)
    placed[idx] = np.concatenate([b.images for b in spatial])
    np.testing.assert_array_equal(placed, full)
    b0 = batches[0]
    np.testing.assert_array_equal(b0.index, np.arange(64))
    half0 = 16 * 4.0 / sub.uns["stalign"]["mpp"] / 2
    np.testing.assert_allclose(b0.topleft, b0.coords - half0)


def test_iter_patches_without_tissue_qc_builds_no_mask(mob_adata, monkeypatch):
    """Callers that need only the pixels (tl.embed) do not pay for a slide mask."""
    import stalign.im._patches as patches_mod

    def no_mask(*_a, **_k):
        raise AssertionError("a tissue mask was computed")

    monkeypatch.setattr(patches_mod, "_slide_tissue_mask", no_mask)
    ref = next(im.iter_patches(mob_adata[:40], mpp=4.4, size_px=16, tissue_qc="pixels"))
    (batch,) = im.iter_patches(mob_adata[:40], mpp=4.4, size_px=16, tissue_qc=None)
    assert np.isnan(batch.tissue_fraction).all()
    np.testing.assert_array_equal(batch.images, ref.images)
    with pytest.raises(ValueError, match="tissue_qc must be one of"):
        im.extract_patches(mob_adata[:5], mpp=4.4, size_px=16, tissue_qc=None)


def test_iter_patches_with_image_and_coords(mob_dir):
    img = im.open_image(mob_dir / "MOB1.jpg", mpp=4.4)
    coords = np.array([[800.0, 900.0], [5.0, 5.0]])  # 20-px patch: 10 px each side
    (batch,) = im.iter_patches(image=img, coords=coords, size_px=20, mpp=4.4, progress=False)
    assert batch.barcodes.tolist() == ["0", "1"]
    assert batch.in_image.tolist() == [True, False]
    with pytest.raises(ValueError, match="either adata"):
        next(im.iter_patches(coords=coords))


def test_off_image_spots_are_flagged_not_shifted(mob_adata, caplog):
    sub = mob_adata[:5].copy()
    xy = sub.obsm["spatial"].copy()
    xy[0] = (3.0, 3.0)  # patch reaches over the top-left corner
    xy[1] = (-400.0, 50.0)  # centre outside the image
    sub.obsm["spatial"] = xy
    patches = im.extract_patches(sub, mpp=4.4, size_px=20, progress=False)
    assert sub.obs[K.PATCH_IN_IMAGE].tolist() == [False, False, True, True, True]
    assert not sub.obs[K.PATCH_IN_TISSUE].iloc[:2].any()
    assert not patches[1].any()  # entirely outside: all zero
    assert not patches[0][:5].any() and patches[0][12:, 12:].any()
    assert "outside the image" in caplog.text


def test_bad_spot_input(mob_adata):
    sub = mob_adata[:10].copy()
    sub.obsm["spatial"] = sub.obsm["spatial"] + 1e6
    with pytest.raises(ValueError, match="outside the"):
        im.extract_patches(sub, progress=False)
    del sub.obsm["spatial"]
    with pytest.raises(ValueError, match="obsm"):
        im.extract_patches(sub, progress=False)
    with pytest.raises(ValueError, match="tissue_threshold"):
        im.extract_patches(mob_adata, tissue_threshold=50, progress=False)
    with pytest.raises(ValueError, match="min_mask_coverage"):
        im.extract_patches(mob_adata, min_mask_coverage=-0.1, progress=False)
    with pytest.raises(ValueError, match="tissue_qc must be one of"):
        im.extract_patches(mob_adata, tissue_qc="otsu", progress=False)
    with pytest.raises(ValueError, match="saturation_threshold applies to the per-pixel rule"):
        im.extract_patches(mob_adata, saturation_threshold=20, progress=False)


def test_tissue_threshold_and_fraction_on_synthetic_pixels(mob_dir):
    img = im.open_image(mob_dir / "MOB1.jpg", mpp=4.4)
    thr = im.tissue_threshold(img)
    white = np.full((8, 8, 3), 240, np.uint8)
    purple = np.zeros((8, 8, 3), np.uint8) + np.array([120, 60, 160], np.uint8)
    frac = im.tissue_fraction(np.stack([white, purple, np.zeros_like(white)]), thr, stride=1)
    np.testing.assert_allclose(frac, [0.0, 1.0, 0.0])


def test_hest_round_trip_and_layout(tmp_path, mob_adata):
    sub = mob_adata[:40].copy()
    batch = next(im.iter_patches(sub, mpp=4.4, size_px=24, progress=False))
    path = tmp_path / "patches" / "MOB1.h5"
    im.write_hest_patches(
        path, batch.images, batch.topleft, batch.barcodes, attrs={"mpp": 4.4, "patch_size": 24}
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["MOB1.h5"]  # no temp left
    with h5py.File(path) as f:  # the layout HEST's H5PatchDataset reads
        assert f["img"].shape == (40, 24, 24, 3) and f["img"].dtype == np.uint8
        assert f["coords"].shape == (40, 2)
        assert f["barcode"].shape == (40, 1) and f["barcode"].dtype.kind == "S"
    back = im.read_hest_patches(path)
    np.testing.assert_array_equal(back.img, batch.images)
    np.testing.assert_array_equal(back.coords, np.rint(batch.topleft).astype(np.int64))
    assert back.barcode.tolist() == sub.obs_names.tolist()
    assert back.attrs == {"mpp": 4.4, "patch_size": 24}


def test_hest_bad_input(tmp_path):
    imgs = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="unique"):
        im.write_hest_patches(tmp_path / "a.h5", imgs, np.zeros((2, 2)), ["x", "x"])
    with pytest.raises(ValueError, match="coords"):
        im.write_hest_patches(tmp_path / "a.h5", imgs, np.zeros((3, 2)), ["x", "y"])
    with pytest.raises(ValueError, match="uint8"):
        im.write_hest_patches(tmp_path / "a.h5", imgs.astype(float), np.zeros((2, 2)), "xy")
    assert not (tmp_path / "a.h5").exists()
    with pytest.raises(FileNotFoundError):
        im.read_hest_patches(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_text("junk")
    with pytest.raises(ValueError, match=r"junk\.h5"):
        im.read_hest_patches(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "partial.h5", "w") as f:
        f["img"] = imgs
    with pytest.raises(ValueError, match="missing"):
        im.read_hest_patches(tmp_path / "partial.h5")
