"""AUCell and z-score against an independent implementation (decoupler 2.x).

Both definitions are checked on data where they must agree, and the tests state exactly
where they differ:

- AUCell: decoupler (like R AUCell) ranks genes 1, 2, … and credits a set gene at rank
  ``x < n_up`` with ``n_up - x``; stalign ranks 0, 1, … and credits ``K - r`` for
  ``r < K``, so ``auc_max_rank=K`` equals ``n_up=K + 1``. Ties: decoupler breaks them in
  column order (``rankdata(method="ordinal")``), stalign credits each tied gene the
  mean over its tie block (the expectation over tie orders), so only tie-free data can
  agree exactly.
- z-score: decoupler standardises within a spot across genes (``(mean_S x - mean) *
  sqrt(k) / sd``); stalign standardises every gene across spots (scanpy's ``scale``)
  and averages the set's z-scores. On the gene-standardised matrix ``Z`` the two are
  related exactly: ``stalign = decoupler_zscore(Z) * sd_spot(Z) / sqrt(k)``.
- ulm: the same model as ``decoupler.mt.ulm`` on the log-normalised matrix; decoupler
  first drops genes that are 0 in every spot, so the tests give it none.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import stalign as st

dc = pytest.importorskip("decoupler")


def _net(sets: dict[str, list[str]]) -> pd.DataFrame:
    rows = [(name, g) for name, genes in sets.items() for g in genes]
    return pd.DataFrame(rows, columns=["source", "target"])


def _score(a, sets, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        st.tl.score_pathways(a, sets, progress=False, min_genes=3, **kw)
    return a.obsm["pathway_scores"][list(sets)]


def _tie_free(seed: int, n_spots: int = 25, n_genes: int = 400):
    rng = np.random.default_rng(seed)
    x = rng.gamma(1.5, size=(n_spots, n_genes))
    genes = [f"G{i}" for i in range(n_genes)]
    sets = {f"S{j}": list(rng.choice(genes, size=6 + 9 * j, replace=False)) for j in range(6)}
    obs = pd.DataFrame(index=[f"s{i}" for i in range(n_spots)])
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes)), sets


@pytest.mark.parametrize("max_rank", [5, 20, 60])
def test_aucell_equals_decoupler_without_ties(max_rank):
    a, sets = _tie_free(0)
    ours = _score(a, sets, method="aucell", auc_max_rank=max_rank)
    df = pd.DataFrame(a.X, index=a.obs_names, columns=a.var_names)
    ref, _ = dc.mt.aucell(df, _net(sets), tmin=3, n_up=max_rank + 1)
    np.testing.assert_allclose(ours.to_numpy(), ref[list(sets)].to_numpy(), rtol=0, atol=1e-12)


def _mob_by_symbol(mob_adata, n_spots: int) -> ad.AnnData:
    """Real MOB1 spots with upper-case symbols as var_names (decoupler matches names)."""
    a = mob_adata[:n_spots].copy()
    a.var_names = a.var["gene_symbols"].str.upper().to_numpy()
    a.var_names_make_unique()
    return a


def test_aucell_decoupler_breaks_ties_by_column_order(mob_adata):
    """On counts decoupler depends on the gene order; stalign does not."""
    a = _mob_by_symbol(mob_adata, 60)
    rng = np.random.default_rng(1)
    sets = {f"S{j}": list(rng.choice(a.var_names, size=30, replace=False)) for j in range(4)}
    df = pd.DataFrame(a.X.toarray(), index=a.obs_names, columns=a.var_names)
    perm = rng.permutation(a.n_vars)
    ref1, _ = dc.mt.aucell(df, _net(sets), tmin=3, n_up=51)
    ref2, _ = dc.mt.aucell(df.iloc[:, perm], _net(sets), tmin=3, n_up=51)
    assert np.abs(ref1.to_numpy() - ref2[ref1.columns].to_numpy()).max() > 1e-3
    ours1 = _score(a.copy(), sets, method="aucell", auc_max_rank=50)
    ours2 = _score(a[:, perm].copy(), sets, method="aucell", auc_max_rank=50)
    np.testing.assert_allclose(ours1.to_numpy(), ours2.to_numpy(), rtol=0, atol=1e-12)


def test_zscore_relation_to_decoupler(mob_adata):
    import scanpy as sc

    a = _mob_by_symbol(mob_adata, 80)
    rng = np.random.default_rng(2)
    sets = {
        f"S{j}": list(rng.choice(a.var_names, size=8 + 12 * j, replace=False)) for j in range(5)
    }
    ours = _score(a.copy(), sets, method="zscore").to_numpy()

    z = a.copy()
    z.X = z.X.toarray().astype(np.float64)
    sc.pp.normalize_total(z, target_sum=1e4)
    sc.pp.log1p(z)
    sc.pp.scale(z)
    zdf = pd.DataFrame(np.asarray(z.X), index=a.obs_names, columns=a.var_names)
    # decoupler 2.2: flavor="KSEA" is the variant without the global-mean term (see its code)
    ref, _ = dc.mt.zscore(zdf, _net(sets), tmin=3, flavor="KSEA")
    k = np.array([len(sets[s]) for s in sets], dtype=float)
    # decoupler drops genes that are 0 in every spot (here: genes without counts) first
    kept = zdf.loc[:, (zdf != 0).any(axis=0)]
    assert kept.shape[1] < zdf.shape[1]
    sd_spot = kept.std(axis=1, ddof=1).to_numpy()[:, None]
    expected = ref[list(sets)].to_numpy() * sd_spot / np.sqrt(k)[None, :]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-10)


def test_ulm_equals_decoupler(mob_adata):
    import scanpy as sc

    a = _mob_by_symbol(mob_adata, 80)
    a = a[:, np.asarray((a.X > 0).sum(axis=0)).ravel() > 0].copy()  # no all-zero gene
    rng = np.random.default_rng(3)
    sets = {
        f"S{j}": list(rng.choice(a.var_names, size=5 + 15 * j, replace=False)) for j in range(5)
    }
    ours = _score(a.copy(), sets, method="ulm").to_numpy()

    y = a.copy()
    y.X = y.X.toarray().astype(np.float64)
    sc.pp.normalize_total(y, target_sum=1e4)
    sc.pp.log1p(y)
    ydf = pd.DataFrame(y.X, index=a.obs_names, columns=a.var_names)
    ref, _ = dc.mt.ulm(ydf, _net(sets), tmin=3)
    assert ref.shape == ours.shape
    np.testing.assert_allclose(ours, ref[list(sets)].to_numpy(), rtol=0, atol=1e-9)

    logged = _score(y.copy(), sets, method="ulm", normalize=False).to_numpy()
    np.testing.assert_allclose(logged, ours, rtol=0, atol=1e-9)


def test_ulm_empty_spot_scores_zero():
    a, sets = _tie_free(5)
    a.X[3] = 0.0
    out = _score(a, sets, method="ulm").to_numpy()
    assert np.isfinite(out).all() and np.all(out[3] == 0.0)
