"""Fit a probe over folds.

Input checks, group folds, the feature pipeline (scaling, PCA, constant columns) and
the ridge / inner-CV ridge / MLP fits.

Used by [`gene_prediction`][stalign.bench.gene_prediction] and
[`pathway_prediction`][stalign.bench.pathway_prediction] (``bench/_probe.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._probe_result import _PROBES, ProbeResult, _check_protocol, pearson_columns

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# validation helpers


def _check_xy(X, Y, groups, samples) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate the inputs of a probe; ``X`` stays float32 or float64 as given.

    The probes work in float64: each fold converts its rows (see `_reduce`), which
    is exact for float32 input, so no float64 copy of the whole feature matrix is made.
    """
    X = np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    if X.ndim != 2:
        msg = f"X (embeddings) must be 2-D (n_spots × dim), got shape {X.shape}"
        raise ValueError(msg)
    n = X.shape[0]
    Yd = np.asarray(Y.toarray() if sp.issparse(Y) else Y, dtype=np.float64)
    if Yd.ndim == 1:
        Yd = Yd[:, None]
    if Yd.shape[0] != n:
        msg = f"X has {n} rows but Y has {Yd.shape[0]}; they must describe the same spots"
        raise ValueError(msg)
    if not np.isfinite(X).all():
        msg = "X (embeddings) contains NaN or infinite values"
        raise ValueError(msg)
    if not np.isfinite(Yd).all():
        msg = "Y contains NaN or infinite values"
        raise ValueError(msg)
    g = np.asarray(groups).astype(str)
    if g.shape != (n,):
        msg = f"groups must have one entry per spot ({n}), got shape {g.shape}"
        raise ValueError(msg)
    if np.unique(g).size < 2:
        msg = (
            "leave-one-patient-out needs at least 2 distinct groups (patients), "
            f"found {np.unique(g).tolist()}"
        )
        raise ValueError(msg)
    if samples is None:
        s = None
    else:
        s = np.asarray(samples).astype(str)
        if s.shape != (n,):
            msg = f"samples must have one entry per spot ({n}), got shape {s.shape}"
            raise ValueError(msg)
    return X, Yd, g, s


