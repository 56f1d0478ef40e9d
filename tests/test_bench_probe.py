"""HEST protocol on hand-made data where the answer is known."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stalign.bench import gene_prediction, hest_gene_panel, pathway_prediction, pearson_columns


def _linear_counts(n=300, d=20, g=8, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(d, g))
    log_expr = 1.5 + 0.3 * (X @ W) / np.sqrt(d) + noise * rng.normal(size=(n, g))
    counts = np.round(np.expm1(np.clip(log_expr, 0, None)) * 20)
    groups = np.repeat(["p0", "p1", "p2"], n // 3)
    return X, counts, groups


def test_pearson_columns_matches_numpy_and_flags_constants():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    r = pearson_columns(a, b)
    for j in range(3):
        assert r[j] == pytest.approx(np.corrcoef(a[:, j], b[:, j])[0, 1], abs=1e-12)
    a[:, 1] = 4.0
    assert np.isnan(pearson_columns(a, b)[1])


def test_gene_panel_rule():
    rng = np.random.default_rng(0)
    n = 200
    Y = np.zeros((n, 5))
    Y[:, 0] = rng.poisson(5, n)  # expressed everywhere, moderate variance
    Y[:15, 1] = 1000  # huge variance but detected in 7.5 % of spots -> dropped
    Y[:, 2] = rng.poisson(50, n) * (rng.random(n) < 0.5)  # 50 %, high log variance
    Y[:21, 3] = 3  # 10.5 % of spots -> kept
    Y[:, 4] = 7  # constant -> kept but zero variance, ranked last
    idx = hest_gene_panel(Y, n_genes=50)
    assert 1 not in idx
    assert set(idx) == {0, 2, 3, 4}
    assert idx[0] == 2 and idx[-1] == 4
    assert list(hest_gene_panel(Y, n_genes=2)) == list(idx[:2])
    with pytest.raises(ValueError, match="min_spot_fraction"):
        hest_gene_panel(Y, min_spot_fraction=1.5)
    with pytest.raises(ValueError, match="no gene is detected"):
        hest_gene_panel(np.zeros((10, 3)))


def test_linear_signal_is_recovered_and_independent_is_not():
    X, counts, groups = _linear_counts()
    res = gene_prediction(X, sp.csr_matrix(counts), groups)
    assert res.mean > 0.9
    assert len(res.per_fold) == 3
    assert res.per_target.shape[0] == 3 * counts.shape[1]
    # protocol details: alpha = 100 / (dim * n_genes), PCA capped by dim
    assert (res.per_fold["n_components"] == 20).all()
    assert np.allclose(res.per_fold["alpha"], 100 / (20 * counts.shape[1]))
    rng = np.random.default_rng(5)
    res0 = gene_prediction(rng.normal(size=X.shape), counts, groups)
    assert abs(res0.mean) < 0.15


def test_targets_are_log1p_of_panel_and_headline_is_mean_over_folds():
    X, counts, groups = _linear_counts(seed=3)
    names = [f"g{j}" for j in range(counts.shape[1])]
    res = gene_prediction(X, counts, groups, gene_names=names, n_genes=3)
    cols = [names.index(t) for t in res.target_names]
    assert len(cols) == 3
    np.testing.assert_allclose(res.targets, np.log1p(counts[:, cols]))
    per_fold = res.per_target.groupby("fold")["pearson"].mean().to_numpy()
    assert res.mean == pytest.approx(per_fold.mean())
    assert res.std == pytest.approx(per_fold.std(ddof=0))


def test_leave_one_patient_out_folds_are_exact():
    X, counts, groups = _linear_counts(n=90)
    res = gene_prediction(X, counts, groups)
    assert res.per_fold["test_groups"].tolist() == ["p0", "p1", "p2"]
    assert res.per_fold["n_test"].tolist() == [30, 30, 30]
    assert res.per_fold["n_train"].tolist() == [60, 60, 60]
    assert not np.isnan(res.predictions).any()
    # the prediction for a patient must not depend on that patient's own targets
    counts2 = counts.copy()
    counts2[groups == "p0"] = counts2[groups == "p0"][::-1]
    res2 = gene_prediction(
        X,
        counts2,
        groups,
        genes=res.target_names,
        gene_names=[f"gene_{j}" for j in range(counts.shape[1])],
    )
    np.testing.assert_allclose(res.predictions[groups == "p0"], res2.predictions[groups == "p0"])


def test_ridge_cv_mlp_and_per_sample():
    X, counts, groups = _linear_counts(n=240, seed=2)
    samples = np.array([f"{g}_{i % 2}" for i, g in enumerate(groups)])
    rcv = gene_prediction(X, counts, groups, samples=samples, probe="ridge_cv")
    assert rcv.mean > 0.9
    assert rcv.per_fold["alpha"].notna().all()
    assert set(rcv.per_sample["sample"]) == set(samples)
    assert "per_sample_pearson_mean" in rcv.summary()
    mlp = gene_prediction(X, counts, groups, probe="mlp", random_state=0)
    assert mlp.mean > 0.6


def test_pathway_prediction_dataframe_and_errors():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 10))
    scores = pd.DataFrame(X[:, :4] @ rng.normal(size=(4, 3)), columns=["A", "B", "C"])
    groups = np.repeat(["a", "b"], 60)
    res = pathway_prediction(X, scores, groups)
    assert res.target_names == ["A", "B", "C"]
    assert res.mean > 0.95
    with pytest.raises(ValueError, match="at least 2 distinct groups"):
        pathway_prediction(X, scores, np.zeros(120))
    with pytest.raises(ValueError, match="120 rows but Y has 100"):
        pathway_prediction(X, scores.iloc[:100], groups)
    with pytest.raises(ValueError, match="probe must be one of"):
        pathway_prediction(X, scores, groups, probe="svm")


def test_features_constant_on_training_spots_do_not_wreck_the_robust_probe():
    """A feature that is (numerically) constant on the training spots but varies on the
    test spots, as ReLU features of an encoder adapted on one section can be, must not
    dominate the test predictions after standardisation."""
    rng = np.random.default_rng(0)
    n, d = 400, 12
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(d, 3))
    scores = pd.DataFrame(X @ W + 0.1 * rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    groups = np.repeat(["train", "test"], n // 2)
    robust = {"test_groups": ["test"], "pca_dim": None, "protocol": "hest_robust"}
    clean = pathway_prediction(X, scores, groups, **robust)
    dead = np.zeros((n, 1))
    dead[: n // 2, 0] = rng.normal(scale=1e-11, size=n // 2)  # float noise on training spots
    dead[n // 2 :, 0] = rng.exponential(size=n // 2)  # alive on the test spots
    wrecked = pathway_prediction(np.hstack([X, dead]), scores, groups, **robust)
    assert clean.mean > 0.9
    assert wrecked.mean == pytest.approx(clean.mean, abs=1e-6)


def test_sparse_features_active_mostly_on_test_spots_do_not_dominate_the_robust_probe():
    """A ReLU-like feature active on a few training spots but on many test spots reaches
    tens of training sd after standardisation; the probe clips test features to their
    training range instead of extrapolating."""
    rng = np.random.default_rng(1)
    n, d = 400, 12
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(d, 3))
    scores = pd.DataFrame(X @ W + 0.1 * rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    groups = np.repeat(["train", "test"], n // 2)
    robust = {"test_groups": ["test"], "pca_dim": None, "protocol": "hest_robust"}
    clean = pathway_prediction(X, scores, groups, **robust)
    sparse = np.zeros((n, 5))
    sparse[rng.choice(n // 2, 2, replace=False)] = 0.01  # rarely and weakly on in training
    sparse[n // 2 :] = rng.exponential(size=(n // 2, 5)) * (rng.random((n // 2, 5)) < 0.5)
    noisy = pathway_prediction(np.hstack([X, sparse]), scores, groups, **robust)
    assert noisy.mean > clean.mean - 0.05


def test_float32_features_score_exactly_as_their_float64_copy():
    """The probe converts each fold's rows to float64 itself: no number may change."""
    X, counts, groups = _linear_counts(n=300, d=40)
    X32 = (X + np.random.default_rng(3).normal(size=(300, 1))).astype(np.float32)
    X32[:, 5] = 1.0  # a constant column: the informative-column selection drops it
    for probe, protocol in (("ridge", "hest"), ("ridge", "hest_robust"), ("mlp", "hest_robust")):
        kw = {"probe": probe, "protocol": protocol, "max_iter": 50}
        a = gene_prediction(X32, counts, groups, **kw)
        b = gene_prediction(X32.astype(np.float64), counts, groups, **kw)
        np.testing.assert_array_equal(a.predictions, b.predictions)
    assert np.asarray(X32).dtype == np.float32 and X32[0, 5] == 1.0  # input left untouched


