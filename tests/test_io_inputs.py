"""Inputs as users have them: symbolic links, upper-case suffixes, TIFF/PNG H&E, gzip or not.

Each case copies (or links) the real MOB / Visium / HEST data into the shape a user
has it and checks that the reader finds the same files and reads the same data.
"""

from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stalign import _keys as K
from stalign.io import (
    detect_platform,
    find_hest_files,
    find_legacy_st_files,
    read,
    read_h5ad,
    read_hest,
    read_legacy_st,
    read_visium,
    read_xenium,
)

sys.path.insert(0, str(Path(__file__).parent))
from _fixtures_io import build_hest_sample

SECTION = "MOB4"


def _reference(mob_dir):
    return read_legacy_st(mob_dir / SECTION, load_images=False)


def _same_data(a, ref) -> None:
    assert list(a.obs_names) == list(ref.obs_names)
    np.testing.assert_array_equal(a.obsm[K.SPATIAL], ref.obsm[K.SPATIAL])
    assert (a.X != ref.X).nnz == 0
    assert a.uns[K.STALIGN][K.MPP] == pytest.approx(ref.uns[K.STALIGN][K.MPP])


# --- symbolic links ---------------------------------------------------------------------


def _linked_cohort(mob_dir, tmp_path) -> Path:
    """A cohort kept as ``data/B4/{counts.tsv.gz, spots.tsv, he.jpg}``, linked into
    ``st/`` under the section's own names (``st/B4.tsv.gz`` -> ``../data/B4/counts.tsv.gz``)."""
    data = tmp_path / "data" / "B4"
    data.mkdir(parents=True)
    shutil.copy(mob_dir / f"{SECTION}.tsv.gz", data / "counts.tsv.gz")
    shutil.copy(mob_dir / f"alignment_table_{SECTION}.tsv", data / "spots.tsv")
    shutil.copy(mob_dir / f"{SECTION}.jpg", data / "he.jpg")
    st = tmp_path / "st"
    st.mkdir()
    (st / "B4.tsv.gz").symlink_to(Path("..") / "data" / "B4" / "counts.tsv.gz")
    (st / "B4_spots.tsv").symlink_to(Path("..") / "data" / "B4" / "spots.tsv")
    (st / "B4.jpg").symlink_to(data / "he.jpg")  # absolute link
    return st


def test_legacy_st_symlinked_counts_find_siblings_of_the_link(mob_dir, tmp_path):
    st = _linked_cohort(mob_dir, tmp_path)
    found = find_legacy_st_files(st / "B4.tsv.gz")
    assert found["positions"] == st / "B4_spots.tsv"
    assert found["image"] == st / "B4.jpg"
    a = read_legacy_st(st / "B4.tsv.gz", load_images=False)
    _same_data(a, _reference(mob_dir))
    st_uns = a.uns[K.STALIGN]
    assert st_uns[K.LIBRARY_ID] == "B4"
    # the recorded paths are the ones the user gave, not the link targets
    assert Path(st_uns[K.IMAGE_PATH]) == (st / "B4.jpg").absolute()
    assert detect_platform(st / "B4.tsv.gz") == "legacy_st"


def test_manifest_keeps_the_symlinked_path_it_was_given(mob_dir, tmp_path):
    from stalign.pairs import read_manifest

    st = _linked_cohort(mob_dir, tmp_path)
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(
        "sample_id,patient_id,organ,species,platform,path,image\n"
        "B4,p1,breast,homo_sapiens,legacy_st,st/B4.tsv.gz,st/B4.jpg\n",
        encoding="utf-8",
    )
    (sample,) = read_manifest(manifest)
    assert Path(sample.path) == st.absolute() / "B4.tsv.gz"
    assert Path(sample.image) == st.absolute() / "B4.jpg"
    a = read(sample.path, platform=sample.platform, image=sample.image, load_images=False)
    assert a.uns[K.STALIGN][K.LIBRARY_ID] == "B4"


def test_visium_symlinked_folder_is_named_by_the_link(examples_dir, tmp_path):
    (tmp_path / "project").mkdir()
    link = tmp_path / "project" / "heart_A"
    link.symlink_to(examples_dir / "visium_human_heart", target_is_directory=True)
    a = read_visium(link, load_images=False)
    assert a.uns[K.STALIGN][K.LIBRARY_ID] == "heart_A"
    assert detect_platform(link) == "visium"


def test_xenium_symlinked_folder_is_named_by_the_link(shared_data, tmp_path):
    link = tmp_path / "brain_run1"
    link.symlink_to(shared_data / "xenium_mouse_brain_subset", target_is_directory=True)
    a = read_xenium(link, load_images=False)
    assert a.uns[K.STALIGN][K.LIBRARY_ID] == "brain_run1"


