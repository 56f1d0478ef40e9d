"""Sequencing depth and pathway scores: diagnostics, rarefaction, scanpy's score_genes."""

from __future__ import annotations

import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

import stalign as st
from stalign import _keys
from stalign.tl._rarefy import canonical_gene_rank, rarefy_chunk, spot_keys


def _counts(n_spots=80, n_genes=1500, seed=0, depth_spread=1.0) -> ad.AnnData:
    """Poisson counts: library size varying tenfold (or more), 3 co-expressed programmes.

    Genes are named out of order; 1,500 genes make 60 a bin of score_genes, more than its
    50 control genes, so the draw matters.
    """
    rng = np.random.default_rng(seed)
    lam = rng.gamma(0.3, 0.3, size=n_genes)
    size = np.exp(rng.uniform(0, depth_spread * np.log(10), size=n_spots))
    programme = rng.integers(0, 4, size=n_genes)  # 3 programmes, and genes in none
    activity = np.exp(rng.normal(size=(n_spots, 3)))[:, np.minimum(programme, 2)]
    x = rng.poisson(lam * size[:, None] * np.where(programme < 3, activity, 1.0))
    names = [f"G{i:04d}" for i in rng.permutation(n_genes)]
    return ad.AnnData(
        sp.csr_matrix(x.astype(np.float64)),
        obs=pd.DataFrame(index=[f"s{i}" for i in range(n_spots)]),
        var=pd.DataFrame(index=names, data={"programme": programme}),
    )


def _sets(a: ad.AnnData, n_sets=6, seed=1) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    names = list(a.var_names)
    return {f"S{j}": list(rng.choice(names, size=10 + 5 * j, replace=False)) for j in range(n_sets)}


def _programme_sets(a: ad.AnnData) -> dict[str, list[str]]:
    """The genes of each programme (biology independent of depth)."""
    prog = a.var["programme"].to_numpy()
    return {f"P{j}": list(a.var_names[prog == j][:40]) for j in range(3)}


def _depth_quantile(a: ad.AnnData, q: float) -> int:
    return int(np.quantile(np.asarray(a.X.sum(axis=1)).ravel(), q))


def _rare_gene_sets(a: ad.AnnData) -> dict[str, list[str]]:
    """Sets of rarely detected genes: their ssGSEA rank rises with depth."""
    order = np.argsort(np.asarray(a.X.mean(axis=0)).ravel(), kind="stable")
    return {f"L{j}": list(a.var_names[order[300 + 40 * j : 340 + 40 * j]]) for j in range(4)}


def _score(a, sets, **kw) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        st.tl.score_pathways(a, sets, progress=False, **kw)
    return a.obsm["pathway_scores"]


# --------------------------------------------------------------------------- score_genes
@pytest.mark.parametrize("seed", [0, 7])
def test_score_genes_equals_scanpy_on_sorted_genes(seed):
    a = _counts()
    sets = _sets(a)
    ours = _score(a.copy(), sets, method="score_genes", random_state=seed)

    ref = a[:, np.argsort(np.asarray(a.var_names))].copy()  # the canonical order
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    for name, genes in sets.items():
        sc.tl.score_genes(ref, sorted(genes), random_state=seed, score_name="ref")
        np.testing.assert_allclose(ours[name], ref.obs["ref"], rtol=0, atol=1e-6)
    # the scores depend on the draw (so the comparison above is not vacuous)
    other = _score(a.copy(), sets, method="score_genes", random_state=seed + 1)
    assert np.abs(other.to_numpy() - ours.to_numpy()).max() > 1e-3


def test_score_genes_on_input_order_would_differ():
    """scanpy on the input's column order draws other control genes: the sort matters."""
    a = _counts()
    sets = _sets(a)
    ours = _score(a.copy(), sets, method="score_genes")
    ref = a.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    name, genes = next(iter(sets.items()))
    sc.tl.score_genes(ref, genes, random_state=0, score_name="ref")
    assert np.abs(ours[name].to_numpy() - ref.obs["ref"].to_numpy()).max() > 1e-3


