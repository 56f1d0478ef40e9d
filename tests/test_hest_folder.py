"""A HEST-1k folder → ``stalign manifest --from-hest`` → ``stalign build-pairs``,
reusing HEST's ``patches/`` and ``tissue_seg/`` without opening any WSI."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from _fixtures_hest import build_hest_folder

from stalign.cli import main
from stalign.io import hest_manifest, read_hest_metadata
from stalign.pairs import read_index, read_manifest
from stalign.pairs._store import licence_summary, write_index

BUILD = ["--gene-sets", "hallmark", "--no-progress"]


@pytest.fixture(scope="module")
def hest(tmp_path_factory, mob_dir):
    root = tmp_path_factory.mktemp("hest") / "hest_data"
    root.mkdir()
    return root, build_hest_folder(root, mob_dir)


def _forbid_wsi(monkeypatch) -> None:
    """Every way stalign (or tifffile) could open or decode a slide raises."""
    import tifffile

    import stalign.im._patches
    import stalign.im._slide
    import stalign.io._image

    def boom(*a, **k):
        raise AssertionError("a WSI was opened")

    for mod, name in (
        (stalign.im, "open_image"),
        (stalign.im._slide, "open_image"),
        (stalign.im._patches, "open_image"),
        (stalign.io._image, "image_info"),
        (stalign.io._image, "load_thumbnail"),
        (tifffile.TiffFile, "__init__"),
    ):
        monkeypatch.setattr(mod, name, boom)
    real_load = pickle.load

    def no_hest_pickle(f, *a, **k):  # numba's cache unpickles too: only HEST's .pkl is barred
        if str(getattr(f, "name", "")).endswith("_mask.pkl"):
            raise AssertionError("HEST's .pkl contours were unpickled")
        return real_load(f, *a, **k)

    monkeypatch.setattr(pickle, "load", no_hest_pickle)


def test_manifest_from_hest_cli(hest, tmp_path, caplog):
    root, truth = hest
    out = tmp_path / "manifests" / "hest.csv"
    assert main(["manifest", "--from-hest", str(root), "--out", str(out)]) == 0
    samples = read_manifest(out)
    assert [s.sample_id for s in samples] == sorted(truth)
    by_id = {s.sample_id: s for s in samples}
    assert by_id["ST_MOB1"].patient_id == by_id["ST_MOB2"].patient_id  # one animal
    assert by_id["ST_MOB3"].patient_id == "ST_MOB3"  # no patient field: its own
    assert "no 'patient' field" in caplog.text and "ST_MOB3" in caplog.text
    for s in samples:
        assert s.platform == "hest" and s.organ == "Brain" and s.species == "Mus musculus"
        assert s.mpp == pytest.approx(truth[s.sample_id]["mpp"])
        assert s.license == "MIT" and "Ståhl" in s.source
        assert Path(s.path) == (root / "st" / f"{s.sample_id}.h5ad").resolve()
    assert not Path(pd.read_csv(out)["path"][0]).is_absolute()  # relative to the CSV


def test_manifest_filters_and_errors(hest, tmp_path):
    root, _ = hest
    frame = hest_manifest(root, organ="brain", technology=["spatial transcriptomics"])
    assert len(frame) == 3
    with pytest.raises(ValueError, match=r"no HEST sample matches.*'Brain'"):
        hest_manifest(root, organ="Bowel")
    assert main(["manifest", "--from-hest", str(tmp_path), "--out", str(tmp_path / "m.csv")]) == 1
    # the JSON fills what the table lacks; a sample with neither is an error
    meta = read_hest_metadata(root)
    assert meta.loc["ST_MOB1", "inter_spot_dist"] != ""  # only in metadata/<id>.json
    bad = tmp_path / "bad"
    shutil.copytree(root / "st", bad / "st")
    with pytest.raises(ValueError, match="no metadata"):
        read_hest_metadata(bad)
    # an id that cannot name a shard: the CLI refuses it and leaves no manifest behind
    odd = tmp_path / "odd"
    shutil.copytree(root, odd, ignore=shutil.ignore_patterns("wsis", "patches"))
    (odd / "st" / "ST_MOB1.h5ad").rename(odd / "st" / "ST MOB1.h5ad")
    (odd / "metadata" / "ST_MOB1.json").rename(odd / "metadata" / "ST MOB1.json")
    out = tmp_path / "odd.csv"
    assert main(["manifest", "--from-hest", str(odd), "--out", str(out)]) == 1
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_build_pairs_reuses_hest_patches_without_opening_a_wsi(hest, tmp_path, monkeypatch):
    root, truth = hest
    manifest = tmp_path / "hest.csv"
    assert main(["manifest", "--from-hest", str(root), "--out", str(manifest)]) == 0
    _forbid_wsi(monkeypatch)
    out = tmp_path / "pairs"
    assert main(["build-pairs", str(manifest), "--out", str(out), *BUILD]) == 0
    index = read_index(out)
    assert index["n_samples"] == 3 and index["licenses"] == {"MIT": sorted(truth)}
    assert index["mixed_licenses"] is False
    for s in index["samples"]:
        rec = json.loads((out / s["path"] / "_SUCCESS").read_text())
        assert rec["patch_source"] == "hest_patches"
        assert rec["hest_patch_geometry"] == {
            "size_px": 256,
            "mpp": 0.5,
            "mpp_source": "hest_default",
            "centre_crop_px": 224,
        }
        want = "_mask.jpg" if s["sample_id"] == "ST_MOB3" else "_contours.geojson"
        assert rec["tissue_source"].endswith(want)
        # patches = centre crops of HEST's 256 px patches, keyed by barcode
        with (
            h5py.File(out / s["path"] / "patches.h5") as f,
            h5py.File(root / "patches" / f"{s['sample_id']}.h5") as g,
        ):
            hest_row = {b[0].decode(): i for i, b in enumerate(g["barcode"][()])}
            for k, b in enumerate(f["barcode"][:, 0][:5]):
                b = b.decode() if isinstance(b, bytes) else b
                np.testing.assert_array_equal(f["img"][k], g["img"][hest_row[b]][16:240, 16:240])
    # tissue QC from tissue_seg: the contour hole and the mask's left half drop spots
    spots3 = pd.read_csv(out / "samples" / "ST_MOB3" / "spots.csv", index_col=0)
    left = spots3["x"] < truth["ST_MOB3"]["centre_x"] - 60
    assert (spots3.loc[left, "reason"] == "low_tissue").all() and left.sum() > 5
    assert spots3.loc[spots3["x"] > truth["ST_MOB3"]["centre_x"] + 60, "kept"].all()
    spots1 = pd.read_csv(out / "samples" / "ST_MOB1" / "spots.csv", index_col=0)
    assert (spots1["reason"] == "low_tissue").sum() >= 1  # the spot under the hole
    report = (out / "qc" / "report.md").read_text()
    assert report.count("HEST patches/ (256 px → centre 224 px, no WSI read)") == 3
    pairs = ad.read_h5ad(out / "samples" / "ST_MOB1" / "pairs.h5ad")
    assert pairs.obsm["pathway_scores"].shape[1] > 0


def test_other_geometry_falls_back_to_the_wsi_and_says_so(hest, tmp_path):
    """288 px > HEST's 256: read from the WSI; its centre 224 px ≈ HEST's crops."""
    root, _ = hest
    manifest = tmp_path / "hest.csv"
    hest_manifest(root, out=manifest)
    out = tmp_path / "pairs"
    args = ["build-pairs", str(manifest), "--out", str(out), "--size-px", "288"]
    assert main([*args, "--gene-sets", "none", "--no-progress", "--tissue-threshold", "0"]) == 0
    rec = json.loads((out / "samples" / "ST_MOB2" / "_SUCCESS").read_text())
    assert rec["patch_source"] == "wsi"
    assert rec["hest_patches_not_used"] == "patches are 256 px, 288 px requested"
    assert "WSI (patches are 256 px, 288 px requested)" in (out / "qc" / "report.md").read_text()
    # same centres and µm/px: the WSI's patches agree with HEST's (the geometry is right)
    with (
        h5py.File(out / "samples/ST_MOB2/patches.h5") as f,
        h5py.File(root / "patches/ST_MOB2.h5") as g,
    ):
        row = {b[0].decode(): i for i, b in enumerate(g["barcode"][()])}
        names = [b.decode() if isinstance(b, bytes) else b for b in f["barcode"][:, 0]]
        ours = f["img"][:, 32:256, 32:256].astype(float)
        theirs = np.stack([g["img"][row[b]][16:240, 16:240] for b in names]).astype(float)
    assert len(names) == 60 and np.abs(ours - theirs).mean() < 2.0


def test_patches_of_other_coordinates_are_not_reused(hest, tmp_path):
    """A patch file cut around other positions is refused; the WSI is read instead."""
    root, _ = hest
    copy = tmp_path / "hest"
    shutil.copytree(root, copy)
    with h5py.File(copy / "patches" / "ST_MOB1.h5", "r+") as f:
        f["coords"][...] = f["coords"][()] + 200  # 200 level-0 px off every spot
    manifest = tmp_path / "hest.csv"
    hest_manifest(copy, out=manifest)
    out = tmp_path / "pairs"
    assert (
        main(
            [
                "build-pairs",
                str(manifest),
                "--out",
                str(out),
                "--size-px",
                "64",
                "--mpp",
                "0.5",
                "--gene-sets",
                "none",
                "--no-progress",
            ]
        )
        == 0
    )
    rec = json.loads((out / "samples" / "ST_MOB1" / "_SUCCESS").read_text())
    assert rec["patch_source"] == "wsi"
    assert "patch centres lie a median" in rec["hest_patches_not_used"]
    rec2 = json.loads((out / "samples" / "ST_MOB2" / "_SUCCESS").read_text())
    assert rec2["patch_source"] == "hest_patches"  # 64 px centre crops of 256 px


def test_tissue_seg_files(tmp_path):
    from stalign.im import read_hest_tissue

    seg = tmp_path / "tissue_seg"
    seg.mkdir()
    assert read_hest_tissue(seg, "S1", width=100, height=100) is None
    old_style = {  # a tissue square and, as its own feature, a hole (older HEST files)
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"classification": {"name": "tissue"}},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[0, 0], [50, 0], [50, 50], [0, 50], [0, 0]]],
                },
            },
            {
                "type": "Feature",
                "properties": {"classification": {"name": "hole"}},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[10, 10], [20, 10], [20, 20], [10, 20], [10, 10]]],
                },
            },
        ],
    }
    (seg / "S1_contours.geojson").write_text(json.dumps(old_style))
    mask = read_hest_tissue(seg, "S1", width=100, height=100)
    frac = mask.fraction(np.array([[0.0, 0.0], [10.0, 10.0], [30.0, 30.0], [60.0, 60.0]]), 10.0)
    np.testing.assert_allclose(frac, [1.0, 0.0, 1.0, 0.0], atol=0.15)
    (seg / "S2_contours.geojson").write_text("{not json")
    with pytest.raises(ValueError, match="expected GeoJSON tissue contours"):
        read_hest_tissue(seg, "S2", width=100, height=100)
    from PIL import Image

    Image.fromarray(np.zeros((10, 30), np.uint8)).save(seg / "S3_mask.jpg")
    with pytest.raises(ValueError, match="different aspect ratio"):
        read_hest_tissue(seg, "S3", width=100, height=100)


def test_mixed_licences_are_said_in_the_index(tmp_path):
    samples = [
        {"sample_id": "a", "license": "CC BY 4.0"},
        {"sample_id": "b", "license": "CC BY-NC-SA 4.0"},
        {"sample_id": "c", "license": ""},
    ]
    summary = licence_summary(samples)
    assert summary["mixed_licenses"] is True
    assert summary["licenses"] == {"CC BY 4.0": ["a"], "CC BY-NC-SA 4.0": ["b"], "unknown": ["c"]}
    write_index(tmp_path, {"format_version": 1, "samples": samples})
    assert json.loads((tmp_path / "index.json").read_text())["mixed_licenses"] is True


def test_a_download_without_wsis_builds_from_the_patches(hest, tmp_path):
    """st/ + metadata/ + patches/ + tissue_seg/ only: the slides need not be downloaded."""
    from stalign.io import read_hest

    root, truth = hest
    copy = tmp_path / "hest"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("wsis"))
    with pytest.raises(FileNotFoundError, match=r"expected wsis/ST_MOB1.tif"):
        read_hest(copy / "st" / "ST_MOB1.h5ad")
    a = read_hest(copy / "st" / "ST_MOB1.h5ad", use_wsi=False)
    assert a.uns["stalign"]["image_path"] is None and a.n_obs == truth["ST_MOB1"]["n"]
    manifest = tmp_path / "hest.csv"
    hest_manifest(copy, out=manifest)
    out = tmp_path / "pairs"
    assert (
        main(
            [
                "build-pairs",
                str(manifest),
                "--out",
                str(out),
                "--gene-sets",
                "none",
                "--no-progress",
            ]
        )
        == 0
    )
    assert read_index(out)["n_pairs"] > 0
    # another geometry needs the slide: a clear failure naming the missing WSI
    assert (
        main(
            [
                "build-pairs",
                str(manifest),
                "--out",
                str(tmp_path / "p2"),
                "--size-px",
                "288",
                "--gene-sets",
                "none",
                "--no-progress",
            ]
        )
        == 1
    )
    failed = json.loads((tmp_path / "p2" / "samples" / "ST_MOB1" / "_FAILED").read_text())
    assert "expected wsis/ST_MOB1.tif, not found" in failed["reason"]
