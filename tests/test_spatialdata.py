"""SpatialData bridge: zarr stores made from shipped real samples build the same pairs
as the native readers, and scores go back into the SpatialData table."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

pytest.importorskip("spatialdata")

import spatialdata as sd

from stalign.im import to_spatialdata
from stalign.io import (
    detect_platform,
    read,
    read_legacy_st,
    read_spatialdata,
    read_visium,
)
from stalign.pairs import build_pairs, patches_digest, read_index

HEADER = "sample_id,patient_id,organ,species,platform,path,image,mpp,source,license\n"


def _build(tmp, name, platform, path, image_mpp="", **kw):
    m = tmp / f"{name}.csv"
    m.write_text(HEADER + f"{name},p1,organ,species,{platform},{path},,{image_mpp},test,MIT\n")
    out = tmp / f"pairs_{name}"
    build_pairs(m, out, progress=False, **kw)
    return out / "samples" / name


def _same_pairs(a_dir, b_dir, *, scores: bool) -> None:
    a, b = ad.read_h5ad(a_dir / "pairs.h5ad"), ad.read_h5ad(b_dir / "pairs.h5ad")
    assert list(a.obs_names) == list(b.obs_names) and a.n_obs > 0
    assert list(a.var_names) == list(b.var_names)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_allclose(a.obsm["spatial"], b.obsm["spatial"], atol=1e-6)
    if scores:
        np.testing.assert_allclose(a.obsm["pathway_scores"], b.obsm["pathway_scores"], atol=1e-5)
    assert patches_digest(a_dir / "patches.h5") == patches_digest(b_dir / "patches.h5")


def test_mob_zarr_builds_the_native_pairs_and_takes_scores_back(tmp_path, mob_dir):
    native = read_legacy_st(mob_dir / "MOB1")
    store = tmp_path / "mob1.zarr"
    to_spatialdata(native, path=store)
    assert detect_platform(store) == "spatialdata"
    back = read(store)  # platform detected; the image stays on disk (OME-Zarr folder)
    assert back.uns["stalign"]["image_path"] == str(store.resolve() / "images" / "he")
    assert back.uns["stalign"]["mpp"] == pytest.approx(native.uns["stalign"]["mpp"])
    np.testing.assert_allclose(back.obsm["spatial"], native.obsm["spatial"])
    fast = {"mpp": 9.4, "size_px": 32, "gene_sets": "hallmark"}
    a = _build(tmp_path, "MOB1", "legacy_st", mob_dir / "MOB1.tsv.gz", **fast)
    b = _build(tmp_path, "MOB1zarr", "spatialdata", store, **fast)
    _same_pairs(a, b, scores=True)
    assert read_index(b.parent.parent)["samples"][0]["platform"] == "spatialdata"
    # the way back: pathway scores of the kept spots into the store's table
    pairs = ad.read_h5ad(b / "pairs.h5ad")
    pairs.obsm["X_toy"] = np.arange(pairs.n_obs * 2, dtype=np.float32).reshape(-1, 2)
    to_spatialdata(pairs, sdata=store)
    table = sd.read_zarr(store).tables["table"]
    scores = table.obsm["pathway_scores"]
    assert list(scores.columns) == list(pairs.obsm["pathway_scores"].columns)
    np.testing.assert_allclose(
        scores.loc[pairs.obs_names].to_numpy(), pairs.obsm["pathway_scores"].to_numpy(), atol=1e-6
    )
    dropped = ~table.obs_names.isin(pairs.obs_names)
    assert dropped.any() and np.isnan(scores.to_numpy()[dropped]).all()
    assert table.obsm["X_toy"].shape == (table.n_obs, 2)


def test_visium_lowres_zarr_builds_the_native_pairs(tmp_path, examples_dir):
    path = examples_dir / "visium_human_heart"
    store = tmp_path / "heart.zarr"
    to_spatialdata(read_visium(path), path=store)
    back = read_spatialdata(store)
    assert back.uns["stalign"]["image_path"] is None  # a lowres stand-in: kept in memory
    geometry = {"mpp": 20.0, "size_px": 16, "gene_sets": None, "tissue_threshold": 0.0}
    a = _build(tmp_path, "heart", "visium", path, **geometry)
    b = _build(tmp_path, "heartzarr", "spatialdata", store, **geometry)
    _same_pairs(a, b, scores=False)


def _level0(element):
    """The full-resolution pixels of an image element (single- or multi-scale)."""
    import xarray as xr

    return element if isinstance(element, xr.DataArray) else sd.get_pyramid_levels(element, n=0)


def test_the_io_writer_takes_the_opened_image(tmp_path, examples_dir):
    """stalign.io.to_spatialdata (beside the reader) writes what im.to_spatialdata writes.

    The Visium lowres stand-in has a non-integer level-0 downsample, so the writer's
    chunked reads through the public ``read_region`` are checked pixel for pixel.
    """
    import stalign.io
    from stalign.im import from_array, open_image

    native = read_visium(examples_dir / "visium_human_heart")
    by_im = to_spatialdata(native, path=tmp_path / "im.zarr")
    with open_image(native) as slide:
        assert slide.level_downsamples[0] != int(slide.level_downsamples[0])
        by_io = stalign.io.to_spatialdata(native, path=tmp_path / "io.zarr", image=slide)
    pixels = [np.asarray(_level0(s.images["he"])) for s in (by_im, by_io)]
    assert pixels[0].shape[0] == 3 and pixels[0].size > 0
    np.testing.assert_array_equal(pixels[0], pixels[1])
    assert by_im.images["he"].attrs == by_io.images["he"].attrs  # the same transformations
    # chunks away from the origin (1024 px each) with a non-integer downsample: every
    # pixel lands where it was
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (1300, 2500, 3), dtype=np.uint8)
    lazy = stalign.io.to_spatialdata(native, image=from_array(big, downsample=1 / 0.0738))
    np.testing.assert_array_equal(np.asarray(_level0(lazy.images["he"])), np.moveaxis(big, -1, 0))
    no_image = stalign.io.to_spatialdata(native)
    assert not no_image.images and list(no_image.shapes) == ["spots"]
    with pytest.raises(TypeError, match=r"image=stalign\.im\.open_image"):
        stalign.io.to_spatialdata(native, image=True)


def test_xenium_table_round_trip(tmp_path, shared_data):
    from stalign.io import read_xenium

    native = read_xenium(shared_data / "xenium_mouse_brain_subset")
    store = tmp_path / "xenium.zarr"
    to_spatialdata(native, path=store, image=False)  # no H&E in the subset
    back = read_spatialdata(store)
    assert list(back.obs_names) == list(native.obs_names)
    assert (back.layers["counts"] != native.layers["counts"]).nnz == 0
    np.testing.assert_allclose(back.obsm["spatial"], native.obsm["spatial"])
    assert back.uns["stalign"]["image_path"] is None


def test_spatialdata_io_visium_store_builds_the_native_pairs(tmp_path, examples_dir):
    """A store written by spatialdata-io (not by stalign) gives the native reader's pairs."""
    sdio = pytest.importorskip("spatialdata_io")
    path = examples_dir / "visium_human_heart"
    sdata = sdio.visium(path, dataset_id="heart", counts_file="filtered_feature_bc_matrix.h5")
    store = tmp_path / "heart_sdio.zarr"
    sdata.write(store)
    native = read_visium(path)
    # the hires image is a black placeholder: the lowres one is chosen, as natively
    back = read_spatialdata(store, spot_diameter_um=55.0)
    assert back.uns["spatial"]["table"]["metadata"]["image"] == "heart_lowres_image"
    assert back.uns["stalign"]["mpp"] == pytest.approx(native.uns["stalign"]["mpp"], rel=1e-6)
    np.testing.assert_allclose(back.obsm["spatial"], native.obsm["spatial"], atol=1e-6)
    geometry = {"mpp": 20.0, "size_px": 16, "gene_sets": None, "tissue_threshold": 0.0}
    mpp = native.uns["stalign"]["mpp"]  # spatialdata-io stores no µm: the manifest gives it
    a = _build(tmp_path, "heart", "visium", path, **geometry)
    b = _build(tmp_path, "heartsdio", "spatialdata", store, image_mpp=mpp, **geometry)
    _same_pairs(a, b, scores=False)