def _folds(
    groups: np.ndarray, folds: str | int, test_groups: Sequence[str] | None = None
) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Return (train_idx, test_idx, test_group_label) per fold."""
    uniq = list(dict.fromkeys(groups.tolist()))  # order of first appearance
    if test_groups is not None:
        test = [str(t) for t in test_groups]
        unknown = [t for t in test if t not in uniq]
        if unknown or not test or len(set(test)) == len(uniq):
            msg = f"test_groups must name some but not all of the groups {uniq}, got {test}"
            raise ValueError(msg)
        mask = np.isin(groups, test)
        return [(np.flatnonzero(~mask), np.flatnonzero(mask), "+".join(test))]
    if folds == "lopo":
        return [(np.flatnonzero(groups != u), np.flatnonzero(groups == u), u) for u in uniq]
    if isinstance(folds, int | np.integer) and not isinstance(folds, bool):
        k = int(folds)
        if not 2 <= k <= len(uniq):
            msg = f"folds={k} needs 2 <= folds <= number of groups ({len(uniq)})"
            raise ValueError(msg)
        # deterministic round-robin assignment of groups to folds
        out = []
        for f in range(k):
            fold_groups = uniq[f::k]
            mask = np.isin(groups, fold_groups)
            out.append((np.flatnonzero(~mask), np.flatnonzero(mask), "+".join(fold_groups)))
        return out
    msg = f"folds must be 'lopo' or an int >= 2, got {folds!r}"
    raise ValueError(msg)


# --------------------------------------------------------------------------------------
# one fold


# a feature whose training-spot sd is below this fraction of the median feature sd is
# constant there up to float noise; standardising it would blow that noise up to unit
# variance and its test values (e.g. a ReLU unit dead on the training sections but alive
# on the test ones) up to ~1e7, wrecking the probe. It carries nothing a probe fitted on
# the training spots could use, so it is dropped.
_CONSTANT_SD_FRACTION = 1e-6


def _informative_columns(X_train: np.ndarray, block: int = 16) -> np.ndarray:
    """Return the columns that vary on the training spots (all of them if none does).

    The sd is taken in float64 over ``block`` columns at a time, so the float64
    working copy is ``block`` columns wide rather than the whole matrix.
    """
    sd = np.concatenate(
        [
            np.asarray(X_train[:, j : j + block], dtype=np.float64).std(axis=0)
            for j in range(0, X_train.shape[1], block)
        ]
    )
    positive = sd[sd > 0]
    if positive.size == 0:
        return np.arange(X_train.shape[1])
    keep = np.flatnonzero(sd > _CONSTANT_SD_FRACTION * np.median(positive))
    return keep if keep.size else np.arange(X_train.shape[1])


def _reduce(
    X: np.ndarray,
    tr: np.ndarray,
    te: np.ndarray,
    pca_dim: int | None,
    random_state: int,
    *,
    robust: bool = False,
):
    """Standardise (and PCA-reduce) the training rows ``tr`` and test rows ``te`` of ``X``.

    ``robust=False`` is HEST-Benchmark's feature pipeline exactly: ``StandardScaler`` and
    ``PCA`` fitted on the training rows, applied to the test rows as they are.
    ``robust=True`` (protocol ``"hest_robust"``) first drops the columns that are
    constant on the training rows (`_informative_columns`) and clips each test
    feature to the range it spans on the training rows.

    Works in float64 on copies of the fold's rows only, modified in place (clip, scale),
    which gives the same numbers as copying at each step while holding fewer matrices;
    the test rows are copied only once the PCA is fitted.
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    rows = X[tr]  # one copy of the fold's training rows, in the input dtype
    # the column selection is kept even when it takes every column: it lays the matrix
    # out column-major, and the scaler's sums (so the last bits) depend on the layout
    cols = _informative_columns(rows) if robust else slice(None)
    X_train = (rows[:, cols] if robust else rows).astype(np.float64, copy=False)
    del rows
    lo, hi = (X_train.min(axis=0), X_train.max(axis=0)) if robust else (None, None)
    scaler = StandardScaler(copy=False).fit(X_train)
    Xtr = scaler.transform(X_train)  # in place
    del X_train

    def test_rows() -> np.ndarray:
        X_test = X[te][:, cols].astype(np.float64, copy=False)
        if robust:
            # not asked to extrapolate: sparse ReLU features (a unit active on 1 % of
            # the training spots and on 30 % of the test spots) otherwise reach tens of
            # training sd after standardisation and dominate the ridge predictions
            np.clip(X_test, lo, hi, out=X_test)
        return scaler.transform(X_test)  # in place

    if pca_dim is None:
        return Xtr, test_rows()
    k = int(min(pca_dim, Xtr.shape[0], Xtr.shape[1]))
    pca = PCA(n_components=k, random_state=random_state).fit(Xtr)
    Ztr = pca.transform(Xtr)
    del Xtr
    return Ztr, pca.transform(test_rows())


def _mean_pearson_score(y_true, y_pred) -> float:
    r = pearson_columns(y_true, y_pred)
    return float(np.nan_to_num(r, nan=0.0).mean())


def _fit_predict(
    probe: str,
    Xtr: np.ndarray,
    Ytr: np.ndarray,
    Xte: np.ndarray,
    inner_groups: np.ndarray,
    *,
    alphas: Sequence[float],
    max_iter: int,
    random_state: int,
    mlp_hidden: tuple[int, ...],
) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import Ridge

    n_t = Ytr.shape[1]
    if probe == "ridge":
        alpha = 100.0 / (Xtr.shape[1] * n_t)
        reg = Ridge(
            alpha=alpha,
            solver="lsqr",
            fit_intercept=False,
            max_iter=max_iter,
            random_state=random_state,
        )
        reg.fit(Xtr, Ytr)
        return reg.predict(Xte), alpha
    if probe == "ridge_cv":
        from sklearn.metrics import make_scorer
        from sklearn.model_selection import GridSearchCV, GroupKFold, KFold

        n_inner = np.unique(inner_groups).size
        if n_inner >= 2:
            cv = list(GroupKFold(n_splits=min(5, n_inner)).split(Xtr, Ytr, inner_groups))
        else:
            logger.warning(
                "ridge_cv: the training fold has one group only; inner CV falls back to "
                "5 contiguous folds (pass samples= to split the inner CV by sample)"
            )
            cv = list(KFold(n_splits=5, shuffle=False).split(Xtr))
        search = GridSearchCV(
            Ridge(solver="lsqr", fit_intercept=False, max_iter=max_iter, random_state=random_state),
            {"alpha": list(alphas)},
            scoring=make_scorer(_mean_pearson_score),
            cv=cv,
            refit=True,
        )
        search.fit(Xtr, Ytr)
        return search.predict(Xte), float(search.best_params_["alpha"])
    # mlp
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.neural_network import MLPRegressor
    from sklearn.preprocessing import StandardScaler

    reg = TransformedTargetRegressor(
        regressor=MLPRegressor(
            hidden_layer_sizes=mlp_hidden,
            alpha=1e-3,
            early_stopping=True,
            max_iter=max_iter,
            random_state=random_state,
        ),
        transformer=StandardScaler(),
    )
    reg.fit(Xtr, Ytr)
    pred = reg.predict(Xte)
    return pred.reshape(Xte.shape[0], n_t), float("nan")


