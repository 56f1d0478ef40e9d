"""Gene panels for the expression-prediction benchmark (HEST rule)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

__all__ = ["hest_gene_panel"]


def _as_dense(Y) -> np.ndarray:
    if sp.issparse(Y):
        return np.asarray(Y.toarray(), dtype=np.float64)
    return np.asarray(Y, dtype=np.float64)


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
        ``(n_spots, n_genes_total)`` raw counts, dense or sparse, all samples stacked.
    gene_names
        Names of the columns; only used for error messages.
    n_genes
        Panel size (HEST: 50). When fewer genes pass the filter, all of them are kept.
    min_spot_fraction
        Minimum fraction of spots in which a gene must be detected (HEST: 0.1).

    Returns
    -------
    Column indices (into ``counts``) of the panel, sorted by decreasing variance.
    """
    Y = _as_dense(counts)
    if Y.ndim != 2:
        msg = f"counts must be a 2-D (spots × genes) matrix, got shape {Y.shape}"
        raise ValueError(msg)
    if not 0.0 <= min_spot_fraction <= 1.0:
        msg = f"min_spot_fraction must be in [0, 1], got {min_spot_fraction}"
        raise ValueError(msg)
    if n_genes < 1:
        msg = f"n_genes must be >= 1, got {n_genes}"
        raise ValueError(msg)
    if np.nanmin(Y) < 0:
        msg = "counts must be non-negative raw counts (found negative values)"
        raise ValueError(msg)
    detected = (Y > 0).mean(axis=0)
    keep = np.flatnonzero(detected >= min_spot_fraction)
    if keep.size == 0:
        where = f" among {len(gene_names)} genes" if gene_names is not None else ""
        msg = (
            f"no gene is detected in >= {min_spot_fraction:.0%} of the {Y.shape[0]} spots"
            f"{where}; pass raw counts or lower min_spot_fraction"
        )
        raise ValueError(msg)
    var = np.log1p(Y[:, keep]).var(axis=0)
    order = np.argsort(-var, kind="stable")
    return keep[order[:n_genes]]