def test_bad_choices_are_named(tmp_path, mob_dir):
    native = read_legacy_st(mob_dir / "MOB1")
    sdata = to_spatialdata(native)
    with pytest.raises(ValueError, match=r"no image named 'nope'; found \['he'\]"):
        read_spatialdata(sdata, image="nope")
    with pytest.raises(ValueError, match="no transformation to coordinate system 'x'"):
        read_spatialdata(sdata, coordinate_system="x")
    with pytest.raises(FileNotFoundError, match="SpatialData store not found"):
        read_spatialdata(tmp_path / "missing.zarr")
    with pytest.raises(ValueError, match="nothing of stalign's to write back"):
        to_spatialdata(native, sdata=sdata)
    store = tmp_path / "t.zarr"
    to_spatialdata(native, path=store, image=False)
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        to_spatialdata(native, path=store, image=False)
    to_spatialdata(native[:10], path=store, image=False, overwrite=True)  # swapped in whole
    assert sd.read_zarr(store).tables["table"].n_obs == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.zarr"]  # no temporary left


def test_transformations_place_the_spots(mob_dir):
    from spatialdata.transformations import Affine, Translation, set_transformation

    native = read_legacy_st(mob_dir / "MOB1")
    sdata = to_spatialdata(native)
    set_transformation(sdata.images["he"], Translation([10.0, 20.0], axes=("x", "y")), "global")
    back = read_spatialdata(sdata)  # image shifted by (10, 20): spots move the other way
    np.testing.assert_allclose(back.obsm["spatial"], native.obsm["spatial"] - [10.0, 20.0])
    rotation = Affine(
        np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
        input_axes=("x", "y"),
        output_axes=("x", "y"),
    )
    set_transformation(sdata.images["he"], rotation, "global")
    with pytest.raises(ValueError, match="rotation, shear or unequal x/y scale"):
        read_spatialdata(sdata)


