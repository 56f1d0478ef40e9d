"""Pathway scores are a function of the values, not of the gene (column) order.

On count data most genes of a spot tie (at 0, 1, 2 …). ssGSEA as gseapy computes it
walks tied genes in column order; ``ties="average"`` (the default) gives them the mean
rank of their tie. These tests check the definition (brute force over all orders of
the tied genes), invariance under column permutations for every method, agreement
with gseapy on tie-free data, and the all-zero spot.
"""

from __future__ import annotations

import itertools
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import rankdata

import stalign as st

SSGSEA_OPTIONS = [
    ("rank", "rank", 0.25),
    ("log_rank", "rank", 0.25),
    ("log", "rank", 0.25),
    ("custom", "rank", 1.0),
    ("rank", "zscore", 1.0),
]


def _score(a, gene_sets, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        st.tl.score_pathways(a, gene_sets, progress=False, **kwargs)
    return a.obsm["pathway_scores"]


def _adata(x, names=None) -> ad.AnnData:
    names = names if names is not None else [f"G{i}" for i in range(x.shape[1])]
    return ad.AnnData(
        sp.csr_matrix(np.asarray(x, dtype=np.float64)),
        obs=pd.DataFrame(index=[f"s{i}" for i in range(x.shape[0])]),
        var=pd.DataFrame(index=names),
    )


# --------------------------------------------------------------------------- reference
def _metric(row, sample_norm, correl):
    """gseapy's per-gene ranking metric of one spot (values in column order)."""
    n = row.size
    if sample_norm == "rank":
        m = 10000.0 * rankdata(row, method="average") / n
    elif sample_norm == "log_rank":
        m = np.log(10000.0 * rankdata(row, method="average") / n + np.e)
    elif sample_norm == "log":
        m = np.log(np.clip(row, 1.0, None) + np.e)
    else:
        m = row.astype(float)
    if correl == "zscore":  # all genes tie: 0/0, the score is undefined
        m = (m - m.mean()) / m.std() if np.ptp(m) > 0 else np.full(n, np.nan)
    return m


def _running_sum_es(metric, members, order_desc, weight):
    """Sum of the running enrichment score along ``order_desc`` (highest metric first)."""
    n, k = metric.size, len(members)
    w = np.abs(metric) ** weight
    total = w[members].sum()
    if not np.isfinite(total) or total == 0:
        return np.nan  # hit increments w / total undefined
    hit = np.zeros(n, bool)
    hit[members] = True
    running, es = 0.0, 0.0
    for g in order_desc:
        running += w[g] / total if hit[g] else -1.0 / (n - k)
        es += running
    return es


def _tie_orders(metric):
    """Every order of the genes by descending metric (all orders within each tie)."""
    groups = [np.flatnonzero(metric == v) for v in np.unique(metric)[::-1]]
    for perms in itertools.product(*(itertools.permutations(g) for g in groups)):
        yield [g for p in perms for g in p]


TINY = np.array(
    [
        [0, 0, 0, 1, 1, 2, 0],
        [3, 0, 1, 1, 0, 0, 1],
        [0.5, 0, 2, 1, 0.3, 3, 0],  # 'log' clips values below 1: more ties
        [0, 0, 4, 0, 0, 0, 0],
        [-1, 0, 2, -1, 0, 0, 3],  # negatives (normalised input) rank below the zeros
        [0, 0, 0, 0, 0, 0, 0],  # all genes tie: 7! orders
    ]
)
TINY_SETS = {"S": [1, 3, 4, 6], "T": [0, 2, 5]}


@pytest.mark.parametrize(("sample_norm", "correl", "weight"), SSGSEA_OPTIONS)
def test_average_ties_is_mean_over_all_orders_of_tied_genes(sample_norm, correl, weight):
    """Brute force: the tie-aware score equals the mean ES over every order of the ties."""
    a = _adata(TINY)
    sets = {k: [f"G{i}" for i in v] for k, v in TINY_SETS.items()}
    kw = dict(
        method="ssgsea", sample_norm_method=sample_norm, correl_norm_type=correl, weight=weight,
        ssgsea_norm=False, min_genes=1,
    )  # fmt: skip
    avg = _score(a.copy(), sets, ties="average", **kw)[list(TINY_SETS)].to_numpy()
    first = _score(a.copy(), sets, ties="gseapy", **kw)[list(TINY_SETS)].to_numpy()
    n_checked = 0
    for i, row in enumerate(TINY):
        metric = _metric(row, sample_norm, correl)
        # gseapy mode: descending order = stable ascending sort reversed (later columns first)
        gseapy_order = np.argsort(metric, kind="stable")[::-1]
        for j, members in enumerate(TINY_SETS.values()):
            ref = _running_sum_es(metric, members, gseapy_order, weight)
            if np.isnan(ref):  # all hit weights 0: gseapy's score is 0/0
                continue
            es = [_running_sum_es(metric, members, o, weight) for o in _tie_orders(metric)]
            assert first[i, j] == pytest.approx(ref, abs=1e-9)
            assert avg[i, j] == pytest.approx(np.mean(es), abs=1e-9)
            n_checked += 1
    assert n_checked >= 8
    assert np.allclose(avg[-1], 0.0, atol=1e-12)  # the all-zero spot, every option


def test_running_sum_reference_matches_gseapy():
    """The brute-force reference above is gseapy's definition (no ties: one order)."""
    import gseapy

    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, size=(4, 60)) + 1.5
    genes = [f"G{i}" for i in range(60)]
    sets = {"S": genes[:12], "T": genes[30:41]}
    df = pd.DataFrame(x.T, index=genes, columns=[f"s{i}" for i in range(4)])
    res = gseapy.ssgsea(df, sets, min_size=5, threads=1, weight=0.25)
    ref = res.res2d.pivot(index="Name", columns="Term", values="ES").astype(float)
    for i in range(4):
        metric = _metric(x[i], "rank", "rank")
        order = np.argsort(-metric)
        for name, members in (("S", range(12)), ("T", range(30, 41))):
            es = _running_sum_es(metric, list(members), order, 0.25)
            assert es == pytest.approx(ref.loc[f"s{i}", name], abs=1e-9)


