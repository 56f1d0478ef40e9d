"""Spot-level probes: HEST-Benchmark ridge protocol, inner-CV ridge, MLP.

The core takes plain arrays so that any embedding (an encoder's, a baseline's)
can be scored the same way. See [`gene_prediction`][stalign.bench.gene_prediction]
for the protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._genes import hest_gene_panel

__all__ = [
    "PROTOCOLS",
    "ProbeResult",
    "gene_prediction",
    "pathway_prediction",
    "pearson_columns",
]

logger = logging.getLogger(__name__)

Probe = Literal["ridge", "ridge_cv", "mlp"]
_PROBES = ("ridge", "ridge_cv", "mlp")
Protocol = Literal["hest", "hest_robust"]
#: Feature pipelines of the probes: ``"hest"`` is HEST-Benchmark's exactly;
#: ``"hest_robust"`` also drops training-constant columns and clips test features.
PROTOCOLS = ("hest", "hest_robust")
Targets = Literal["log1p", "log1p_cp10k", "none"]
TARGETS = ("log1p", "log1p_cp10k", "none")


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        msg = f"protocol must be one of {PROTOCOLS}, got {protocol!r}"
        raise ValueError(msg)


def pearson_columns(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``y_true`` with the same column of ``y_pred``.

    Returns NaN for a column where either side is constant.
    """
    a = np.asarray(y_true, dtype=np.float64)
    b = np.asarray(y_pred, dtype=np.float64)
    constant = (np.ptp(a, axis=0) == 0) | (np.ptp(b, axis=0) == 0)
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    num = (a * b).sum(axis=0)
    den = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    r[constant] = np.nan
    return np.clip(r, -1.0, 1.0)


@dataclass
class ProbeResult:
    """Outcome of a probe under grouped cross-validation.

    Attributes
    ----------
    per_target
        Long table, one row per (fold, target): ``fold``, ``target``, ``pearson``
        (Pearson on the fold's concatenated test set).
    per_fold
        One row per fold: ``fold``, ``test_groups``, ``n_train``, ``n_test``,
        ``n_components`` (PCA dims used), ``alpha`` (ridge penalty; NaN for MLP),
        ``pearson_mean`` (mean over targets, NaN targets skipped), ``n_nan``.
    per_sample
        One row per (fold, sample, target) with the Pearson inside that test sample;
        empty when no ``samples`` were given.
    predictions
        ``(n, n_targets)`` out-of-fold predictions in input row order (NaN for rows
        that were never in a test fold).
    targets
        ``(n, n_targets)`` the transformed targets the probe was scored against
        (e.g. log1p counts of the panel).
    target_names
        Names of the target columns.
    params
        The protocol parameters.
    test_rows
        Row positions of each fold's test spots, in ``per_fold`` order (what a readout
        computed after the fact, e.g. [`depth_adjusted`][stalign.bench.depth_adjusted],
        scores over).
    """

    per_target: pd.DataFrame
    per_fold: pd.DataFrame
    per_sample: pd.DataFrame
    predictions: np.ndarray
    targets: np.ndarray
    target_names: list[str]
    params: dict = field(default_factory=dict)
    test_rows: list[np.ndarray] = field(default_factory=list)

    @property
    def mean(self) -> float:
        """Mean over folds of the per-fold mean Pearson (HEST's headline figure)."""
        return float(np.nanmean(self.per_fold["pearson_mean"]))

    @property
    def std(self) -> float:
        """Standard deviation over folds (``ddof=0``, as HEST) of the per-fold mean Pearson."""
        return float(np.nanstd(self.per_fold["pearson_mean"]))

    def target_means(self) -> pd.Series:
        """Pearson per target averaged over folds, sorted decreasing."""
        s = self.per_target.groupby("target", sort=False)["pearson"].mean()
        return s.sort_values(ascending=False)

    def sample_means(self) -> pd.Series:
        """Pearson per test sample (mean over targets); empty without ``samples``."""
        if self.per_sample.empty:
            return pd.Series(dtype=float)
        return self.per_sample.groupby("sample", sort=False)["pearson"].mean()

    def summary(self) -> dict:
        """Headline figures as a flat dict (``pearson_mean``, ``pearson_std``, ...)."""
        out = {
            "pearson_mean": self.mean,
            "pearson_std": self.std,
            "n_folds": len(self.per_fold),
            "n_targets": len(self.target_names),
            "probe": self.params.get("probe"),
        }
        if not self.per_sample.empty:
            sm = self.sample_means()
            out["per_sample_pearson_mean"] = float(sm.mean())
            out["per_sample_pearson_std"] = float(sm.std(ddof=0))
        return out


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


# --------------------------------------------------------------------------------------
# public API