def _run(
    X,
    Y: np.ndarray,
    groups,
    target_names: list[str],
    *,
    samples,
    probe: str,
    pca_dim: int | None,
    folds: str | int,
    test_groups: Sequence[str] | None,
    alphas: Sequence[float] | None,
    max_iter: int,
    random_state: int,
    mlp_hidden: tuple[int, ...],
    protocol: str,
    params: dict,
) -> ProbeResult:
    if probe not in _PROBES:
        msg = f"probe must be one of {_PROBES}, got {probe!r}"
        raise ValueError(msg)
    _check_protocol(protocol)
    X, Y, g, s = _check_xy(X, Y, groups, samples)
    if alphas is None:
        alphas = tuple(np.logspace(-3, 5, 9))
    inner = s if s is not None else g
    preds = np.full(Y.shape, np.nan)
    rows_t, rows_f, rows_s = [], [], []
    test_rows: list[np.ndarray] = []
    for fi, (tr, te, label) in enumerate(_folds(g, folds, test_groups)):
        Xtr, Xte = _reduce(X, tr, te, pca_dim, random_state, robust=protocol == "hest_robust")
        p, alpha = _fit_predict(
            probe,
            Xtr,
            Y[tr],
            Xte,
            inner[tr],
            alphas=alphas,
            max_iter=max_iter,
            random_state=random_state,
            mlp_hidden=mlp_hidden,
        )
        p = np.asarray(p).reshape(len(te), Y.shape[1])  # sklearn returns 1-D for 1 target
        preds[te] = p
        test_rows.append(te)
        r = pearson_columns(Y[te], p)
        rows_t.extend(
            {"fold": fi, "target": t, "pearson": float(v)}
            for t, v in zip(target_names, r, strict=True)
        )
        n_nan = int(np.isnan(r).sum())
        if n_nan:
            logger.warning(
                "fold %d (test %s): %d of %d targets are constant in the test set or "
                "predictions; their Pearson is undefined and skipped",
                fi,
                label,
                n_nan,
                len(r),
            )
        rows_f.append(
            {
                "fold": fi,
                "test_groups": label,
                "n_train": len(tr),
                "n_test": len(te),
                "n_components": Xtr.shape[1],
                "alpha": alpha,
                "pearson_mean": float(np.nanmean(r)) if n_nan < len(r) else float("nan"),
                "n_nan": n_nan,
            }
        )
        if s is not None:
            for smp in dict.fromkeys(s[te].tolist()):
                m = s[te] == smp
                rs = pearson_columns(Y[te][m], p[m])
                rows_s.extend(
                    {"fold": fi, "sample": smp, "target": t, "pearson": float(v)}
                    for t, v in zip(target_names, rs, strict=True)
                )
        del Xtr, Xte, p  # before the next fold's matrices are made
    per_sample = pd.DataFrame(rows_s, columns=["fold", "sample", "target", "pearson"])
    return ProbeResult(
        per_target=pd.DataFrame(rows_t, columns=["fold", "target", "pearson"]),
        per_fold=pd.DataFrame(rows_f),
        per_sample=per_sample,
        predictions=preds,
        targets=Y,
        target_names=list(target_names),
        test_rows=test_rows,
        params={
            **params,
            "protocol": protocol,
            "probe": probe,
            "pca_dim": pca_dim,
            "folds": folds if test_groups is None else f"test={list(test_groups)}",
            "random_state": random_state,
        },
    )