# --------------------------------------------------------------------------- tie-free data
@pytest.mark.parametrize(("sample_norm", "correl", "weight"), SSGSEA_OPTIONS)
def test_both_tie_modes_match_gseapy_without_ties(sample_norm, correl, weight):
    import gseapy

    rng = np.random.default_rng(4)
    x = rng.gamma(2.0, size=(10, 300)) + 1.5  # no ties, no value clipped by 'log'
    genes = [f"G{i}" for i in range(300)]
    sets = {f"S{j}": list(rng.choice(genes, size=10 + 7 * j, replace=False)) for j in range(4)}
    kw = dict(sample_norm_method=sample_norm, correl_norm_type=correl, weight=weight)
    df = pd.DataFrame(x.T, index=genes, columns=[f"s{i}" for i in range(10)])
    res = gseapy.ssgsea(df, sets, min_size=5, threads=1, **kw)
    ref = res.res2d.pivot(index="Name", columns="Term", values="ES").astype(float)
    ref = ref.loc[[f"s{i}" for i in range(10)], list(sets)].to_numpy()
    for ties in ("average", "gseapy"):
        ours = _score(_adata(x, genes), sets, ties=ties, ssgsea_norm=False, **kw)
        np.testing.assert_allclose(ours[list(sets)].to_numpy(), ref, atol=1e-9)


# --------------------------------------------------------------------------- permutations
@pytest.fixture(scope="module")
def mob300(_mob_adata_cached):
    """The first 300 spots of the real MOB1 section (1,000 genes, raw counts)."""
    return _mob_adata_cached[:300].copy()


