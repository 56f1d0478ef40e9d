"""build_pairs: the pathway scores (training targets) do not depend on the gene order."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from stalign import _keys
from stalign.pairs import build_pairs

# small patches, no QC report (index.json is not needed here): a few seconds per build
FAST = {"mpp": 9.4, "size_px": 32, "gene_sets": "hallmark", "progress": False, "report": False}
HEADER = "sample_id,patient_id,organ,species,platform,path,image,mpp,source,license\n"


def _one_section_manifest(root: Path, counts: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    p = root / "manifest.csv"
    row = f"MOB1,mouse1,olfactory_bulb,mus_musculus,legacy_st,{counts},,,test,MIT\n"
    p.write_text(HEADER + row)
    return p


def _shuffled_section(mob_dir: Path, root: Path, seed: int = 0) -> Path:
    """MOB1 with its gene columns in random order (image, alignment and genes linked)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("MOB1.jpg", "alignment_table_MOB1.tsv", "mouse_genes.tsv.gz"):
        (root / name).symlink_to(mob_dir / name)
    counts = pd.read_csv(mob_dir / "MOB1.tsv.gz", sep="\t", index_col=0)
    perm = np.random.default_rng(seed).permutation(counts.shape[1])
    assert not np.array_equal(perm, np.arange(counts.shape[1]))
    counts.iloc[:, perm].to_csv(root / "MOB1.tsv.gz", sep="\t")
    return root / "MOB1.tsv.gz"


def _scores(out: Path) -> pd.DataFrame:
    return ad.read_h5ad(out / "samples" / "MOB1" / "pairs.h5ad").obsm["pathway_scores"]


def test_shuffled_gene_columns_give_identical_pathway_scores(tmp_path, mob_dir):
    ref_out, shuf_out = tmp_path / "ref" / "pairs", tmp_path / "shuf" / "pairs"
    build_pairs(_one_section_manifest(tmp_path / "ref", mob_dir / "MOB1.tsv.gz"), ref_out, **FAST)
    shuffled = _shuffled_section(mob_dir, tmp_path / "shuf" / "data")
    build_pairs(_one_section_manifest(tmp_path / "shuf", shuffled), shuf_out, **FAST)

    ref, out = _scores(ref_out), _scores(shuf_out)
    assert ref.shape[0] > 100 and ref.shape[1] >= 30
    assert list(out.index) == list(ref.index)
    assert list(out.columns) == list(ref.columns)
    np.testing.assert_allclose(out.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-12)

    build = json.loads((ref_out / "build.json").read_text())
    assert build["params"]["ties"] == "average"
    pairs = ad.read_h5ad(ref_out / "samples" / "MOB1" / "pairs.h5ad")
    info = json.loads(pairs.uns[_keys.PAIRS_INFO])
    assert info["params"]["ties"] == "average"
    assert info["pathway_scores"]["params"]["ties"] == "average"


@pytest.mark.parametrize(
    "options",
    [
        {"method": "score_genes"},
        {"method": "ssgsea", "rarefy_depth": 1000, "rarefy_draws": 2, "random_state": 4},
    ],
    ids=["score_genes", "ssgsea-rarefied"],
)
def test_depth_options_give_identical_scores_whatever_the_gene_order(tmp_path, mob_dir, options):
    """score_genes' control-gene draw and rarefaction run over genes in a canonical order."""
    ref_out, shuf_out = tmp_path / "ref" / "pairs", tmp_path / "shuf" / "pairs"
    ref_manifest = _one_section_manifest(tmp_path / "ref", mob_dir / "MOB1.tsv.gz")
    build_pairs(ref_manifest, ref_out, **FAST, **options)
    shuffled = _shuffled_section(mob_dir, tmp_path / "shuf" / "data", seed=1)
    build_pairs(_one_section_manifest(tmp_path / "shuf", shuffled), shuf_out, **FAST, **options)
    ref, out = _scores(ref_out), _scores(shuf_out)
    assert ref.shape[0] > 100 and list(out.index) == list(ref.index)
    np.testing.assert_allclose(out.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-6)
    info = json.loads(
        ad.read_h5ad(ref_out / "samples" / "MOB1" / "pairs.h5ad").uns[_keys.PAIRS_INFO]
    )
    assert info["params"]["method"] == options["method"]


def test_tie_mode_is_a_build_pairs_argument_and_a_cli_flag(tmp_path, mob_dir):
    from stalign.cli import main

    manifest = _one_section_manifest(tmp_path, mob_dir / "MOB1.tsv.gz")
    out = tmp_path / "pairs"
    args = ["build-pairs", str(manifest), "--out", str(out), "--mpp", "9.4", "--size-px", "32"]
    assert main([*args, "--ties", "gseapy", "--no-progress"]) == 0
    assert json.loads((out / "build.json").read_text())["params"]["ties"] == "gseapy"
    info = json.loads(ad.read_h5ad(out / "samples" / "MOB1" / "pairs.h5ad").uns[_keys.PAIRS_INFO])
    assert info["pathway_scores"]["params"]["ties"] == "gseapy"
    with pytest.raises(ValueError, match="ties must be one of"):  # before any work
        build_pairs(manifest, tmp_path / "bad", ties="first", **FAST)
    assert not (tmp_path / "bad" / "build.json").exists()


def test_depth_options_are_cli_flags(tmp_path, mob_dir):
    from stalign.cli import main

    manifest = _one_section_manifest(tmp_path, mob_dir / "MOB1.tsv.gz")
    out = tmp_path / "pairs"
    args = ["build-pairs", str(manifest), "--out", str(out), "--mpp", "9.4", "--size-px", "32"]
    depth = ["--method", "score_genes", "--rarefy-depth", "900", "--rarefy-draws", "2"]
    assert main([*args, *depth, "--random-state", "3", "--no-progress"]) == 0
    params = json.loads((out / "build.json").read_text())["params"]
    assert params["method"] == "score_genes" and params["rarefy_depth"] == 900
    assert params["rarefy_draws"] == 2 and params["random_state"] == 3
    info = json.loads(ad.read_h5ad(out / "samples" / "MOB1" / "pairs.h5ad").uns[_keys.PAIRS_INFO])
    assert info["pathway_scores"]["params"]["random_state"] == 3
    assert info["pathway_scores"]["rarefaction"]["draws"] == 2
