"""Sequencing depth as a covariate: log library size and its regression out of values.

Depth (total counts per spot) is partly biology (cellularity) and partly capture
efficiency. A pathway score or a prediction that follows depth tells little about
what an image encoder learnt, so readouts and training targets can remove a smooth
function of log depth: a polynomial (cubic by default) in standardised log library
size, fitted by least squares with an intercept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["DepthRegression", "log_depth", "regress_out_depth"]


def log_depth(counts: Any) -> np.ndarray:
    """Return ``log(total counts)`` per row of a raw-count matrix (spots × genes).

    Rows with no counts get ``log(1) = 0`` rather than ``-inf``.

    Parameters
    ----------
    counts
        Raw integer counts, dense or sparse, ``(n_spots, n_genes)``; or a 1-D array of
        library sizes already summed per spot.

    Raises
    ------
    ValueError
        Negative values (not raw counts) or a matrix of more than 2 dimensions.
    """
    if sp.issparse(counts):
        total = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    else:
        arr = np.asarray(counts, dtype=np.float64)
        if arr.ndim > 2:
            msg = f"counts must be 1-D (library sizes) or 2-D (spots × genes), got {arr.shape}"
            raise ValueError(msg)
        total = arr if arr.ndim == 1 else arr.sum(axis=1)
    if total.size and np.nanmin(total) < 0:
        msg = "counts must be raw, non-negative counts (found a negative total per spot)"
        raise ValueError(msg)
    return np.log(np.maximum(total, 1.0))


def _as_2d(values: Any, n: int, name: str) -> tuple[np.ndarray, bool]:
    arr = np.asarray(values, dtype=np.float64)
    one_d = arr.ndim == 1
    if one_d:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n:
        msg = f"{name} must have {n} rows (one per spot, like log_depth), got shape {arr.shape}"
        raise ValueError(msg)
    return arr, one_d


@dataclass
class DepthRegression:
    """Regress a polynomial in standardised log depth out of each column of a matrix.

    ``fit`` learns, per column, the least-squares coefficients of
    ``1, z, z², …, z^degree`` with ``z = (log_depth - centre) / scale`` (centre and scale
    from the fitted rows); ``transform`` returns the residuals. Fitted on training spots
    only, it is a transform that can be saved (``to_dict``) and applied to other spots;
    fitted on the evaluated spots themselves it gives the residuals of a partial
    correlation.

    Parameters
    ----------
    degree
        Polynomial degree in log depth (3: cubic). ``0`` only removes the mean.
    """

    degree: int = 3
    centre: float = 0.0
    scale: float = 1.0
    coef: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.degree, bool) or not isinstance(self.degree, int) or self.degree < 0:
            msg = f"DepthRegression.degree: expected a non-negative integer, got {self.degree!r}"
            raise ValueError(msg)

    def _basis(self, log_depth: np.ndarray) -> np.ndarray:
        z = (np.asarray(log_depth, dtype=np.float64).ravel() - self.centre) / self.scale
        return np.vander(z, self.degree + 1, increasing=True)

    def fit(self, values: Any, log_depth: Any) -> DepthRegression:
        """Fit the coefficients on these rows; returns ``self``.

        Raises
        ------
        ValueError
            Mismatched rows, non-finite inputs, or fewer rows than coefficients.
        """
        ld = np.asarray(log_depth, dtype=np.float64).ravel()
        y, _ = _as_2d(values, ld.size, "values")
        if not (np.isfinite(ld).all() and np.isfinite(y).all()):
            msg = "DepthRegression.fit: values and log_depth must be finite"
            raise ValueError(msg)
        if ld.size <= self.degree:
            msg = f"DepthRegression.fit: need more than {self.degree} spots, got {ld.size}"
            raise ValueError(msg)
        self.centre = float(ld.mean())
        sd = float(ld.std())
        self.scale = sd if sd > 0 else 1.0
        coef, *_ = np.linalg.lstsq(self._basis(ld), y, rcond=None)
        self.coef = coef
        return self

    def transform(self, values: Any, log_depth: Any) -> np.ndarray:
        """Return ``values`` minus the fitted depth curve (same shape as ``values``)."""
        if self.coef is None:
            msg = "DepthRegression.transform: call fit first"
            raise RuntimeError(msg)
        ld = np.asarray(log_depth, dtype=np.float64).ravel()
        y, one_d = _as_2d(values, ld.size, "values")
        if y.shape[1] != self.coef.shape[1]:
            msg = (
                f"DepthRegression.transform: values have {y.shape[1]} columns, the fit had "
                f"{self.coef.shape[1]}"
            )
            raise ValueError(msg)
        res = y - self._basis(ld) @ self.coef
        return res[:, 0] if one_d else res

    def fit_transform(self, values: Any, log_depth: Any) -> np.ndarray:
        """``fit`` then ``transform`` on the same rows (the residuals of the fit)."""
        return self.fit(values, log_depth).transform(values, log_depth)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (for checkpoints and run configs)."""
        return {
            "degree": self.degree,
            "centre": self.centre,
            "scale": self.scale,
            "coef": None if self.coef is None else self.coef.tolist(),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> DepthRegression:
        """Rebuild a fitted transform from `to_dict`'s output."""
        coef = state.get("coef")
        return cls(
            degree=int(state["degree"]),
            centre=float(state["centre"]),
            scale=float(state["scale"]),
            coef=None if coef is None else np.asarray(coef, dtype=np.float64),
        )


def regress_out_depth(values: Any, log_depth: Any, degree: int = 3) -> np.ndarray:
    """Residuals of ``values`` (per column) after a degree-``degree`` polynomial in log depth.

    Fitted on the rows given (in-sample), as in a partial correlation given depth.
    """
    return DepthRegression(degree=degree).fit_transform(values, log_depth)