def test_score_genes_keeps_numpy_global_random_state():
    """scanpy seeds numpy's legacy global state; score_pathways puts it back."""
    a = _counts()
    np.random.seed(123)  # noqa: NPY002
    expected = np.random.random_sample()  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    _score(a, _sets(a), method="score_genes", random_state=5)
    assert np.random.random_sample() == expected  # noqa: NPY002
    assert a.uns["pathway_scores"]["params"]["gene_order"] == "sorted by var_names"


# --------------------------------------------------------------------------- rarefaction
def test_rarefy_chunk_keeps_depth_and_is_a_subsample():
    a = _counts()
    x = a.X.tocsr()
    ok = np.asarray(x.sum(axis=1)).ravel() >= 300
    sub = x[np.flatnonzero(ok)]
    rank = canonical_gene_rank(a.var_names, what="test")
    keys = spot_keys(a.obs_names[ok])
    r = rarefy_chunk(sub, 300, gene_rank=rank, keys=keys, random_state=0, draw=0)
    np.testing.assert_array_equal(np.asarray(r.sum(axis=1)).ravel(), 300)
    assert (r.toarray() <= sub.toarray()).all() and (r.toarray() >= 0).all()
    again = rarefy_chunk(sub, 300, gene_rank=rank, keys=keys, random_state=0, draw=0)
    assert (again != r).nnz == 0  # deterministic
    other = rarefy_chunk(sub, 300, gene_rank=rank, keys=keys, random_state=1, draw=0)
    assert (other != r).nnz > 0  # seeded


def test_rarefied_scores_do_not_depend_on_other_spots_or_their_order():
    a = _counts()
    sets = _sets(a)
    kw = {"method": "ssgsea", "rarefy_depth": 300, "ssgsea_norm": False}
    ref = _score(a.copy(), sets, **kw)
    order = np.random.default_rng(3).permutation(a.n_obs)[:50]
    sub = _score(a[order].copy(), sets, **kw)
    np.testing.assert_allclose(sub.to_numpy(), ref.iloc[order].to_numpy(), rtol=0, atol=1e-12)


def test_spots_below_the_depth_are_nan_and_counted(caplog):
    a = _counts()
    totals = np.asarray(a.X.sum(axis=1)).ravel()
    depth = int(np.quantile(totals, 0.25))
    with caplog.at_level(logging.INFO, logger="stalign.tl._pathways"):
        scores = _score(a, _sets(a), rarefy_depth=depth)
    below = totals < depth
    assert below.sum() > 5
    np.testing.assert_array_equal(scores.isna().all(axis=1).to_numpy(), below)
    assert not scores[~below].isna().any().any()
    rec = a.uns["pathway_scores"]["rarefaction"]
    assert rec["n_spots_below"] == below.sum() and rec["depth"] == depth
    assert f"{below.sum()} of {a.n_obs} spots have fewer counts" in caplog.text
    assert a.uns["pathway_scores"]["params"]["rarefy_depth"] == depth


def test_several_draws_are_averaged_and_their_agreement_recorded():
    a = _counts(n_spots=150, depth_spread=1.5)
    sets = _programme_sets(a)
    kw = {"method": "zscore", "rarefy_depth": _depth_quantile(a, 0.1)}
    one = _score(a.copy(), sets, **kw).to_numpy()
    two = _score(a, sets, **kw, rarefy_draws=2).to_numpy()
    assert np.nanmax(np.abs(two - one)) > 1e-6  # the second draw moved the mean
    rec = a.uns["pathway_scores"]["rarefaction"]
    assert rec["draws"] == 2 and len(rec["draw_agreement_r"]) == len(sets)
    assert 0.5 < rec["median_draw_agreement_r"] < 1.0  # the programmes survive the draw