def test_hest_symlinked_h5ad_uses_the_links_folder(mob_dir, tmp_path):
    store = tmp_path / "store"
    build_hest_sample(store, mob_dir)
    root = tmp_path / "hest"
    for sub in ("st", "wsis", "metadata"):
        (root / sub).mkdir(parents=True)
    # every file is a link whose target has another name
    for sub, suffix in (("st", ".h5ad"), ("wsis", ".tif"), ("metadata", ".json")):
        (src,) = sorted((store / sub).iterdir())
        moved = store / f"blob_{sub}{src.suffix}"
        src.rename(moved)
        (root / sub / f"MOB2{suffix}").symlink_to(moved)
    found = find_hest_files(root / "st" / "MOB2.h5ad")
    assert found["wsi"] == root / "wsis" / "MOB2.tif"
    a = read_hest(root / "st" / "MOB2.h5ad", load_images=False)
    assert a.uns[K.STALIGN][K.LIBRARY_ID] == "MOB2"


# --- upper/lower-case suffixes -----------------------------------------------------------


def test_legacy_st_upper_case_suffixes(mob_dir, tmp_path):
    shutil.copy(mob_dir / f"{SECTION}.tsv.gz", tmp_path / "B4.TSV.GZ")
    shutil.copy(mob_dir / f"alignment_table_{SECTION}.tsv", tmp_path / "alignment_table_B4.TSV")
    shutil.copy(mob_dir / f"{SECTION}.jpg", tmp_path / "B4.JPG")
    for given in (tmp_path / "B4.TSV.GZ", tmp_path / "B4"):
        found = find_legacy_st_files(given)
        assert found["counts"] == tmp_path / "B4.TSV.GZ"
        assert found["positions"] == tmp_path / "alignment_table_B4.TSV"
        assert found["image"] == tmp_path / "B4.JPG"  # an image is never silently missed
    a = read_legacy_st(tmp_path / "B4", load_images=False)
    assert a.uns[K.STALIGN][K.LIBRARY_ID] == "B4"
    assert Path(a.uns[K.STALIGN][K.IMAGE_PATH]).name == "B4.JPG"
    _same_data(a, _reference(mob_dir))


def test_h5ad_upper_case_suffix_is_detected(mob_adata, tmp_path):
    path = tmp_path / "MOB1.H5AD"
    mob_adata.write_h5ad(path)
    assert detect_platform(path) == "h5ad"
    a = read(path, load_images=False)
    assert a.n_obs == mob_adata.n_obs


def test_hest_upper_case_wsi_suffix(mob_dir, tmp_path):
    sid = build_hest_sample(tmp_path, mob_dir)["sample_id"]
    (tmp_path / "wsis" / f"{sid}.tif").rename(tmp_path / "wsis" / f"{sid}.TIF")
    (tmp_path / "st" / f"{sid}.h5ad").rename(tmp_path / "st" / f"{sid}.H5AD")
    assert detect_platform(tmp_path) == "hest"
    found = find_hest_files(tmp_path)
    assert found["wsi"] == tmp_path / "wsis" / f"{sid}.TIF"
    a = read_hest(tmp_path, load_images=False)
    assert a.uns[K.STALIGN][K.PLATFORM] == "hest"


def test_visium_upper_case_full_resolution_image(examples_dir, tmp_path):
    lowres = Image.open(examples_dir / "visium_mouse_brain" / "spatial" / "tissue_lowres_image.png")
    import json

    sf = json.loads(
        (examples_dir / "visium_mouse_brain" / "spatial" / "scalefactors_json.json").read_text()
    )
    # a stand-in "full-resolution" image: the real lowres image scaled up to level-0 size
    size = tuple(round(s / sf["tissue_lowres_scalef"]) for s in lowres.size)
    lowres.convert("RGB").resize(size).save(tmp_path / "HE.TIF")
    a = read_visium(examples_dir / "visium_mouse_brain", image=tmp_path / "HE.TIF")
    assert a.uns[K.STALIGN][K.IMAGE_PATH].endswith("HE.TIF")
    assert a.uns[K.SPATIAL][a.uns[K.STALIGN][K.LIBRARY_ID]][K.IMAGES]["lowres"].ndim == 3


