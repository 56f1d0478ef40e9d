"""`stalign evaluate` end to end on a small real MOB pairs store built in the test."""

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stalign.cli import main

MANIFEST_COLS = "sample_id,patient_id,organ,species,platform,path,image,mpp,source,license"


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, mob_dir):
    from stalign.pairs import build_pairs, merge_pairs

    root = tmp_path_factory.mktemp("evaluate")
    manifest = root / "manifest.csv"
    rows = [
        f"{s},{p},olfactory_bulb,mus_musculus,legacy_st,{mob_dir / f'{s}.tsv.gz'},"
        f"{mob_dir / f'{s}.jpg'},,test,MIT"
        for s, p in (("MOB1", "mouse1"), ("MOB3", "mouse2"))
    ]
    manifest.write_text("\n".join([MANIFEST_COLS, *rows]) + "\n")
    store = root / "pairs"
    # native resolution (~4.7 µm/px), 24-px patches: small and fast
    build_pairs(manifest, store, mpp=4.7, size_px=24, progress=False, report=False)
    merge_pairs(store, report=False)  # index.json without the QC report (not under test)
    return store


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    import torch

    from stalign import models

    torch.manual_seed(3)
    enc = models.create_encoder("vit_tiny_patch16_224", img_size=32, depth=2)
    return models.export_timm(enc, tmp_path_factory.mktemp("export") / "aligned")


def test_evaluate_cli_writes_report_with_figures(small_store, tiny_export, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(
        [
            "evaluate",
            str(small_store),
            "--encoder",
            f"aligned={tiny_export}",
            "--out",
            str(out),
            "--references",
            "pixels",
            "--n-markers",
            "0",
            "1",
            "--image-size",
            "32",
            "--seeds",
            "0",
            "--mil-epochs",
            "5",
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "report:" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    for fig in (
        "scatter_genes",
        "maps_genes",
        "scatter_pathways",
        "maps_pathways",
        "retrieval_curves",
    ):
        png = out / "figures" / f"{fig}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
        assert f"figures/{fig}.png" in report
    table = pd.read_csv(out / "summary.csv")
    for feats in ("8×8 pixels", "aligned"):
        sub = table[table["features"] == feats]
        assert {"genes", "pathways", "retrieval"} <= set(sub["task"])
        g = sub[(sub["task"] == "genes")]["mean"].iloc[0]
        assert np.isfinite(g) and -1 <= g <= 1
    assert (table["features"] == "chance").any()
    assert table["task"].str.startswith("marker").any()
    # leave-one-patient-out: 2 folds for a deterministic feature set
    runs = pd.read_csv(out / "runs.csv")
    gen = runs[(runs["task"] == "genes") & (runs["features"] == "aligned")]
    assert sorted(gen["fold"]) == ["mouse1", "mouse2"]
    with open(out / "per_target_genes.csv") as fh:
        assert len(list(csv.reader(fh))) == 51  # header + 50 HEST genes
    assert "## Verdict" in report and "aligned" in report


def test_evaluate_errors(small_store, tmp_path):
    from stalign.bench import evaluate

    with pytest.raises(ValueError, match="references"):
        evaluate(small_store, [], out=tmp_path, references=("colour",))
    with pytest.raises(ValueError, match="probes"):
        evaluate(small_store, [], out=tmp_path, probes=("svm",))
    with pytest.raises(FileNotFoundError, match="not a finished pairs store"):
        evaluate(Path(tmp_path) / "nowhere", [], out=tmp_path, references=("histogram",))
