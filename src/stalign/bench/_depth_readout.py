"""Depth-adjusted readout: Pearson net of sequencing depth (a partial correlation).

The HEST readout scores ``log1p`` raw counts, which follow each spot's library size;
any image feature that tracks depth (tissue density, staining) then scores well
without knowing any biology: a colour histogram, or the library size itself. The
depth-adjusted readout removes a smooth function of log library size (a cubic by
default) from the measured targets and from the predictions, fitted on the evaluated
spots, and correlates what is left. A prediction with nothing left beyond depth scores
0; library size alone scores ≈ 0 by construction.

Limits: the adjustment removes what a cubic in log depth explains. A feature that
follows depth along a steeper curve (e.g. ``sqrt(library size)``, whose spread spans
~6× here) keeps a small remainder (up to ~0.04 on the synthetic cohort of the tests).
Depth is also partly biology (cellularity): what is removed is not only noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..pp import regress_out_depth
from ._probe import ProbeResult

__all__ = ["depth_adjusted", "partial_pearson"]

# a residual sum of squares below this fraction of the column's own centred sum of
# squares is float noise: the column was (numerically) a function of depth alone
_NOTHING_LEFT = 1e-10


def _residuals(values: np.ndarray, log_depth: np.ndarray, degree: int) -> tuple[np.ndarray, ...]:
    """Depth residuals of each column and whether anything beyond depth is left."""
    centred = values - values.mean(axis=0)
    total = (centred * centred).sum(axis=0)
    res = regress_out_depth(values, log_depth, degree=degree)
    left = (res * res).sum(axis=0) > _NOTHING_LEFT * total
    return res, left & (total > 0)


def partial_pearson(y_true, y_pred, log_depth, *, degree: int = 3) -> np.ndarray:
    """Pearson per column of ``y_true`` and ``y_pred`` given sequencing depth.

    A polynomial of degree ``degree`` in standardised log library size (with an
    intercept, least squares, [`regress_out_depth`][stalign.pp.regress_out_depth]) is
    regressed out of each column of both matrices over the rows given, then the
    residuals are correlated: the partial correlation given depth.

    Parameters
    ----------
    y_true
        ``(n_spots, n_targets)`` measured targets (e.g. ``log1p`` counts, pathway scores).
    y_pred
        ``(n_spots, n_targets)`` predictions of the same targets.
    log_depth
        ``(n_spots,)`` log library size of each spot
        ([`log_depth`][stalign.pp.log_depth] of the raw counts).
    degree
        Degree of the depth polynomial (3: cubic).

    Returns
    -------
    numpy.ndarray
        ``(n_targets,)`` partial Pearson. A prediction with no variance left beyond
        depth (constant, or a function of depth alone) scores 0; a target with none
        left is NaN (undefined, as a constant target in the plain readout).
    """
    a = np.asarray(y_true, dtype=np.float64)
    b = np.asarray(y_pred, dtype=np.float64)
    a, b = (a[:, None] if a.ndim == 1 else a), (b[:, None] if b.ndim == 1 else b)
    ld = np.asarray(log_depth, dtype=np.float64).ravel()
    if a.shape != b.shape or a.shape[0] != ld.size:
        msg = (
            f"y_true {a.shape}, y_pred {b.shape} and log_depth ({ld.size},) must describe "
            "the same spots and targets"
        )
        raise ValueError(msg)
    ra, left_a = _residuals(a, ld, degree)
    rb, left_b = _residuals(b, ld, degree)
    num = (ra * rb).sum(axis=0)
    den = np.sqrt((ra * ra).sum(axis=0) * (rb * rb).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip(num / den, -1.0, 1.0)
    r[~left_b] = 0.0
    r[~left_a] = np.nan
    return r


def _sample_rows(res: ProbeResult, samples: np.ndarray | None) -> list[tuple]:
    """(fold, sample, test rows) of every test sample."""
    if samples is None:
        return []
    out = []
    for fi, te in enumerate(res.test_rows):
        for smp in dict.fromkeys(samples[te].tolist()):
            out.append((fi, smp, te[samples[te] == smp]))
    return out


def _scores(res: ProbeResult, rows: np.ndarray, ld: np.ndarray, degree: int) -> np.ndarray:
    """Partial Pearson over ``rows``; NaN where too few spots to fit the depth curve."""
    if rows.size <= degree + 2:
        return np.full(len(res.target_names), np.nan)
    return partial_pearson(res.targets[rows], res.predictions[rows], ld[rows], degree=degree)


def depth_adjusted(
    res: ProbeResult,
    log_depth,
    *,
    samples: Sequence[str] | np.ndarray | None = None,
    degree: int = 3,
) -> ProbeResult:
    """Rescore a probe's out-of-fold predictions with the depth-adjusted readout.

    For each fold, over that fold's test spots (``ProbeResult.test_rows``),
    [`partial_pearson`][stalign.bench.partial_pearson] of the measured targets and the
    predictions given log depth, per target; the depth curve is fitted on the evaluated
    (test) spots themselves, so a test patient whose depth range differs from the
    training patients' is adjusted on its own range.

    Parameters
    ----------
    res
        A result of [`gene_prediction`][stalign.bench.gene_prediction] or
        [`pathway_prediction`][stalign.bench.pathway_prediction].
    log_depth
        ``(n_spots,)`` log library size of every spot, in the probe's row order.
    samples
        ``(n_spots,)`` section of each spot: also score inside each test section
        (depth fitted within it).
    degree
        Degree of the depth polynomial.

    Returns
    -------
    ProbeResult
        The same predictions and targets with ``per_target``, ``per_fold`` and
        ``per_sample`` recomputed; ``params["readout"] == "depth_adjusted"``.
    """
    ld = np.asarray(log_depth, dtype=np.float64).ravel()
    if ld.size != res.predictions.shape[0]:
        msg = (
            f"log_depth has {ld.size} entries but the probe scored {res.predictions.shape[0]} spots"
        )
        raise ValueError(msg)
    if not res.test_rows:
        msg = "depth_adjusted needs ProbeResult.test_rows (a result of this stalign version)"
        raise ValueError(msg)
    s = None if samples is None else np.asarray(samples).astype(str)
    rows_t, r_fold, n_nan = [], [], []
    for fi, te in enumerate(res.test_rows):
        r = _scores(res, te, ld, degree)
        rows_t += [
            {"fold": fi, "target": t, "pearson": float(v)}
            for t, v in zip(res.target_names, r, strict=True)
        ]
        r_fold.append(float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"))
        n_nan.append(int(np.isnan(r).sum()))
    per_fold = res.per_fold.copy()
    per_fold["pearson_mean"] = r_fold
    per_fold["n_nan"] = n_nan
    rows_s = []
    for fi, smp, rows in _sample_rows(res, s):
        r = _scores(res, rows, ld, degree)
        rows_s += [
            {"fold": fi, "sample": smp, "target": t, "pearson": float(v)}
            for t, v in zip(res.target_names, r, strict=True)
        ]
    return ProbeResult(
        per_target=pd.DataFrame(rows_t, columns=["fold", "target", "pearson"]),
        per_fold=per_fold,
        per_sample=pd.DataFrame(rows_s, columns=["fold", "sample", "target", "pearson"]),
        predictions=res.predictions,
        targets=res.targets,
        target_names=list(res.target_names),
        params={**res.params, "readout": "depth_adjusted", "depth_degree": degree},
        test_rows=list(res.test_rows),
    )
