"""What a probe returns, and the settings every probe shares.

``ProbeResult`` (per-target and per-fold Pearson r, out-of-fold predictions), the
protocols and target transforms, ``pearson_columns``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

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