def _gene_targets(Yd, idx: np.ndarray, targets: str) -> np.ndarray:
    """Dense float64 targets of the panel columns ``idx`` of the counts ``Yd``."""
    if targets not in TARGETS:
        msg = f"targets must be one of {TARGETS}, got {targets!r}"
        raise ValueError(msg)
    if targets == "log1p_cp10k":
        from ..pp import lognorm_matrix

        # per spot to 10,000 counts over ALL columns (the library size), then the panel
        Yd = lognorm_matrix(sp.csr_matrix(Yd, dtype=np.float64) if sp.issparse(Yd) else Yd)
    out = Yd[:, idx]
    out = np.asarray(out.toarray() if sp.issparse(out) else out, dtype=np.float64)
    if targets == "log1p":
        if out.min(initial=0) < 0:
            msg = "targets='log1p' expects raw counts in Y (found negative values)"
            raise ValueError(msg)
        out = np.log1p(out)
    return out


def _legacy_protocol(protocol: str, targets: str) -> tuple[str, str]:
    """Map the old ``protocol="none"`` (targets as given) onto ``targets="none"``."""
    if protocol != "none":
        return protocol, targets
    import warnings

    warnings.warn(
        "gene_prediction(protocol='none') is deprecated: use targets='none' "
        "(protocol now names the feature pipeline, 'hest' or 'hest_robust')",
        FutureWarning,
        stacklevel=3,
    )
    return "hest", "none"


def gene_prediction(
    X,
    Y,
    groups,
    *,
    protocol: Protocol = "hest",
    targets: Targets = "log1p",
    gene_names: Sequence[str] | None = None,
    genes: Sequence[str] | None = None,
    samples=None,
    probe: Probe = "ridge",
    n_genes: int = 50,
    min_spot_fraction: float = 0.1,
    pca_dim: int | None = 256,
    folds: str | int = "lopo",
    test_groups: Sequence[str] | None = None,
    alphas: Sequence[float] | None = None,
    max_iter: int = 1000,
    random_state: int = 0,
    mlp_hidden: tuple[int, ...] = (256,),
) -> ProbeResult:
    """Predict gene expression from patch embeddings (HEST-Benchmark protocol).

    With the defaults (``protocol="hest"``, ``targets="log1p"``, ``probe="ridge"``)
    this is the HEST-Benchmark linear probe, step for step:

    1. panel: genes detected in ≥ 10 % of all spots, then the 50 with the largest
       variance of ``log1p(counts)`` ([`hest_gene_panel`][stalign.bench.hest_gene_panel]),
       unless ``genes`` is given;
    2. targets: ``log1p(counts)`` of the panel (no library-size normalisation, as HEST);
    3. per fold, fitted on the training spots only: ``StandardScaler`` → ``PCA(256)``
       (``min(256, n_train, dim)`` components; HEST always asks for 256) →
       ``Ridge(alpha = 100 / (n_components · n_genes), solver="lsqr",
       fit_intercept=False)``; the test features are transformed as they are (nothing
       clipped, no column dropped);
    4. folds: leave one patient (``groups`` value) out;
    5. score: Pearson per gene on the fold's concatenated test spots, averaged over
       genes; reported as mean ± std (``ddof=0``) over folds.

    ``protocol="hest_robust"`` changes step 3 only: columns constant on the training
    spots (sd below 1e-6 of the median feature sd) are dropped, and each test feature
    is clipped to the range it spans on the training spots. It protects the probe from
    ReLU units dead on the training sections and alive on the test ones (which
    standardisation turns into huge values); its numbers are not HEST's.

    ``probe="ridge_cv"`` chooses alpha by an inner grouped CV on the training fold
    (split by ``samples`` when given, else by ``groups``; score = mean Pearson);
    ``probe="mlp"`` fits an ``MLPRegressor`` (one hidden layer, early stopping) on the
    same PCA features with standardised targets. With ``samples`` the Pearson is also
    computed inside each test sample (``ProbeResult.per_sample``).

    Parameters
    ----------
    X
        ``(n_spots, dim)`` embeddings or any image features.
    Y
        ``(n_spots, n_genes_total)`` raw counts (dense or sparse); with
        ``targets="none"`` already-transformed targets used as they are.
    groups
        ``(n_spots,)`` group of each spot (a patient id; or a section id for a split by
        section); one fold per group.
    protocol
        Feature pipeline: ``"hest"`` (HEST-Benchmark exactly) or ``"hest_robust"``.
    targets
        ``"log1p"`` (HEST: ``log1p`` of raw counts), ``"log1p_cp10k"`` (each spot
        scaled to 10,000 counts over all columns of ``Y``, then ``log1p``; the panel is
        still chosen on ``log1p`` raw counts) or ``"none"`` (``Y`` as given, every
        column unless ``genes`` is given).
    gene_names
        Names of ``Y``'s columns (default ``gene_0``, ...).
    genes
        Explicit panel (names in ``gene_names``); skips the HEST panel rule.
    samples
        ``(n_spots,)`` sample (section) id of each spot, for per-sample Pearson and the
        inner CV of ``ridge_cv``.
    probe
        ``"ridge"`` (HEST), ``"ridge_cv"`` or ``"mlp"``.
    n_genes, min_spot_fraction
        Panel rule (HEST: 50 genes, 10 % of spots).
    pca_dim
        PCA components (HEST: 256); ``None`` skips PCA (scaling only).
    folds
        ``"lopo"`` (leave one group out) or ``k`` group folds (groups assigned
        round-robin in order of first appearance).
    test_groups
        A single fixed split instead of ``folds``: these groups are the test set,
        the others the training set (e.g. patients an aligned encoder never saw).
    alphas
        Grid for ``ridge_cv`` (default ``10**-3 … 10**5``).
    max_iter
        Iterations of the lsqr solver / the MLP.
    random_state
        Seed of PCA and the MLP.
    mlp_hidden
        Hidden layer sizes of the MLP probe.

    Returns
    -------
    ProbeResult
        ``.mean`` / ``.std`` are the headline mean ± std over folds; ``.per_target`` /
        ``.per_fold`` / ``.per_sample`` the tidy tables.
    """
    protocol, targets = _legacy_protocol(protocol, targets)
    _check_protocol(protocol)
    Yd = sp.csc_matrix(Y) if sp.issparse(Y) else np.asarray(Y)  # only the panel densified
    if Yd.ndim != 2:
        msg = f"Y must be 2-D (spots × genes), got shape {Yd.shape}"
        raise ValueError(msg)
    names = (
        [f"gene_{i}" for i in range(Yd.shape[1])]
        if gene_names is None
        else [str(x) for x in gene_names]
    )
    if len(names) != Yd.shape[1]:
        msg = f"gene_names has {len(names)} entries but Y has {Yd.shape[1]} columns"
        raise ValueError(msg)
    if genes is not None:
        pos = {n: i for i, n in enumerate(names)}
        missing = [g for g in genes if g not in pos]
        if missing:
            msg = f"genes not found in gene_names: {missing[:10]}"
            raise ValueError(msg)
        idx = np.array([pos[g] for g in genes], dtype=int)
    elif targets != "none":
        idx = hest_gene_panel(Yd, names, n_genes=n_genes, min_spot_fraction=min_spot_fraction)
    else:
        idx = np.arange(Yd.shape[1])
    return _run(
        X,
        _gene_targets(Yd, idx, targets),
        groups,
        [names[i] for i in idx],
        samples=samples,
        probe=probe,
        pca_dim=pca_dim,
        folds=folds,
        test_groups=test_groups,
        alphas=alphas,
        max_iter=max_iter,
        random_state=random_state,
        mlp_hidden=mlp_hidden,
        protocol=protocol,
        params={
            "task": "genes",
            "targets": targets,
            "n_genes": n_genes,
            "min_spot_fraction": min_spot_fraction,
            "panel": [names[i] for i in idx],
        },
    )


