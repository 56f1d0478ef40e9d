"""Gene panels for the expression-prediction benchmark (HEST rule)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

__all__ = ["hest_gene_panel"]


_BLOCK_BYTES = 64 * 2**20  # dense float64 columns densified at once from sparse counts


def _detected_fraction(Y) -> np.ndarray:
    """Fraction of spots with a count > 0, per gene (sparse input stays sparse)."""
    if sp.issparse(Y):
        return np.asarray((Y > 0).sum(axis=0), dtype=np.float64).ravel() / Y.shape[0]
    return (Y > 0).mean(axis=0)


def _log1p_var(Y, cols: np.ndarray) -> np.ndarray:
    """Variance over spots of ``log1p`` of the columns ``cols``.

    Sparse counts are densified a block of columns at a time (at most ``_BLOCK_BYTES``),
    so memory does not grow with spots × genes; the arithmetic per column is that of
    the dense path.
    """
    if not sp.issparse(Y):
        return np.log1p(Y[:, cols]).var(axis=0)
    Y = sp.csc_matrix(Y)
    step = max(1, _BLOCK_BYTES // (8 * max(Y.shape[0], 1)))
    parts = [
        np.log1p(np.asarray(Y[:, cols[i : i + step]].toarray(), dtype=np.float64)).var(axis=0)
        for i in range(0, cols.size, step)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def hest_gene_panel(
    counts,
    gene_names: Sequence[str] | None = None,
    *,
    n_genes: int = 50,
    min_spot_fraction: float = 0.1,
) -> np.ndarray:
    """Pick the HEST-Benchmark gene panel from raw counts.

    Rule (HEST-Benchmark, Jaume et al. 2024): keep genes detected (count > 0) in at
    least ``min_spot_fraction`` of all spots of the cohort, transform with
    ``log1p``, and keep the ``n_genes`` genes with the largest variance of the
    log1p values across all spots. Ties are broken by the column order.

    Parameters
    ----------
    counts
        ``(n_spots, n_genes_total)`` raw counts, dense or sparse, all samples stacked
        (sparse counts are never densified whole).
    gene_names
        Names of the columns; only used for error messages.
    n_genes
        Panel size (HEST: 50). When fewer genes pass the filter, all of them are kept.
    min_spot_fraction
        Minimum fraction of spots in which a gene must be detected (HEST: 0.1).

    Returns
    -------
    np.ndarray
        Column indices (into ``counts``) of the panel, sorted by decreasing variance.
    """
    Y = counts if sp.issparse(counts) else np.asarray(counts, dtype=np.float64)
    if Y.ndim != 2:
        msg = f"counts must be a 2-D (spots × genes) matrix, got shape {Y.shape}"
        raise ValueError(msg)
    if not 0.0 <= min_spot_fraction <= 1.0:
        msg = f"min_spot_fraction must be in [0, 1], got {min_spot_fraction}"
        raise ValueError(msg)
    if n_genes < 1:
        msg = f"n_genes must be >= 1, got {n_genes}"
        raise ValueError(msg)
    if (Y.min() if sp.issparse(Y) else np.nanmin(Y)) < 0:
        msg = "counts must be non-negative raw counts (found negative values)"
        raise ValueError(msg)
    detected = _detected_fraction(Y)
    keep = np.flatnonzero(detected >= min_spot_fraction)
    if keep.size == 0:
        where = f" among {len(gene_names)} genes" if gene_names is not None else ""
        msg = (
            f"no gene is detected in >= {min_spot_fraction:.0%} of the {Y.shape[0]} spots"
            f"{where}; pass raw counts or lower min_spot_fraction"
        )
        raise ValueError(msg)
    var = _log1p_var(Y, keep)
    order = np.argsort(-var, kind="stable")
    return keep[order[:n_genes]]