@pytest.fixture(scope="module")
def sparse_fixture():
    """Sparse counts (~88 % zeros), all-zero spots, a non-integer spot, large counts."""
    rng = np.random.default_rng(7)
    n_spots, n_genes = 120, 1500
    lam = rng.gamma(0.3, 1.0, size=n_genes)
    x = rng.poisson(lam[None, :] * rng.gamma(2.0, 0.5, size=(n_spots, 1))).astype(np.float64)
    x[[5, 50]] = 0.0  # empty spots
    x[7] *= 0.37  # non-integer values: the generic sort path
    big = rng.choice(n_genes, size=40, replace=False)
    x[9, big] = rng.integers(70_000, 90_000, size=40)  # beyond the count lookup table
    genes = [f"G{i}" for i in range(n_genes)]
    sets = {f"S{j}": list(rng.choice(genes, size=15 + 10 * j, replace=False)) for j in range(8)}
    return _adata(x, genes), sets


def _permutation_max_diff(a, sets, n_perm=2, seed=0, **kw):
    ref = _score(a.copy(), sets, **kw)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(n_perm):
        b = a[:, rng.permutation(a.n_vars)].copy()
        out = _score(b, sets, **kw)[ref.columns]
        assert out.index.equals(ref.index)
        # spots below a rarefaction depth are NaN: the same spots whatever the order
        np.testing.assert_array_equal(np.isnan(out.to_numpy()), np.isnan(ref.to_numpy()))
        worst = max(worst, float(np.nanmax(np.abs(out.to_numpy() - ref.to_numpy()))))
    return worst


METHODS = [
    {"method": "ssgsea"},
    {"method": "ssgsea", "sample_norm_method": "log"},
    {"method": "ssgsea", "correl_norm_type": "zscore", "ssgsea_norm": False},
    {"method": "aucell"},
    {"method": "zscore"},
    {"method": "ulm"},
    {"method": "score_genes"},
    {"method": "score_genes", "random_state": 3, "ctrl_size": 20},
]
#: counts rarefied before scoring (integer counts needed: the real section only)
RAREFIED = [
    {"method": "ssgsea", "rarefy_depth": 200},
    {"method": "aucell", "rarefy_depth": 200},
    {"method": "zscore", "rarefy_depth": 200, "rarefy_draws": 2},
    {"method": "ulm", "rarefy_depth": 200, "random_state": 5},
    {"method": "score_genes", "rarefy_depth": 200},
]


@pytest.mark.parametrize("kw", METHODS + RAREFIED, ids=lambda d: "-".join(map(str, d.values())))
def test_scores_do_not_depend_on_gene_order_mob(mob300, kw):
    assert _permutation_max_diff(mob300, "hallmark", **kw) <= 1e-12


@pytest.mark.parametrize("kw", METHODS, ids=lambda d: "-".join(map(str, d.values())))
def test_scores_do_not_depend_on_gene_order_sparse(sparse_fixture, kw):
    a, sets = sparse_fixture
    assert _permutation_max_diff(a, sets, **kw) <= 1e-12


@pytest.mark.parametrize("method", ["ssgsea", "aucell"])
def test_each_spot_is_scored_on_its_own(sparse_fixture, method):
    """A spot with counts beyond the lookup table must not leave state for the next spots."""
    a, sets = sparse_fixture
    together = _score(a.copy(), sets, method=method, ssgsea_norm=False).to_numpy()
    rows = (8, 9, 10, 11)
    alone = np.vstack(
        [_score(a[i : i + 1].copy(), sets, method=method, ssgsea_norm=False) for i in rows]
    )
    np.testing.assert_allclose(alone, together[8:12], rtol=0, atol=1e-12)


def test_gseapy_ties_depend_on_gene_order(mob300):
    """The permutation test can fail: gseapy's tie order moves the scores."""
    assert _permutation_max_diff(mob300, "hallmark", n_perm=1, ties="gseapy") > 0.01


# --------------------------------------------------------------------------- all-zero spot
@pytest.mark.parametrize(("sample_norm", "correl", "weight"), SSGSEA_OPTIONS)
def test_all_zero_spot_scores_zero(sparse_fixture, sample_norm, correl, weight):
    a, sets = sparse_fixture
    kw = dict(sample_norm_method=sample_norm, correl_norm_type=correl, weight=weight)
    for norm in (False, True):
        out = _score(a.copy(), sets, ssgsea_norm=norm, **kw).to_numpy()
        np.testing.assert_array_equal(np.abs(out[[5, 50]]) <= 1e-12, True)
        assert np.isfinite(out).all()