def test_in_place_reduction_equals_the_copying_form_bit_for_bit():
    """`_reduce` (robust) clips/scales in place; the numbers equal the plain copying steps."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from stalign.bench._probe_fit import _informative_columns, _reduce

    rng = np.random.default_rng(0)
    X = (rng.normal(size=(400, 64)) @ rng.normal(size=(64, 64))).astype(np.float32)
    tr, te = np.arange(0, 250), np.arange(250, 400)
    X64 = np.asarray(X, dtype=np.float64)
    cols = _informative_columns(X64[tr])
    X_train = X64[tr][:, cols]
    X_test = np.clip(X64[te][:, cols], X_train.min(axis=0), X_train.max(axis=0))
    scaler = StandardScaler().fit(X_train)
    Xtr, Xte = scaler.transform(X_train), scaler.transform(X_test)
    pca = PCA(n_components=32, random_state=0).fit(Xtr)
    got = _reduce(X, tr, te, 32, 0, robust=True)
    np.testing.assert_array_equal(got[0], pca.transform(Xtr))
    np.testing.assert_array_equal(got[1], pca.transform(Xte))
    np.testing.assert_array_equal(_reduce(X, tr, te, None, 0, robust=True)[0], Xtr)


def _hest_reference(X, log_targets, train, test, n_components=256, seed=0):
    """HEST-Benchmark's published probe written out with sklearn, independently of stalign."""
    from scipy.stats import pearsonr
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    k = min(n_components, train.sum(), X.shape[1])
    pipe = Pipeline([("scaler", StandardScaler()), ("pca", PCA(n_components=k, random_state=seed))])
    Z_train, Z_test = pipe.fit_transform(X[train]), pipe.transform(X[test])
    y_train, y_test = log_targets[train], log_targets[test]
    alpha = 100 / (Z_train.shape[1] * y_train.shape[1])
    reg = Ridge(solver="lsqr", alpha=alpha, random_state=seed, fit_intercept=False, max_iter=1000)
    pred = reg.fit(Z_train, y_train).predict(Z_test)
    r = [pearsonr(y_test[:, j], pred[:, j])[0] for j in range(y_test.shape[1])]
    return pred, float(np.mean(r))


