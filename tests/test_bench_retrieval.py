"""Retrieval metrics on constructed embeddings with known ranks."""

import numpy as np
import pytest

from stalign.bench import retrieval


def test_identity_embeddings_rank_first():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(40, 8))
    res = retrieval(e, e, ks=(1, 5))
    assert res.recall == {1: 1.0, 5: 1.0}
    assert (res.ranks == 0).all()
    assert res.chance[5] == pytest.approx(5 / 40)


def test_constructed_ranks():
    # targets are unit basis vectors; query i is built so its own target ranks exactly r_i
    n = 12
    t = np.eye(n)
    want = np.arange(n) % 4  # ranks 0,1,2,3,0,1,...
    q = np.zeros((n, n))
    for i in range(n):
        q[i, i] = 10.0
        others = [j for j in range(n) if j != i][: want[i]]
        q[i, others] = 20.0 + np.arange(len(others))  # strictly more similar than own
    res = retrieval(q, t, ks=(1, 2, 3, 4), metric="dot")
    np.testing.assert_array_equal(res.ranks, want)
    assert res.recall[1] == pytest.approx(0.25)
    assert res.recall[2] == pytest.approx(0.5)
    assert res.recall[4] == pytest.approx(1.0)
    np.testing.assert_allclose(res.curve[:4], [0.25, 0.5, 0.75, 1.0])


def test_ties_count_against_the_query_and_groups_restrict_pool():
    n = 20
    const = np.ones((n, 4))
    res = retrieval(const, const, ks=(1, 5))
    assert res.recall[1] == 0.0  # a constant encoder cannot win by ties
    rng = np.random.default_rng(1)
    t = rng.normal(size=(n, 4))
    q = t + 0.01 * rng.normal(size=t.shape)
    groups = np.repeat([0, 1], n // 2)
    res_g = retrieval(q, t, groups=groups, ks=(10,))
    assert res_g.chance[10] == pytest.approx(1.0)  # pool of 10 per group
    assert res_g.recall[10] == 1.0


def test_profile_correlation_graded_credit():
    rng = np.random.default_rng(2)
    n, p = 60, 10
    prof = rng.normal(size=(n, p))
    # perfect retrieval: top-1 profile is the true one
    res = retrieval(prof, prof, profiles=prof)
    assert res.profile_corr == pytest.approx(1.0)
    assert abs(res.profile_corr_chance) < 0.1
    # random queries: retrieved profile unrelated to the true one
    res_r = retrieval(rng.normal(size=(n, p)), prof, profiles=prof)
    assert abs(res_r.profile_corr) < 0.3
    assert res_r.recall[1] < 0.2


def test_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        retrieval(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="metric"):
        retrieval(np.zeros((3, 2)), np.zeros((3, 2)), metric="l1")


def test_row_pearson_in_blocks_equals_the_whole_matrix_bit_for_bit():
    """The blocked per-row Pearson (no n × p temporaries) gives the unblocked numbers."""
    from stalign.bench._retrieval import _row_pearson

    rng = np.random.default_rng(3)
    prof = rng.normal(size=(103, 9))
    prof[5] = 1.0  # a constant row: Pearson undefined (NaN) in both forms
    rows = rng.integers(0, 103, size=103)
    a, b = prof[rows], prof
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        whole = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
    for block in (1, 7, 4096):
        got = _row_pearson(prof, prof, rows_a=rows, block=block)
        np.testing.assert_array_equal(got, whole)
    assert np.isnan(whole).any()
