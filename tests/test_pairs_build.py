"""build_pairs / merge_pairs on the real MOB sections: content, resume after SIGKILL,
determinism, sharding, failures with --keep-going."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest

import stalign as st
from stalign.pairs import (
    ManifestError,
    build_pairs,
    merge_pairs,
    parse_shard,
    patches_digest,
    read_index,
    read_manifest,
    shard_samples,
)
from stalign.pairs._store import params_fingerprint

# small, fast geometry: 32 px at 9.4 µm/px = the same ~300 µm field as the demo's 64 px
FAST = {"mpp": 9.4, "size_px": 32, "gene_sets": "hallmark", "progress": False}
HEADER = "sample_id,patient_id,organ,species,platform,path,image,mpp,source,license\n"


def _manifest(tmp: Path, mob_dir: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """rows: (sample_id, patient_id, counts path, image path or '')."""
    tmp.mkdir(parents=True, exist_ok=True)
    text = HEADER + "".join(
        f"{sid},{pid},olfactory_bulb,mus_musculus,legacy_st,{path},{img},,test,MIT\n"
        for sid, pid, path, img in rows
    )
    p = tmp / "manifest.csv"
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def two_sample_manifest(tmp_path_factory, mob_dir) -> Path:
    tmp = tmp_path_factory.mktemp("manifest")
    return _manifest(
        tmp,
        mob_dir,
        [
            ("MOB1", "mouse1", str(mob_dir / "MOB1.tsv.gz"), ""),
            ("MOB3", "mouse2", str(mob_dir / "MOB3.tsv.gz"), ""),
        ],
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory, two_sample_manifest) -> Path:
    """An uninterrupted, unsharded build of MOB1 + MOB3 (the reference)."""
    out = tmp_path_factory.mktemp("store") / "pairs"
    result = build_pairs(two_sample_manifest, out, **FAST)
    assert list(result.table["status"]) == ["done", "done"]
    return out


def _content(out: Path) -> dict[str, dict]:
    """Per sample: file checksums from _SUCCESS + a digest of the decoded patch arrays."""
    index = read_index(out)
    return {
        s["sample_id"]: {
            "files": {k: v["sha256"] for k, v in s["files"].items()},
            "patches": patches_digest(out / s["path"] / "patches.h5"),
        }
        for s in index["samples"]
    }


def test_store_content_is_keyed_by_barcode(store):
    index = read_index(store)
    assert index["n_samples"] == 2 and not index["failed"] and not index["missing"]
    assert index["params"]["size_px"] == 32 and index["params"]["mpp"] == 9.4
    assert {"numpy", "anndata", "h5py", "stalign"} <= set(index["versions"])
    assert len(index["pathways"]) >= 30 and all(
        p.startswith("HALLMARK_") for p in index["pathways"]
    )
    assert len(index["genes"]) == 1000
    for s in index["samples"]:
        d = store / s["path"]
        pairs = ad.read_h5ad(d / "pairs.h5ad")
        assert pairs.n_obs == s["n_pairs"] > 100
        assert pairs.X.format == "csr" and np.all(pairs.X.data == np.round(pairs.X.data))
        scores = pairs.obsm["pathway_scores"]
        assert list(scores.index) == list(pairs.obs_names)
        assert list(scores.columns)[: len(index["pathways"])] == index["pathways"]
        assert set(pairs.obs["patient_id"]) == {s["patient_id"]}
        with h5py.File(d / "patches.h5", "r") as f:
            assert f["img"].shape == (s["n_pairs"], 32, 32, 3) and f["img"].dtype == np.uint8
            barcodes = [b.decode() for b in f["barcode"][:, 0]]
            coords = f["coords"][:]
        assert barcodes == list(pairs.obs_names)
        # HEST coords = top-left corner = centre - half the level-0 window
        window = 32 * 9.4 / s["mpp_level0"]
        np.testing.assert_allclose(coords, pairs.obsm["spatial"] - window / 2, atol=0.51)
        spots = pd.read_csv(d / "spots.csv", index_col=0, keep_default_na=False)
        assert len(spots) == s["n_spots"] and spots["kept"].sum() == s["n_pairs"]
        kept = spots[spots["kept"]]
        # default tissue QC: the platform call is trusted down to 10 % mask coverage
        assert (kept["tissue_fraction"] >= 0.1).all() and kept["in_tissue"].all()
        assert set(spots.loc[~spots["kept"], "reason"]) <= {
            "low_tissue",
            "not_in_tissue_call",
            "outside_image",
            "no_counts",
        }
        assert sum(s["dropped"].values()) == s["n_spots"] - s["n_pairs"]
    report = (store / "qc" / "report.md").read_text()
    assert "MOB1" in report and "MOB3" in report and "![MOB1](MOB1_spots.png)" in report
    for png in ("MOB1_spots.png", "MOB3_spots.png", "counts_per_spot.png", "tissue_fraction.png"):
        assert (store / "qc" / png).stat().st_size > 10_000
    assert (store / "qc" / "report.html").read_text().count("<img") == 5  # + pathway_depth


def test_sigkill_mid_run_then_resume_gives_identical_content(tmp_path, store, two_sample_manifest):
    out = tmp_path / "pairs"
    cmd = [
        sys.executable,
        "-m",
        "stalign",
        "build-pairs",
        str(two_sample_manifest),
        "--out",
        str(out),
        "--mpp",
        "9.4",
        "--size-px",
        "32",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "samples" / "MOB1" / "_SUCCESS"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.exists(), "the first shard never finished"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "index.json").exists()  # killed before the end
    assert not (out / "samples" / "MOB3" / "_SUCCESS").exists(), "killed too late"
    mtime = first.stat().st_mtime_ns

    result = build_pairs(two_sample_manifest, out, **FAST)
    status = dict(zip(result.table["sample_id"], result.table["status"], strict=True))
    assert status == {"MOB1": "skipped", "MOB3": "done"}
    assert first.stat().st_mtime_ns == mtime  # the finished shard was not redone
    assert not [p for p in (out / "samples").iterdir() if p.name.startswith(".tmp-")]
    assert _content(out) == _content(store)


def test_sharded_build_and_merge_is_deterministic(tmp_path, store, two_sample_manifest):
    out = tmp_path / "pairs"
    for i in range(2):
        r = build_pairs(two_sample_manifest, out, shard=f"{i}/2", **FAST)
        assert len(r.table) == 1 and r.index_path is None
    assert not (out / "index.json").exists()
    merge_pairs(out)
    assert _content(out) == _content(store)  # same bytes as the single-job build
    a = json.loads((store / "index.json").read_text())
    b = json.loads((out / "index.json").read_text())
    assert a == b


def test_shard_assignment_is_deterministic_and_complete(two_sample_manifest):
    samples = read_manifest(two_sample_manifest)
    parts = [shard_samples(samples, (i, 3)) for i in range(3)]
    ids = sorted(s.sample_id for part in parts for s in part)
    assert ids == ["MOB1", "MOB3"]
    assert shard_samples(list(reversed(samples)), (0, 3)) == parts[0]
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_resume_refuses_other_parameters(store, two_sample_manifest):
    with pytest.raises(ValueError, match="other parameters"):
        build_pairs(two_sample_manifest, store, **{**FAST, "size_px": 48})


def test_merge_reports_missing_shards(tmp_path, two_sample_manifest):
    out = tmp_path / "pairs"
    build_pairs(two_sample_manifest, out, shard="0/2", **{**FAST, "gene_sets": None})
    with pytest.raises(ValueError, match=r"1 sample\(s\) .* no finished shard yet"):
        merge_pairs(out, report=False)
    merge_pairs(out, allow_missing=True, report=False)
    assert len(read_index(out)["missing"]) == 1


def test_broken_samples_are_reported_and_keep_going_finishes(tmp_path, mob_dir):
    tmp = tmp_path / "data"
    tmp.mkdir()
    # a corrupt image: truncated JPEG bytes
    (tmp / "broken.jpg").write_bytes((mob_dir / "MOB2.jpg").read_bytes()[:2000])
    # coordinates that miss the image: the alignment table shifted far outside it
    shutil.copy(mob_dir / "MOB4.tsv.gz", tmp / "OFF.tsv.gz")
    shutil.copy(mob_dir / "MOB4.jpg", tmp / "OFF.jpg")
    shutil.copy(mob_dir / "mouse_genes.tsv.gz", tmp / "mouse_genes.tsv.gz")
    table = pd.read_csv(mob_dir / "alignment_table_MOB4.tsv", sep="\t")
    table["pixel_x"] += 50_000
    table.to_csv(tmp / "alignment_table_OFF.tsv", sep="\t", index=False)
    manifest = _manifest(
        tmp,
        mob_dir,
        [
            ("GOOD", "mouse1", str(mob_dir / "MOB1.tsv.gz"), ""),
            ("BROKEN", "mouse1", str(mob_dir / "MOB2.tsv.gz"), str(tmp / "broken.jpg")),
            ("OFF", "mouse2", str(tmp / "OFF.tsv.gz"), ""),
        ],
    )
    fast = {**FAST, "gene_sets": None}
    with pytest.raises(RuntimeError, match="failed"):
        build_pairs(manifest, tmp_path / "stop", workers=1, **fast)

    out = tmp_path / "pairs"
    result = build_pairs(manifest, out, workers=2, keep_going=True, **fast)
    status = dict(zip(result.table["sample_id"], result.table["status"], strict=True))
    assert status == {"GOOD": "done", "BROKEN": "failed", "OFF": "failed"}
    assert "broken.jpg" in result.failures["BROKEN"]
    assert "outside the image" in result.failures["OFF"]
    index = read_index(out)
    assert [s["sample_id"] for s in index["samples"]] == ["GOOD"]
    assert set(index["failed"]) == {"BROKEN", "OFF"}
    report = (out / "qc" / "report.md").read_text()
    assert "## Failed samples" in report and "**OFF**" in report
    assert "failed" in result.summary()
    # a rerun retries only the failed samples, and still reports them
    again = build_pairs(manifest, out, keep_going=True, **fast)
    assert dict(zip(again.table["sample_id"], again.table["status"], strict=True)) == {
        "GOOD": "skipped",
        "BROKEN": "failed",
        "OFF": "failed",
    }


def test_invalid_manifest_fails_before_any_work(tmp_path, mob_dir):
    manifest = _manifest(
        tmp_path,
        mob_dir,
        [
            ("A", "p", str(mob_dir / "MOB1.tsv.gz"), ""),
            ("A", "p", str(tmp_path / "nope.tsv"), ""),
        ],
    )
    with pytest.raises(ManifestError, match="line 3"):
        build_pairs(manifest, tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- depth
def test_store_records_depth_diagnostics(store):
    """Per shard (uns + _SUCCESS), summarised in index.json, tabled and drawn in the report."""
    index = read_index(store)
    assert index["pathway_depth_threshold"] == 0.5
    for s in index["samples"]:
        summary = s["pathway_depth"]
        assert summary["n_pathways"] == s["n_pathways"]
        assert 0.0 <= summary["median_abs_r_log_counts"] <= summary["max_abs_r_log_counts"] <= 1
        pairs = ad.read_h5ad(store / s["path"] / "pairs.h5ad")
        info = json.loads(pairs.uns["stalign_pairs"])
        stored = pd.DataFrame(info["pathway_scores"]["depth"]).set_index("pathway")
        fresh = st.tl.pathway_depth_diagnostics(pairs).set_index("pathway")
        for col in ("r_log_counts", "r2_log_counts", "r_log_genes", "r2_log_genes"):
            np.testing.assert_allclose(stored[col], fresh.loc[stored.index, col], atol=1e-5)
        med = float(fresh["r_log_counts"].abs().median())
        assert summary["median_abs_r_log_counts"] == pytest.approx(med, abs=1e-4)
    report = (store / "qc" / "report.md").read_text()
    assert "## Pathway scores and sequencing depth" in report
    assert "median abs r, log counts" in report and "![pathway scores vs depth]" in report
    assert (store / "qc" / "pathway_depth.png").stat().st_size > 10_000
    html = (store / "qc" / "report.html").read_text()
    assert html.count("<table") == 2  # samples + depth


def test_store_built_before_depth_diagnostics_is_reused_and_summarised(tmp_path, store):
    """Same fingerprint with the new parameters at their defaults: shards are kept as they are.

    A store written before this version has neither the new keys in build.json nor the
    diagnostics in _SUCCESS; the merge computes them from each shard's pairs.h5ad.
    """
    old = tmp_path / "pairs"
    shutil.copytree(store, old)
    build = json.loads((old / "build.json").read_text())
    for key in ("rarefy_depth", "rarefy_draws", "random_state"):
        build["params"].pop(key)
    # the fingerprint an older stalign computed: of the parameters it knew
    build["params_fingerprint"] = params_fingerprint(build["params"])
    (old / "build.json").write_text(json.dumps(build))
    for success in old.glob("samples/*/_SUCCESS"):
        rec = json.loads(success.read_text())
        rec.pop("pathway_depth")
        rec["params_fingerprint"] = build["params_fingerprint"]
        success.write_text(json.dumps(rec))
    manifest = read_manifest_from_build(build, tmp_path)
    result = build_pairs(manifest, old, **FAST)
    assert list(result.table["status"]) == ["skipped", "skipped"]
    new_index, ref_index = read_index(old), read_index(store)
    for a, b in zip(new_index["samples"], ref_index["samples"], strict=True):
        assert a["pathway_depth"] == pytest.approx(b["pathway_depth"], abs=1e-4)


def read_manifest_from_build(build: dict, tmp: Path) -> Path:
    """The manifest CSV of a build record (same rows, same paths)."""
    cols = HEADER.strip().split(",")
    rows = [",".join(str(r.get(c, "") or "") for c in cols) for r in build["samples"]]
    path = tmp / "manifest_from_build.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n")
    return path


def test_rarefied_build_drops_and_reports_spots_below_the_depth(tmp_path, mob_dir):
    manifest = _manifest(tmp_path, mob_dir, [("MOB3", "mouse2", str(mob_dir / "MOB3.tsv.gz"), "")])
    out = tmp_path / "pairs"
    build_pairs(manifest, out, **FAST, rarefy_depth=1200, rarefy_draws=2, random_state=3)
    index = read_index(out)
    s = index["samples"][0]
    spots = pd.read_csv(out / s["path"] / "spots.csv", index_col=0, keep_default_na=False)
    below = spots["reason"] == "below_rarefy_depth"
    assert s["dropped"]["below_rarefy_depth"] == below.sum() > 0
    assert (spots.loc[below, "total_counts"] < 1200).all()
    assert (spots.loc[spots["kept"], "total_counts"] >= 1200).all()
    assert 0.0 < s["pathway_depth"]["median_draw_agreement_r"] < 1.0
    pairs = ad.read_h5ad(out / s["path"] / "pairs.h5ad")
    assert not pairs.obsm["pathway_scores"].isna().any().any()
    info = json.loads(pairs.uns["stalign_pairs"])
    assert info["pathway_scores"]["params"]["rarefy_depth"] == 1200
    assert info["pathway_scores"]["rarefaction"]["draws"] == 2
    assert index["params"]["rarefy_depth"] == 1200 and index["params"]["random_state"] == 3
    report = (out / "qc" / "report.md").read_text()
    assert "on counts rarefied to 1200 per spot, 2 draws" in report
    assert "dropped below rarefy depth" in report and "r of 2 draws (median)" in report
    with pytest.raises(ValueError, match="other parameters"):  # a new fingerprint
        build_pairs(manifest, out, **FAST, rarefy_depth=1000)
    with pytest.raises(ValueError, match="rarefy_draws must be an integer >= 1"):
        build_pairs(manifest, tmp_path / "bad", **FAST, rarefy_depth=10, rarefy_draws=0)
