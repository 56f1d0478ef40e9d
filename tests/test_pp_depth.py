"""Depth covariate: log library size and the polynomial regression of depth out of values."""

import numpy as np
import pytest
import scipy.sparse as sp

from stalign.pp import DepthRegression, log_depth, regress_out_depth


def test_log_depth_dense_sparse_and_empty_rows():
    counts = np.array([[1, 2, 0], [0, 0, 0], [10, 0, 0]])
    expected = np.log([3.0, 1.0, 10.0])
    np.testing.assert_allclose(log_depth(counts), expected)
    np.testing.assert_allclose(log_depth(sp.csr_matrix(counts)), expected)
    np.testing.assert_allclose(log_depth(counts.sum(axis=1)), expected)
    with pytest.raises(ValueError, match="non-negative"):
        log_depth(-counts)


def test_nonlinear_depth_function_is_removed_and_other_signal_kept():
    rng = np.random.default_rng(0)
    ld = rng.normal(8, 1, 500)
    signal = rng.normal(size=500)
    y = np.c_[np.exp(0.5 * ld) / 50 + 0.01 * rng.normal(size=500), signal + ld]
    res = regress_out_depth(y, ld)
    assert abs(np.corrcoef(res[:, 0], ld)[0, 1]) < 1e-8
    assert abs(np.corrcoef(res[:, 0], ld**3)[0, 1]) < 1e-8
    assert np.corrcoef(res[:, 1], signal)[0, 1] > 0.99


def test_fitted_on_training_rows_only_and_round_trips():
    rng = np.random.default_rng(1)
    ld_fit, ld_new = rng.normal(8, 1, 200), rng.normal(9, 0.5, 50)
    y_fit = (2 * ld_fit + rng.normal(size=200))[:, None]
    reg = DepthRegression(degree=1).fit(y_fit, ld_fit)
    again = DepthRegression.from_dict(reg.to_dict())
    y_new = rng.normal(size=(50, 1))
    np.testing.assert_allclose(reg.transform(y_new, ld_new), again.transform(y_new, ld_new))
    # the transform subtracts the *training* curve: ≈ y_new - 2 * ld_new (+ intercept)
    np.testing.assert_allclose(reg.transform(y_new, ld_new)[:, 0], y_new[:, 0] - 2 * ld_new, atol=0.5)
    with pytest.raises(ValueError, match="columns"):
        reg.transform(np.zeros((50, 2)), ld_new)
    with pytest.raises(ValueError, match="degree"):
        DepthRegression(degree=-1)