# --- TIFF / PNG H&E ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_legacy_st_tif_or_png_he_reads_like_the_jpeg(mob_dir, tmp_path, suffix):
    from stalign.im import open_image

    shutil.copy(mob_dir / f"{SECTION}.tsv.gz", tmp_path / f"{SECTION}.tsv.gz")
    shutil.copy(mob_dir / f"alignment_table_{SECTION}.tsv", tmp_path)
    with Image.open(mob_dir / f"{SECTION}.jpg") as im:
        rgb = np.asarray(im.convert("RGB"))
    Image.fromarray(rgb).save(tmp_path / f"{SECTION}{suffix}")
    a = read_legacy_st(tmp_path / SECTION)
    assert Path(a.uns[K.STALIGN][K.IMAGE_PATH]).suffix == suffix
    _same_data(a, _reference(mob_dir))
    assert a.uns[K.SPATIAL][SECTION][K.IMAGES]["hires"].shape == rgb.shape
    with open_image(a) as slide:
        cx, cy = a.obsm[K.SPATIAL][0]
        patch = slide.read_region(int(cx) - 8, int(cy) - 8, 16, 16)
    np.testing.assert_array_equal(patch, rgb[int(cy) - 8 : int(cy) + 8, int(cx) - 8 : int(cx) + 8])


# --- gzip or not -------------------------------------------------------------------------


def test_legacy_st_plain_and_gzipped_tables(mob_dir, tmp_path):
    with gzip.open(mob_dir / f"{SECTION}.tsv.gz", "rb") as fh:
        (tmp_path / f"{SECTION}.tsv").write_bytes(fh.read())
    raw = (mob_dir / f"alignment_table_{SECTION}.tsv").read_bytes()
    (tmp_path / f"alignment_table_{SECTION}.tsv.gz").write_bytes(gzip.compress(raw))
    found = find_legacy_st_files(tmp_path / SECTION)
    assert found["counts"].name == f"{SECTION}.tsv"
    assert found["positions"].name == f"alignment_table_{SECTION}.tsv.gz"
    _same_data(read_legacy_st(tmp_path / SECTION, load_images=False), _reference(mob_dir))


def test_legacy_st_compression_is_read_from_the_content_not_the_name(mob_dir, tmp_path):
    # a link named .tsv.gz to an uncompressed table, and a gzipped table named .tsv
    with gzip.open(mob_dir / f"{SECTION}.tsv.gz", "rb") as fh:
        (tmp_path / "counts.tsv").write_bytes(fh.read())
    (tmp_path / f"{SECTION}.tsv.gz").symlink_to(tmp_path / "counts.tsv")
    raw = (mob_dir / f"alignment_table_{SECTION}.tsv").read_bytes()
    (tmp_path / f"alignment_table_{SECTION}.tsv").write_bytes(gzip.compress(raw))
    _same_data(read_legacy_st(tmp_path / SECTION, load_images=False), _reference(mob_dir))


def test_visium_mtx_gzipped_under_a_plain_name(examples_dir, tmp_path):
    folder = tmp_path / "brain"
    shutil.copytree(examples_dir / "visium_mouse_brain", folder)
    ref = read_visium(examples_dir / "visium_mouse_brain", load_images=False)
    for name in ("features.tsv", "barcodes.tsv", "matrix.mtx"):
        path = folder / "raw_feature_bc_matrix" / name
        path.write_bytes(gzip.compress(path.read_bytes()))
    a = read_visium(folder, load_images=False)
    assert list(a.obs_names) == list(ref.obs_names)
    assert (a.X != ref.X).nnz == 0


def test_h5ad_symlink_is_recorded_as_given(mob_adata, tmp_path):
    real = tmp_path / "store" / "blob.h5ad"
    real.parent.mkdir()
    mob_adata.write_h5ad(real)
    link = tmp_path / "MOB1.h5ad"
    link.symlink_to(real)
    a = read_h5ad(link, load_images=False)
    assert a.uns[K.STALIGN][K.LIBRARY_ID] == "MOB1"
    meta = a.uns[K.SPATIAL]["MOB1"][K.METADATA]
    assert meta["h5ad_path"] == str(link.absolute())
    assert a.n_obs == mob_adata.n_obs


def test_open_image_dispatches_on_content_not_suffix(mob_dir, tmp_path):
    """A JPEG saved as ``.TIF`` and a TIFF saved as ``.jpg`` open like their content."""
    import tifffile

    from stalign.im import open_image

    with Image.open(mob_dir / f"{SECTION}.jpg") as im:
        rgb = np.asarray(im.convert("RGB"))
    shutil.copy(mob_dir / f"{SECTION}.jpg", tmp_path / "he.TIF")
    tifffile.imwrite(tmp_path / "he.jpg", rgb, tile=(256, 256), photometric="rgb")
    for name in ("he.TIF", "he.jpg"):
        with open_image(tmp_path / name, mpp=1.0) as slide:
            region = slide.read_region(300, 400, 32, 32)
        np.testing.assert_array_equal(region, rgb[400:432, 300:332])
