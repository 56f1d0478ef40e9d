"""Gene panels for the expression-prediction benchmark (HEST rule)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["HEST_MIN_SPOT_FRACTION", "HEST_N_GENES", "hest_gene_panel", "panel_from_blocks"]


#: HEST-Benchmark's panel rule (Jaume et al. 2024): genes detected in >= 10 % of the spots,
#: then the 50 with the largest variance of log1p(counts) across all spots
HEST_N_GENES = 50
HEST_MIN_SPOT_FRACTION = 0.1
_ROWS = 512  # rows densified (float64) at once


def dense_row_blocks(X, rows: int = _ROWS) -> Iterator[np.ndarray]:
    """Dense float64 row blocks of a (sparse) matrix, ``rows`` at a time."""
    for start in range(0, X.shape[0], rows):
        block = X[start : start + rows]
        yield np.asarray(block.toarray() if hasattr(block, "toarray") else block, np.float64)


def _accumulate(total: np.ndarray, block: np.ndarray) -> np.ndarray:
    """Column sums continued over ``block``'s rows one by one (numpy's order on axis 0)."""
    return np.add.reduce(np.vstack([total, block]), axis=0)


def panel_from_blocks(
    blocks: Callable[[np.ndarray | None], Iterable[Any]],
    n_spots: int,
    n_columns: int,
    *,
    n_genes: int = HEST_N_GENES,
    min_spot_fraction: float = HEST_MIN_SPOT_FRACTION,
    what: str = "counts",
) -> np.ndarray:
    """Apply the HEST panel rule to counts read in row blocks: the one implementation.

    ``blocks(cols)`` yields the counts' rows, all ``n_spots`` of them in the same order at
    every call, as matrices (dense or ``scipy.sparse``) of the columns ``cols`` (``None``:
    all ``n_columns``). The detection pass counts spots with a count > 0; the mean and the
    variance of ``log1p`` accumulate row by row, the order numpy's column reductions use,
    so the panel does not depend on how the rows are blocked (one matrix, samples read one
    at a time). See `hest_gene_panel` for the rule and the returned indices; ``what``
    names the counts in errors.
    """
    if not 0.0 <= min_spot_fraction <= 1.0:
        msg = f"min_spot_fraction must be in [0, 1], got {min_spot_fraction}"
        raise ValueError(msg)
    if n_genes < 1:
        msg = f"n_genes must be >= 1, got {n_genes}"
        raise ValueError(msg)
    detected = np.zeros(n_columns)
    for X in blocks(None):
        if (X.min() if sp.issparse(X) else np.nanmin(X)) < 0:
            msg = f"{what} must be non-negative raw counts (found negative values)"
            raise ValueError(msg)
        detected += np.asarray((X > 0).sum(axis=0), dtype=np.float64).ravel()
    keep = np.flatnonzero(detected / n_spots >= min_spot_fraction)
    if keep.size == 0:
        msg = (
            f"no gene is detected in >= {min_spot_fraction:.0%} of the {n_spots} spots in "
            f"{what} ({n_columns} genes); pass raw counts or lower min_spot_fraction"
        )
        raise ValueError(msg)
    total = np.zeros(keep.size)
    for X in blocks(keep):
        for block in dense_row_blocks(X):
            total = _accumulate(total, np.log1p(block))
    mean = total / n_spots
    sq = np.zeros(keep.size)
    for X in blocks(keep):
        for block in dense_row_blocks(X):
            d = np.log1p(block) - mean
            sq = _accumulate(sq, d * d)
    order = np.argsort(-(sq / n_spots), kind="stable")
    return keep[order[:n_genes]]


def hest_gene_panel(
    counts,
    gene_names: Sequence[str] | None = None,
    *,
    n_genes: int = HEST_N_GENES,
    min_spot_fraction: float = HEST_MIN_SPOT_FRACTION,
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
        Names of the columns (the rule does not need them; accepted as before).
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

    def blocks(cols: np.ndarray | None) -> Iterator[Any]:
        if cols is None:
            yield Y
        elif sp.issparse(Y):  # the kept columns only, row-sliceable
            yield sp.csr_matrix(sp.csc_matrix(Y)[:, cols])
        else:
            yield from (Y[s : s + _ROWS, cols] for s in range(0, Y.shape[0], _ROWS))

    return panel_from_blocks(
        blocks, Y.shape[0], Y.shape[1], n_genes=n_genes, min_spot_fraction=min_spot_fraction
    )