def test_rarefaction_removes_depth_from_a_depth_driven_score():
    """ssGSEA of rarely detected genes follows depth; rarefied, the same score barely does."""
    a = _counts(n_spots=150, depth_spread=1.5)
    sets = _rare_gene_sets(a)
    _score(a, sets, method="ssgsea")
    raw = pd.DataFrame(a.uns["pathway_scores"]["depth"])["r_log_counts"].abs().median()
    depth = _depth_quantile(a, 0.1)
    _score(a, sets, method="ssgsea", rarefy_depth=depth)
    rare = pd.DataFrame(a.uns["pathway_scores"]["depth"])["r_log_counts"].abs().median()
    assert raw > 0.8 and rare < 0.3


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rarefy_depth": 0}, "rarefy_depth must be an integer >= 1"),
        ({"rarefy_depth": 100, "rarefy_draws": 0}, "rarefy_draws must be an integer >= 1"),
        ({"rarefy_depth": 10**9}, "no spot has that many counts"),
        ({"method": "score_genes", "ctrl_size": 0}, "ctrl_size must be an integer >= 1"),
        ({"random_state": -1}, "random_state must be an integer >= 0"),
    ],
)
def test_bad_depth_arguments_are_refused(kw, match):
    a = _counts()
    with pytest.raises(ValueError, match=match):
        _score(a, _sets(a), **kw)


def test_rarefaction_needs_integer_counts_and_unique_genes():
    a = _counts()
    b = a.copy()
    b.X = b.X * 0.5
    with pytest.raises(ValueError, match="raw integer counts"):
        _score(b, _sets(a), rarefy_depth=50)
    c = a.copy()
    c.var_names = ["G0"] * 2 + list(c.var_names[2:])
    with pytest.raises(ValueError, match="unique var_names"):
        _score(c, {"S": list(c.var_names[2:20])}, rarefy_depth=50)


