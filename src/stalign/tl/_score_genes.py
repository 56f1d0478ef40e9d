"""scanpy's control-gene-matched ``score_genes`` on genes in a canonical order.

``scanpy.tl.score_genes`` subtracts from the mean of a set's genes the mean of control
genes drawn at random from the same expression bins. Which genes are drawn depends on
the order of ``var_names`` (the draw walks each bin in column order), so stalign puts
the genes in a canonical order (sorted by name) first and calls scanpy on that: the
scores equal ``sc.tl.score_genes`` on the same genes in that order with the same
``random_state``, whatever the order of the input's columns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

__all__ = ["score_genes_matrix"]

logger = logging.getLogger(__name__)


def score_genes_matrix(
    values: sp.csr_matrix,
    var_names: pd.Index,
    gene_rank: np.ndarray,
    set_indices: Sequence[np.ndarray],
    *,
    set_names: Sequence[str],
    ctrl_size: int,
    n_bins: int,
    random_state: int,
) -> np.ndarray:
    """Run ``sc.tl.score_genes`` for every set on log-normalised values, genes sorted by name.

    Parameters
    ----------
    values
        ``(spots, genes)`` log-normalised values (``normalize_total`` + ``log1p``), columns
        in the input's order.
    var_names
        Names of the columns (unique).
    gene_rank
        Position of every column in the canonical order
        ([`canonical_gene_rank`][stalign.tl._rarefy.canonical_gene_rank]).
    set_indices, set_names
        Column positions and name of every set.
    ctrl_size, n_bins, random_state
        Passed to ``sc.tl.score_genes`` (scanpy's defaults: 50, 25, 0).

    Returns
    -------
    numpy.ndarray
        ``(spots, sets)`` float64 scores. numpy's global random state (which scanpy
        seeds) is restored afterwards.
    """
    import scanpy as sc

    order = np.argsort(gene_rank)  # canonical position -> column
    names = np.asarray(var_names.astype(str))[order]
    x = values[:, order] if sp.issparse(values) else np.asarray(values)[:, order]
    tmp = AnnData(
        X=x,
        obs=pd.DataFrame(index=pd.Index([str(i) for i in range(x.shape[0])])),
        var=pd.DataFrame(index=pd.Index(names)),
    )
    out = np.empty((x.shape[0], len(set_indices)), dtype=np.float64)
    state = np.random.get_state()  # noqa: NPY002 (scanpy seeds the legacy global state)
    try:
        for j, (idx, name) in enumerate(zip(set_indices, set_names, strict=True)):
            genes = names[np.sort(gene_rank[np.asarray(idx)])]
            try:
                sc.tl.score_genes(
                    tmp,
                    list(genes),
                    ctrl_size=ctrl_size,
                    n_bins=n_bins,
                    random_state=random_state,
                    score_name="_stalign_score",
                    use_raw=False,
                )
            except (RuntimeError, ValueError) as e:
                msg = f"score_genes failed on gene set {name!r}: {e}"
                raise ValueError(msg) from e
            out[:, j] = tmp.obs["_stalign_score"].to_numpy(np.float64)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return out