def pathway_prediction(
    X,
    scores,
    groups,
    *,
    pathway_names: Sequence[str] | None = None,
    protocol: Protocol = "hest",
    samples=None,
    probe: Probe = "ridge",
    pca_dim: int | None = 256,
    folds: str | int = "lopo",
    test_groups: Sequence[str] | None = None,
    alphas: Sequence[float] | None = None,
    max_iter: int = 1000,
    random_state: int = 0,
    mlp_hidden: tuple[int, ...] = (256,),
) -> ProbeResult:
    """Predict pathway scores from patch embeddings with the HEST probe.

    Identical to [`gene_prediction`][stalign.bench.gene_prediction] (scaler → PCA 256 →
    ridge with ``alpha = 100 / (n_components · n_pathways)``, leave one group out,
    Pearson per pathway on the concatenated test set, mean ± std over folds) except
    that the targets are the pathway scores as given (e.g. ``obsm['pathway_scores']``),
    all columns, without a panel rule or log transform.

    Parameters
    ----------
    X
        ``(n_spots, dim)`` embeddings.
    scores
        ``(n_spots, n_pathways)`` array or DataFrame of pathway scores.
    groups
        ``(n_spots,)`` patient (or section) id of each spot.
    pathway_names
        Column names (taken from a DataFrame's columns when omitted).
    protocol, samples, probe, pca_dim, folds, test_groups, alphas, max_iter, random_state
        As in [`gene_prediction`][stalign.bench.gene_prediction].
    mlp_hidden
        As in [`gene_prediction`][stalign.bench.gene_prediction].

    Returns
    -------
    ProbeResult
        One target per pathway.
    """
    if isinstance(scores, pd.DataFrame):
        names = [str(c) for c in scores.columns] if pathway_names is None else pathway_names
        arr = scores.to_numpy(dtype=np.float64)
    else:
        arr = np.asarray(scores, dtype=np.float64)
        if arr.ndim != 2:
            msg = f"scores must be 2-D (spots × pathways), got shape {arr.shape}"
            raise ValueError(msg)
        names = (
            [f"pathway_{i}" for i in range(arr.shape[1])]
            if pathway_names is None
            else pathway_names
        )
    names = [str(x) for x in names]
    if len(names) != arr.shape[1]:
        msg = f"pathway_names has {len(names)} entries but scores has {arr.shape[1]} columns"
        raise ValueError(msg)
    return _run(
        X,
        arr,
        groups,
        names,
        samples=samples,
        probe=probe,
        pca_dim=pca_dim,
        folds=folds,
        test_groups=test_groups,
        alphas=alphas,
        max_iter=max_iter,
        random_state=random_state,
        mlp_hidden=mlp_hidden,
        protocol=protocol,
        params={"task": "pathways"},
    )
