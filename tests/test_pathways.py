"""stalign.tl.score_pathways: agreement with gseapy, methods, chunking, sources, errors."""

from __future__ import annotations

import logging
import re
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import stalign as st
from stalign.tl._genesets import load_gene_sets


@pytest.fixture(scope="module")
def mob150(mob_dir):
    """150 real MOB1 spots (mouse symbols + Ensembl ids, raw counts)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            a = st.io.read_legacy_st(mob_dir / "MOB1")
        finally:
            logging.disable(logging.NOTSET)
    return a[:150].copy()


def _gseapy_scores(a, sets, values="NES", **kwargs):
    import gseapy

    df = pd.DataFrame(
        a.X.toarray().T, index=a.var["gene_symbols"].str.upper().to_numpy(), columns=a.obs_names
    )
    res = gseapy.ssgsea(df, sets, min_size=5, max_size=100000, threads=1, **kwargs)
    return res.res2d.pivot(index="Name", columns="Term", values=values).astype(float)


def _score(a, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        st.tl.score_pathways(a, *args, **kwargs)
    return a.obsm[kwargs.get("key_added", "pathway_scores")]


# --------------------------------------------------------------------------- ssGSEA vs gseapy
# gseapy walks tied genes in column order: compare in ties="gseapy" mode (tie-free data
# and the default mode: tests/test_pathways_ties.py)
def test_ssgsea_matches_gseapy_on_mob(mob150):
    a = mob150.copy()
    ours = _score(a, "hallmark", method="ssgsea", ties="gseapy")
    assert ours.shape == (150, 40)  # 40 of 50 Hallmark sets have >= 5 genes in the panel
    ref = _gseapy_scores(a, load_gene_sets("hallmark")).loc[a.obs_names]
    assert set(ref.columns) == set(ours.columns)
    ref = ref[ours.columns]
    pearson = np.array([np.corrcoef(ours[c], ref[c])[0, 1] for c in ours.columns])
    max_abs = float(np.abs(ours.to_numpy() - ref.to_numpy()).max())
    print(f"ssGSEA vs gseapy: min Pearson {pearson.min():.8f}, max abs diff {max_abs:.3e}")
    assert pearson.min() >= 0.999
    assert max_abs < 1e-8


def test_ssgsea_raw_es_matches_gseapy(mob150):
    a = mob150[:60].copy()
    ours = _score(a, "hallmark", ssgsea_norm=False, ties="gseapy")
    ref = _gseapy_scores(a, load_gene_sets("hallmark"), values="ES").loc[a.obs_names]
    np.testing.assert_allclose(ours.to_numpy(), ref[ours.columns].to_numpy(), atol=1e-9)


@pytest.mark.parametrize(
    ("sample_norm_method", "correl_norm_type", "weight"),
    [
        ("log_rank", "rank", 0.25),
        ("log", "rank", 0.25),
        ("rank", "zscore", 1.0),
        ("rank", "rank", 0),
    ],
)
def test_ssgsea_normalisation_options_match_gseapy(
    mob150, sample_norm_method, correl_norm_type, weight
):
    a = mob150[:40].copy()
    kw = dict(
        sample_norm_method=sample_norm_method, correl_norm_type=correl_norm_type, weight=weight
    )
    ours = _score(a, "hallmark", ties="gseapy", **kw)
    ref = _gseapy_scores(a, load_gene_sets("hallmark"), **kw).loc[a.obs_names, ours.columns]
    np.testing.assert_allclose(ours.to_numpy(), ref.to_numpy(), atol=1e-7)


# --------------------------------------------------------------------------- chunking, determinism
@pytest.mark.parametrize("method", ["ssgsea", "aucell", "zscore"])
def test_chunking_dense_and_determinism(mob150, method):
    a = mob150[:90].copy()
    big = _score(a, "hallmark", method=method, chunk_size=1000).to_numpy()
    small = _score(a, "hallmark", method=method, chunk_size=7).to_numpy()
    np.testing.assert_allclose(small, big, rtol=1e-10, atol=1e-12)
    again = _score(a, "hallmark", method=method, chunk_size=1000).to_numpy()
    np.testing.assert_array_equal(again, big)
    dense = a.copy()
    dense.X = a.X.toarray()
    np.testing.assert_allclose(
        _score(dense, "hallmark", method=method).to_numpy(), big, rtol=1e-10, atol=1e-12
    )
    assert np.isfinite(big).all()


@pytest.mark.parametrize("method", ["ssgsea", "aucell"])
def test_count_fast_path_equals_generic_sort(mob150, method):
    """Counts are ranked via a lookup table, other values by a sort: same ranks, same scores."""
    a = mob150[:40].copy()
    ref = _score(a.copy(), "hallmark", method=method).to_numpy()
    for scale in (0.5, 1e5):  # x.5 values / values beyond the lookup table
        b = a.copy()
        b.X = a.X.astype(np.float64) * scale
        out = _score(b, "hallmark", method=method).to_numpy()
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_backed_anndata_equals_in_memory(mob150, tmp_path):
    a = mob150[:50].copy()
    ref = _score(a.copy(), "hallmark", method="aucell").to_numpy()
    path = tmp_path / "mob.h5ad"
    a.write_h5ad(path)
    b = ad.read_h5ad(path, backed="r")
    out = _score(b, "hallmark", method="aucell", chunk_size=16).to_numpy()
    np.testing.assert_allclose(out, ref, atol=1e-12)
    b.file.close()


# --------------------------------------------------------------------------- AUCell, z-score refs
def _aucell_reference(x: np.ndarray, sets: dict[str, list[int]], max_rank: int) -> np.ndarray:
    """Definition-level AUC: per spot, per gene, mean of (K - r)+ over its tie block."""
    out = np.zeros((x.shape[0], len(sets)))
    for i, row in enumerate(x):
        order = np.argsort(-row, kind="stable")
        credit = np.zeros(row.size)
        r = 0
        while r < row.size:  # walk tie blocks in rank order
            s = r
            while r < row.size and row[order[r]] == row[order[s]]:
                r += 1
            block = [max(max_rank - q, 0) for q in range(s, r)]
            credit[order[s:r]] = np.mean(block)
        for j, genes in enumerate(sets.values()):
            best = sum(max(max_rank - q, 0) for q in range(len(genes)))
            out[i, j] = credit[genes].sum() / best
    return out


def test_aucell_matches_definition_with_ties(mob150):
    a = mob150[:30, :300].copy()  # real counts: many ties (0, 1, 2 ...)
    rng = np.random.default_rng(0)
    symbols = a.var["gene_symbols"].to_numpy()
    idx = {f"S{j}": sorted(rng.choice(300, size=8 + 3 * j, replace=False)) for j in range(5)}
    sets = {k: list(symbols[v]) for k, v in idx.items()}
    ours = _score(a, sets, method="aucell", auc_max_rank=40).to_numpy()
    ref = _aucell_reference(a.X.toarray(), idx, 40)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_aucell_without_ties_is_recovery_auc():
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, size=(12, 200))
    genes = [f"G{i}" for i in range(200)]
    a = ad.AnnData(x, var=pd.DataFrame(index=genes))
    sets = {"A": genes[:20], "B": genes[50:65]}
    ours = _score(a, sets, method="aucell", auc_max_rank=30).to_numpy()
    for i in range(12):
        rank = np.empty(200, int)
        rank[np.argsort(-x[i])] = np.arange(200)
        for j, members in enumerate([range(20), range(50, 65)]):
            hits = np.sort(rank[list(members)])
            hits = hits[hits < 30]
            # area under the recovery curve (hits so far vs rank) up to rank 30
            area = sum(30 - h for h in hits)
            best = sum(30 - q for q in range(len(members)))
            assert ours[i, j] == pytest.approx(area / best, abs=1e-12)


def test_zscore_matches_scanpy(mob150):
    import scanpy as sc

    a = mob150[:80].copy()
    ours = _score(a, "hallmark", method="zscore")
    ref = a.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    sc.pp.scale(ref)
    z = np.asarray(ref.X)
    genes = a.uns["pathway_scores"]["genes"]
    for name in ours.columns:
        cols = a.var_names.get_indexer(genes[name].split(";"))
        np.testing.assert_allclose(ours[name], z[:, cols].mean(axis=1), atol=1e-5)


# --------------------------------------------------------------------------- outputs, sources
def test_outputs_coverage_and_h5ad_roundtrip(mob150, tmp_path):
    a = mob150[:20].copy()
    with pytest.warns(UserWarning, match="dropped 10 of 50 gene sets") as rec:
        st.tl.score_pathways(a, "hallmark", key_added="hm")
    assert len([w for w in rec if "dropped" in str(w.message)]) == 1
    msg = str(rec[0].message)
    dropped = re.findall(r"HALLMARK_\w+ \((\d+)/(\d+)\)", msg)  # each named, found/total
    assert len(dropped) == 10 and all(int(found) < 5 for found, _ in dropped), msg
    df = a.obsm["hm"]
    assert isinstance(df, pd.DataFrame)
    assert df.index.equals(a.obs_names)
    uns = a.uns["hm"]
    cov = pd.DataFrame(uns["coverage"]).set_index("pathway")
    assert len(cov) == 50
    assert cov["kept"].sum() == df.shape[1] == 40
    assert (cov.loc[~cov["kept"], "n_found"] < 5).all()
    row = cov.loc["HALLMARK_HYPOXIA"]
    assert row.n_total == 200 and 0 < row.n_found < 200
    assert len(row.missing.split(";")) == row.n_total - row.n_found
    assert uns["params"]["method"] == "ssgsea" and uns["params"]["gene_column"] == "gene_symbols"
    assert uns["params"]["ties"] == "average"
    path = tmp_path / "out.h5ad"
    a.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_allclose(np.asarray(back.obsm["hm"]), df.to_numpy())


def test_copy_returns_new_object(mob150):
    a = mob150[:10].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = st.tl.score_pathways(a, "hallmark", method="aucell", copy=True)
    assert "pathway_scores" in out.obsm and "pathway_scores" not in a.obsm


@pytest.mark.parametrize(("name", "n_sets"), [("reactome", 1615), ("wikipathways", 664)])
def test_bundled_collections(mob150, name, n_sets):
    assert len(load_gene_sets(name)) == n_sets
    a = mob150[:15].copy()
    df = _score(a, name, method="zscore", min_genes=10)
    cov = a.uns["pathway_scores"]["coverage"]
    assert len(cov["pathway"]) == n_sets
    assert 0 < df.shape[1] == int(np.sum(cov["kept"]))


def test_gmt_path_and_dict_sources(mob150, tmp_path):
    a = mob150[:15].copy()
    sym = list(a.var["gene_symbols"][:40])
    gmt = tmp_path / "mine.gmt"
    gmt.write_text(f"SET_A\tdesc\t{chr(9).join(sym[:10])}\nSET_B\tx\t{chr(9).join(sym[20:40])}\n")
    by_path = _score(a, str(gmt), method="aucell")
    by_dict = _score(a, {"SET_A": sym[:10], "SET_B": sym[20:40]}, method="aucell")
    assert list(by_path.columns) == ["SET_A", "SET_B"]
    pd.testing.assert_frame_equal(by_path, by_dict)


def test_gseapy_library_offline_error(mob150, monkeypatch):
    import gseapy

    def offline(*args, **kwargs):
        raise OSError("Failed to establish a new connection")

    monkeypatch.setattr(gseapy, "get_library", offline)
    with pytest.raises(ConnectionError, match=r"local|\.gmt"):
        st.tl.score_pathways(mob150[:5].copy(), "enrichr:GO_Biological_Process_2023")


# --------------------------------------------------------------------------- smoothing
def test_spatial_smoothing_is_neighbour_mean(mob150):
    import squidpy as sq

    a = mob150[:60].copy()
    raw = _score(a, "hallmark", method="zscore").to_numpy()
    sm = _score(a, "hallmark", method="zscore", smooth=True, smooth_kwargs={"n_neighs": 4})
    g = a.copy()
    sq.gr.spatial_neighbors(g, coord_type="generic", n_neighs=4)
    conn = g.obsp["spatial_connectivities"].toarray() != 0
    for i in (0, 17, 59):
        nb = np.flatnonzero(conn[i])
        expected = raw[[i, *nb]].mean(axis=0)
        np.testing.assert_allclose(sm.to_numpy()[i], expected, atol=1e-12)
    assert a.uns["pathway_scores"]["params"]["smooth"] is True
    assert "spatial_connectivities" not in a.obsp


# --------------------------------------------------------------------------- errors
def test_errors(mob150):
    a = mob150[:10].copy()
    with pytest.raises(ValueError, match="method must be one of"):
        st.tl.score_pathways(a, method="gsva")
    with pytest.raises(KeyError, match="layer='nope'"):
        st.tl.score_pathways(a, layer="nope")
    with pytest.raises(ValueError, match="sample_norm_method"):
        st.tl.score_pathways(a, sample_norm_method="quantile")
    with pytest.raises(ValueError, match="ties must be one of"):
        st.tl.score_pathways(a, ties="first")
    with pytest.raises(ValueError, match="method='ssgsea' only"):
        st.tl.score_pathways(a, method="aucell", ties="gseapy")
    with pytest.raises(ValueError, match="chunk_size"):
        st.tl.score_pathways(a, chunk_size=0)
    with pytest.raises(ValueError, match="no gene set has at least min_genes=500"):
        st.tl.score_pathways(a, min_genes=500)
    with pytest.raises(FileNotFoundError, match=r"missing\.gmt"):
        st.tl.score_pathways(a, "/nonexistent/missing.gmt")
    bad = a.copy()
    bad.X = bad.X.toarray()
    bad.X[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        st.tl.score_pathways(bad, method="aucell")
    neg = a.copy()
    neg.X = sp.csr_matrix(-neg.X.toarray())
    with pytest.raises(ValueError, match="normalize=False"):
        st.tl.score_pathways(neg, method="zscore")
    with pytest.raises(ValueError, match="method='ulm' with normalize=True"):
        st.tl.score_pathways(neg, method="ulm")


def test_error_when_ensembl_only(mob150):
    a = mob150[:10].copy()
    a.var_names = a.var["gene_ids"].to_numpy()
    a.var = a.var.drop(columns=["gene_symbols", "gene_ids"])
    with pytest.raises(ValueError, match=r"look like Ensembl ids.*gene_symbols"):
        st.tl.score_pathways(a, "hallmark")