def test_ome_zarr_pyramid_is_read_lazily_by_level(tmp_path, mob_dir):
    from spatialdata.models import Image2DModel

    from stalign import im

    rgb = im.open_image(mob_dir / "MOB1.jpg", mpp=4.0)
    full = rgb.read_region(0, 0, rgb.width, rgb.height)
    element = Image2DModel.parse(
        np.moveaxis(full, -1, 0), dims=("c", "y", "x"), scale_factors=[2, 2], chunks=(3, 256, 256)
    )
    sd.SpatialData(images={"he": element}).write(tmp_path / "p.zarr")
    slide = im.open_image(tmp_path / "p.zarr" / "images" / "he", mpp=4.0)
    assert slide.level_count == 3
    assert slide.level_downsamples == pytest.approx((1.0, 1905 / 952, 1905 / 476))
    np.testing.assert_array_equal(slide.read_region(300, 500, 64, 48), full[500:548, 300:364])
    assert slide.best_level(8.0) == 1


def _hold_lock(lock):
    """Start a process holding ``folder_lock(lock)``; return it once it holds it."""
    import subprocess
    import sys

    code = (
        "import sys, time\nfrom stalign._lock import folder_lock\n"
        "with folder_lock(sys.argv[1], command='holder'):\n"
        "    print('held', flush=True)\n    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"held"
    return proc


def test_concurrent_writers_of_one_store_are_refused(tmp_path, mob_dir):
    """A write-back or an overwrite while another process writes the store is refused
    (one-line error naming the holder), and the store is left as it was."""
    from stalign._lock import FolderLockedError

    native = read_legacy_st(mob_dir / "MOB1")
    native.obsm["pathway_scores"] = native.obsm["spatial"][:, :1] * 0 + 1.0
    store = tmp_path / "mob1.zarr"
    to_spatialdata(native, path=store, image=False)
    before = _snapshot(store)
    # the refused writers carry other data, so any write before the lock shows in the bytes
    changed = native.copy()
    changed.obsm["pathway_scores"] = native.obsm["pathway_scores"] + 1.0
    for call in (
        lambda: to_spatialdata(changed, sdata=store),
        lambda: to_spatialdata(changed, path=store, image=False, overwrite=True),
    ):
        proc = _hold_lock(store / ".stalign.lock")
        try:
            with pytest.raises(FolderLockedError, match=rf"is in use by pid {proc.pid} "):
                call()
        finally:
            proc.kill()
            proc.wait()
        assert _snapshot(store) == before  # names, bytes and mtimes
    to_spatialdata(changed, sdata=store)  # the holder is gone: the write-back goes through
    scores = sd.read_zarr(store).tables["table"].obsm["pathway_scores"]
    assert np.all(np.asarray(scores) == 2.0)


def _snapshot(store: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of ``store`` but the lock: relative path -> (bytes, mtime ns)."""
    return {
        str(p.relative_to(store)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in store.rglob("*")
        if p.is_file() and p.name != ".stalign.lock"
    }


def test_a_store_created_meanwhile_by_another_writer_is_left_as_is(tmp_path, mob_dir, monkeypatch):
    native = read_legacy_st(mob_dir / "MOB1")
    store = tmp_path / "new.zarr"
    write = sd.SpatialData.write

    def write_then_race(self, file_path, *a, **k):  # the other writer finishes first
        write(self, file_path, *a, **k)
        store.mkdir()
        (store / "theirs").write_text("x")

    monkeypatch.setattr(sd.SpatialData, "write", write_then_race)
    with pytest.raises(FileExistsError, match="created by another process"):
        to_spatialdata(native, path=store, image=False)
    assert sorted(p.name for p in store.iterdir()) == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.zarr"]  # no temporary left
