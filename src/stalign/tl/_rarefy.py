"""Rarefaction: counts drawn without replacement down to a fixed depth per spot.

Every spot keeps exactly ``depth`` of its transcripts, drawn uniformly without
replacement (a multivariate hypergeometric draw over its genes). The draw is

- seeded per spot from ``(random_state, draw, CRC-32 of the spot's barcode)``, so a
  spot's counts do not depend on the other spots (which ones passed QC, the chunking,
  the row order);
- made over the genes in a canonical order (sorted by ``var_names``) and written back
  to the original columns, so it does not depend on the column order either.

``scanpy.pp.downsample_counts`` draws from one random stream across cells in row order
and over the genes in column order, so its result changes with both; it is not used.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["canonical_gene_rank", "rarefy_chunk", "spot_keys"]


def canonical_gene_rank(var_names: pd.Index, *, what: str) -> np.ndarray:
    """Position of every column once the genes are sorted by name (a permutation).

    Raises
    ------
    ValueError
        Duplicated ``var_names`` (their order would decide the result).
    """
    names = np.asarray(var_names.astype(str))
    if pd.Index(names).has_duplicates:
        dup = pd.Index(names)[pd.Index(names).duplicated()].unique()[:3].tolist()
        msg = (
            f"{what} needs unique var_names to put genes in a canonical order; found "
            f"duplicates such as {dup}; call adata.var_names_make_unique() first"
        )
        raise ValueError(msg)
    rank = np.empty(names.size, dtype=np.int64)
    rank[np.argsort(names, kind="stable")] = np.arange(names.size)
    return rank


def spot_keys(obs_names: pd.Index) -> np.ndarray:
    """CRC-32 of every barcode: the spot's part of its rarefaction seed."""
    return np.fromiter(
        (zlib.crc32(str(b).encode("utf-8")) for b in obs_names),
        dtype=np.int64,
        count=len(obs_names),
    )


def rarefy_chunk(
    chunk: sp.csr_matrix,
    depth: int,
    *,
    gene_rank: np.ndarray,
    keys: np.ndarray,
    random_state: int,
    draw: int,
) -> sp.csr_matrix:
    """Rarefy every row of a CSR chunk of raw counts to ``depth`` (rows have >= depth counts).

    Parameters
    ----------
    chunk
        Canonical CSR (sorted indices, no duplicates) of integer counts, one row per
        spot, each with at least ``depth`` counts.
    depth
        Counts kept per spot.
    gene_rank
        [`canonical_gene_rank`][stalign.tl._rarefy.canonical_gene_rank] of the columns.
    keys
        [`spot_keys`][stalign.tl._rarefy.spot_keys] of the rows.
    random_state, draw
        Seed and draw number: row ``i`` draws from
        ``numpy.random.default_rng([random_state, draw, keys[i]])``.

    Returns
    -------
    scipy.sparse.csr_matrix
        float64 counts, same shape, every row summing to ``depth``.
    """
    data = np.asarray(chunk.data)
    if data.size and (data.min() < 0 or not np.array_equal(data, np.round(data))):
        msg = "rarefy_depth needs raw integer counts; found negative or non-integer values"
        raise ValueError(msg)
    out = np.zeros(data.size, dtype=np.float64)
    for i, (lo, hi) in enumerate(_row_bounds(chunk.indptr)):
        cols = chunk.indices[lo:hi]
        order = np.argsort(gene_rank[cols], kind="stable")
        colors = data[lo:hi][order].astype(np.int64)
        rng = np.random.default_rng([int(random_state), int(draw), int(keys[i])])
        picked = rng.multivariate_hypergeometric(colors, int(depth))
        out[lo:hi][order] = picked
    res = sp.csr_matrix((out, chunk.indices.copy(), chunk.indptr.copy()), shape=chunk.shape)
    res.eliminate_zeros()
    return res


def _row_bounds(indptr: np.ndarray) -> Iterator[tuple[int, int]]:
    for i in range(len(indptr) - 1):
        yield int(indptr[i]), int(indptr[i + 1])