def test_hest_protocol_equals_an_independent_reimplementation_of_the_published_probe():
    """protocol='hest' clips nothing and drops nothing, even where hest_robust would do both:
    dead ReLU units (exactly 0 on the training spots) and sparse units active mostly on the
    test spots."""
    X, counts, groups = _linear_counts(n=300, d=40, seed=4)
    rng = np.random.default_rng(4)
    train = groups != "p2"
    dead = np.zeros((300, 3))
    dead[~train] = rng.exponential(size=(int((~train).sum()), 3))  # alive on test spots only
    sparse = np.zeros((300, 4))
    sparse[rng.choice(np.flatnonzero(train), 3, replace=False)] = 0.05
    sparse[~train] = rng.exponential(size=(int((~train).sum()), 4)) * 3
    X = np.hstack([X, dead, sparse])
    names = [f"g{j}" for j in range(counts.shape[1])]
    kw = {"gene_names": names, "genes": names, "test_groups": ["p2"], "pca_dim": 32}
    res = gene_prediction(X, counts, groups, **kw)
    pred, mean_r = _hest_reference(X, np.log1p(counts), train, ~train, n_components=32)
    np.testing.assert_allclose(res.predictions[~train], pred, rtol=1e-6, atol=1e-6)
    assert res.mean == pytest.approx(mean_r, abs=1e-6)
    assert res.params["protocol"] == "hest"
    # the fixture does trigger the robust variant's dropping and clipping
    robust = gene_prediction(X, counts, groups, protocol="hest_robust", **kw)
    assert np.abs(robust.predictions[~train] - pred).max() > 1e-3
    # full leave-one-patient-out with the default 256 components (capped by the dim)
    lopo = gene_prediction(X, counts, groups, gene_names=names, genes=names)
    for fold, te in enumerate(lopo.test_rows):
        test = np.zeros(300, bool)
        test[te] = True
        pred, mean_r = _hest_reference(X, np.log1p(counts), ~test, test)
        np.testing.assert_allclose(lopo.predictions[te], pred, rtol=1e-6, atol=1e-6)
        assert lopo.per_fold["pearson_mean"][fold] == pytest.approx(mean_r, abs=1e-6)


def test_protocol_and_targets_are_validated_and_legacy_none_maps_to_targets():
    X, counts, groups = _linear_counts(n=90)
    with pytest.raises(ValueError, match="protocol must be one of"):
        gene_prediction(X, counts, groups, protocol="hest2")
    with pytest.raises(ValueError, match="targets must be one of"):
        gene_prediction(X, counts, groups, targets="cpm")
    with pytest.warns(FutureWarning, match="targets='none'"):
        legacy = gene_prediction(X, np.log1p(counts), groups, protocol="none")
    new = gene_prediction(X, np.log1p(counts), groups, targets="none")
    np.testing.assert_array_equal(legacy.predictions, new.predictions)


def test_log1p_cp10k_targets_scale_each_spot_by_its_library_size_over_all_genes():
    X, counts, groups = _linear_counts(n=90, g=12, seed=6)
    names = [f"g{j}" for j in range(counts.shape[1])]
    res = gene_prediction(
        X, sp.csr_matrix(counts), groups, gene_names=names, targets="log1p_cp10k", n_genes=4
    )
    cols = [names.index(t) for t in res.target_names]
    assert len(cols) == 4
    total = counts.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(res.targets, np.log1p(counts[:, cols] / total * 1e4), rtol=1e-6)
    assert res.params["targets"] == "log1p_cp10k"


def test_a_single_target_column_is_probed():
    """One pathway (or gene): sklearn's ridge returns 1-D predictions; the probe keeps 2-D."""
    from stalign.bench import pathway_prediction

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8))
    y = X[:, :1] * 2 + 0.1 * rng.normal(size=(120, 1))
    groups = np.repeat(["a", "b", "c"], 40)
    res = pathway_prediction(X, y, groups)
    assert res.predictions.shape == (120, 1)
    assert res.mean > 0.9
