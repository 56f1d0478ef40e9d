"""Library-size normalisation + log1p (delegates to scanpy)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData


def normalize_log1p(
    adata: AnnData,
    *,
    target_sum: float | None = 1e4,
    layer: str | None = None,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Normalise each spot to ``target_sum`` counts and apply ``log1p`` (scanpy).

    Parameters
    ----------
    adata
        AnnData with raw counts in ``.X`` or ``.layers[layer]``.
    target_sum
        Counts per spot after normalisation (``None``: the median library size,
        scanpy's default, which depends on all spots).
    layer
        Read counts from this layer instead of ``.X``.
    key_added
        Write the result to ``.layers[key_added]``; ``None`` overwrites the input
        (``.X`` or ``.layers[layer]``).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData | None
        ``None``, or the copy when ``copy=True``. Writes ``.layers[key_added]`` (or
        replaces ``.X`` / ``.layers[layer]``) with ``log1p(counts / total * target_sum)``
        and records ``uns['log1p']`` (scanpy).
    """
    adata = adata.copy() if copy else adata
    if layer is not None and layer not in adata.layers:
        msg = f"layer={layer!r} is not in adata.layers (available: {list(adata.layers)})"
        raise KeyError(msg)
    counts = adata.layers[layer] if layer is not None else adata.X
    out = lognorm_matrix(counts, target_sum=target_sum)
    if key_added is not None:
        adata.layers[key_added] = out
    elif layer is not None:
        adata.layers[layer] = out
    else:
        adata.X = out
    adata.uns["log1p"] = {"base": None}
    return adata if copy else None


def lognorm_matrix(counts, *, target_sum: float | None = 1e4):
    """Return ``log1p(counts / row total * target_sum)`` as a new float matrix (scanpy).

    Sparse input stays sparse (CSR); spots with zero counts stay zero.

    Parameters
    ----------
    counts
        ``(n_spots, n_genes)`` array or sparse matrix of non-negative counts.
    target_sum
        Counts per spot after normalisation (``None``: median library size).

    Returns
    -------
    np.ndarray or scipy.sparse.csr_matrix
        Matrix of the same kind (float32 for integer/float32 input, float64 for float64).
    """
    import scanpy as sc

    x = counts
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    x = sp.csr_matrix(x, dtype=dtype, copy=True) if sp.issparse(x) else np.array(x, dtype=dtype)
    tmp = AnnData(x)
    sc.pp.normalize_total(tmp, target_sum=target_sum)
    sc.pp.log1p(tmp)
    return tmp.X
