"""Depth-adjusted readout: depth alone scores ~0, a planted non-depth signal survives."""

import numpy as np
import pytest

from stalign.bench import depth_adjusted, gene_prediction, partial_pearson, pathway_prediction
from stalign.pp import log_depth


def _depth_cohort(n=900, g=30, seed=0):
    """Counts whose log depth varies tenfold and whose genes also follow a biological latent."""
    rng = np.random.default_rng(seed)
    ld = rng.normal(np.log(2000), 0.6, size=n)  # log library size
    bio = rng.normal(size=n)  # independent of depth
    loadings = rng.normal(size=g)
    base = rng.dirichlet(np.ones(g) * 2)
    rate = np.exp(ld)[:, None] * base[None, :] * np.exp(0.5 * bio[:, None] * loadings[None, :])
    rate /= np.exp(0.5 * bio[:, None] * loadings[None, :]).mean(axis=1, keepdims=True)
    counts = rng.poisson(rate).astype(float)
    groups = np.repeat(["p0", "p1", "p2"], n // 3)
    return counts, ld, bio, groups, rng


def test_depth_only_feature_scores_zero_and_planted_signal_survives():
    counts, _, bio, groups, rng = _depth_cohort()
    depth = log_depth(counts)
    z = (depth - depth.mean()) / depth.std()
    # nonlinear functions of depth (convex, saturating, non-monotone), plus noise
    depth_feat = np.column_stack([np.exp(z), np.tanh(2 * z), z**2])
    depth_feat += 0.1 * rng.normal(size=depth_feat.shape)
    planted = np.column_stack([bio, bio**2]) + 0.3 * rng.normal(size=(len(z), 2))
    for X, kind in ((depth_feat, "depth"), (planted, "planted")):
        plain = gene_prediction(X, counts, groups, n_genes=20)
        adj = depth_adjusted(plain, depth)
        if kind == "depth":
            assert plain.mean > 0.5  # depth alone carries the HEST readout
            assert abs(adj.mean) <= 0.05
        else:
            assert plain.mean > 0.2
            assert adj.mean >= 0.9 * plain.mean
    assert adj.params["readout"] == "depth_adjusted"
    assert adj.per_target.shape == plain.per_target.shape
    np.testing.assert_array_equal(adj.predictions, plain.predictions)


def test_library_size_itself_scores_exactly_zero_not_nan():
    counts, _, _, groups, _ = _depth_cohort(n=300, g=10, seed=1)
    depth = log_depth(counts)
    samples = np.array([f"{g}_{i % 2}" for i, g in enumerate(groups)])
    plain = pathway_prediction(depth[:, None], np.log1p(counts), groups, samples=samples)
    adj = depth_adjusted(plain, depth, samples=samples)
    assert plain.mean > 0.5
    assert (adj.per_target["pearson"] == 0.0).all()
    assert (adj.per_sample["pearson"] == 0.0).all()
    assert set(adj.per_sample["sample"]) == set(samples)
    assert adj.mean == 0.0 and adj.per_fold["n_nan"].eq(0).all()


def test_partial_pearson_is_the_correlation_of_cubic_residuals():
    rng = np.random.default_rng(2)
    ld = rng.normal(7, 1, size=200)
    shared = rng.normal(size=200)
    a = np.column_stack([np.sin(ld) + shared, ld**2 + rng.normal(size=200)])
    b = np.column_stack([ld**3 + shared + rng.normal(size=200), rng.normal(size=200)])
    r = partial_pearson(a, b, ld)
    basis = np.vander(ld, 4)
    for j in range(2):
        ra = a[:, j] - basis @ np.linalg.lstsq(basis, a[:, j], rcond=None)[0]
        rb = b[:, j] - basis @ np.linalg.lstsq(basis, b[:, j], rcond=None)[0]
        assert r[j] == pytest.approx(np.corrcoef(ra, rb)[0, 1], abs=1e-9)
    # a target that is a function of depth alone is undefined, a prediction scores 0
    r = partial_pearson(np.column_stack([ld**2, shared]), np.column_stack([shared, 3 * ld]), ld)
    assert np.isnan(r[0]) and r[1] == 0.0
    with pytest.raises(ValueError, match="same spots"):
        partial_pearson(a, b[:10], ld)


def test_a_test_fold_too_small_for_the_depth_curve_scores_nan():
    counts, _, _, groups, rng = _depth_cohort(n=300, g=10, seed=3)
    depth = log_depth(counts)
    groups = groups.astype(object)
    groups[:3] = "p_small"  # 3 spots: fewer than the 4 coefficients of a cubic
    plain = pathway_prediction(rng.normal(size=(300, 3)), np.log1p(counts), groups, samples=groups)
    adj = depth_adjusted(plain, depth, samples=groups)
    small = adj.per_fold["test_groups"] == "p_small"
    assert adj.per_fold.loc[small, "pearson_mean"].isna().all()
    assert adj.per_fold.loc[~small, "pearson_mean"].notna().all()
    assert adj.per_sample.loc[adj.per_sample["sample"] == "p_small", "pearson"].isna().all()