# --------------------------------------------------------------------------- diagnostics
def _planted(n=200, seed=0) -> ad.AnnData:
    """Counts plus scores: one a cubic of log depth, one independent of depth."""
    a = _counts(n_spots=n, seed=seed)
    total = np.asarray(a.X.sum(axis=1)).ravel()
    ld = np.log(total)
    rng = np.random.default_rng(seed)
    a.obsm["pathway_scores"] = pd.DataFrame(
        {"depth": (ld - ld.mean()) ** 3 + 0.01 * rng.normal(size=n), "noise": rng.normal(size=n)},
        index=a.obs_names,
    )
    a.obs["section"] = np.where(np.arange(n) < n // 2, "A", "B")
    return a


def test_diagnostics_separate_a_depth_score_from_an_independent_one():
    a = _planted()
    t = st.tl.pathway_depth_diagnostics(a).set_index("pathway")
    assert t.loc["depth", "r2_log_counts"] > 0.99  # a cubic of log depth: R² ≈ 1
    assert t.loc["depth", "r_log_counts"] > 0.7
    assert abs(t.loc["noise", "r_log_counts"]) < 0.2 and t.loc["noise", "r2_log_counts"] < 0.1
    assert t.loc["depth", "r_log_genes"] > 0.5  # detected genes follow depth too
    assert (t["n_spots"] == a.n_obs).all()


def test_diagnostics_per_section():
    a = _planted()
    t = st.tl.pathway_depth_diagnostics(a, groupby="section")
    assert list(t["section"].unique()) == ["A", "B"]
    assert (t["n_spots"] == a.n_obs // 2).all() and len(t) == 4
    one = st.tl.pathway_depth_diagnostics(a[a.obs["section"] == "B"].copy()).set_index("pathway")
    mine = t[t["section"] == "B"].set_index("pathway")
    np.testing.assert_allclose(mine["r_log_counts"], one["r_log_counts"], rtol=0, atol=1e-12)
    with pytest.raises(KeyError, match="groupby='nope'"):
        st.tl.pathway_depth_diagnostics(a, groupby="nope")
    with pytest.raises(KeyError, match=r"run stalign\.tl\.score_pathways first"):
        st.tl.pathway_depth_diagnostics(a, key="other")


def test_score_pathways_records_diagnostics_and_warns_when_depth_driven(caplog):
    a = _counts(n_spots=150, depth_spread=1.5)
    a.uns[_keys.STALIGN] = {_keys.LIBRARY_ID: "sec1"}
    with caplog.at_level(logging.WARNING, logger="stalign.tl._pathway_depth"):
        _score(a, _rare_gene_sets(a), method="ssgsea")
    rec = pd.DataFrame(a.uns["pathway_scores"][_keys.PATHWAY_DEPTH]).set_index("pathway")
    assert list(rec.index) == list(a.obsm["pathway_scores"].columns)
    expected = st.tl.pathway_depth_diagnostics(a).set_index("pathway")
    np.testing.assert_allclose(rec["r_log_counts"], expected["r_log_counts"], atol=1e-12)
    warned = [r for r in caplog.records if "follow sequencing depth" in r.getMessage()]
    assert len(warned) == 1 and "sec1" in warned[0].getMessage()
    assert "ssgsea" in warned[0].getMessage()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stalign.tl._pathway_depth"):
        _score(a, _rare_gene_sets(a), rarefy_depth=_depth_quantile(a, 0.1))
    assert "follow sequencing depth" not in caplog.text
    a2 = _counts()
    _score(a2, _sets(a2), depth_diagnostics=False)
    assert _keys.PATHWAY_DEPTH not in a2.uns["pathway_scores"]


def test_depth_record_writes_to_h5ad(tmp_path):
    a = _counts()
    _score(a, _sets(a), rarefy_depth=200, rarefy_draws=2)
    a.write_h5ad(tmp_path / "a.h5ad")
    b = ad.read_h5ad(tmp_path / "a.h5ad")
    got = pd.DataFrame(b.uns["pathway_scores"]["depth"])
    assert set(got.columns) >= {"pathway", "r_log_counts", "r2_log_genes", "n_spots"}
    assert b.uns["pathway_scores"]["rarefaction"]["draws"] == 2


def test_scaled_input_is_scored_without_diagnostics():
    """zscore on already scaled values (negatives): no library size, so no diagnostics."""
    a = _counts()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.scale(a)
    _score(a, _sets(a), method="zscore", normalize=False)
    assert a.obsm["pathway_scores"].notna().all().all()
    assert _keys.PATHWAY_DEPTH not in a.uns["pathway_scores"]
    with pytest.raises(ValueError, match="need raw counts"):
        st.tl.pathway_depth_diagnostics(a)


def test_smoothing_skips_spots_below_the_depth():
    a = _counts()
    n = a.n_obs
    chain = sp.diags([np.ones(n - 1), np.ones(n - 1)], [-1, 1], format="csr")  # a line graph
    a.obsp["spatial_connectivities"] = chain
    depth = _depth_quantile(a, 0.25)
    plain = _score(a.copy(), _sets(a), method="zscore", rarefy_depth=depth).to_numpy()
    smooth = _score(a, _sets(a), method="zscore", rarefy_depth=depth, smooth=True).to_numpy()
    below = np.isnan(plain).all(axis=1)
    np.testing.assert_array_equal(np.isnan(smooth).all(axis=1), below)
    i = next(i for i in range(1, n - 1) if not below[i - 1 : i + 2].any())
    np.testing.assert_allclose(smooth[i], plain[i - 1 : i + 2].mean(axis=0), atol=1e-12)
    j = next(i for i in range(1, n - 1) if below[i - 1] and not below[i] and not below[i + 1])
    np.testing.assert_allclose(smooth[j], plain[j : j + 2].mean(axis=0), atol=1e-12)
