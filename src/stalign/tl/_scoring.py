"""Vectorised, chunked pathway-scoring kernels (ssGSEA, AUCell-style, z-score).

All kernels work on CSR chunks of spots: implicit zeros form one tied block whose
contribution is computed in closed form, so only the stored non-zeros are sorted.
No Python loop runs over spots or gene sets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

SAMPLE_NORM_METHODS = ("rank", "log_rank", "log", "custom")
CORREL_NORM_TYPES = ("rank", "zscore")


def iter_row_chunks(x, chunk_size: int) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """Yield ``(start, stop, chunk)`` with ``chunk`` a float64 CSR of rows ``start:stop``.

    ``x`` may be a NumPy array, any SciPy sparse matrix, an AnnData backed sparse
    dataset or an h5py dataset: only ``x[start:stop]`` is read per chunk, so memory
    stays bounded by ``chunk_size``. Chunks have sorted indices and no stored zeros.
    """
    if sp.issparse(x) and not isinstance(x, sp.csr_matrix | sp.csr_array):
        x = sp.csr_matrix(x)
    n = x.shape[0]
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        block = x[start:stop]
        if sp.issparse(block):
            chunk = sp.csr_matrix(block, dtype=np.float64, copy=True)
        else:
            chunk = sp.csr_matrix(np.asarray(block, dtype=np.float64))
        chunk.sum_duplicates()
        chunk.eliminate_zeros()
        chunk.sort_indices()
        yield start, stop, chunk


@dataclass
class _RowRanks:
    """Per stored entry of a CSR chunk: its rank among the row's stored entries."""

    row: np.ndarray  # row of each entry (original CSR order)
    pos: np.ndarray  # 0-based ordinal rank, ascending value, ties by column
    first: np.ndarray  # 0-based rank of the first entry of its tie run
    last: np.ndarray  # 0-based rank of the last entry of its tie run
    nnz_row: np.ndarray  # stored entries per row
    n_neg_row: np.ndarray  # stored negative entries per row


def _rank_rows(chunk: sp.csr_matrix) -> _RowRanks:
    """Rank the stored values of every row (ascending; ties broken by column)."""
    n_rows, n_cols = chunk.shape
    indptr = chunk.indptr.astype(np.int64)
    nnz_row = np.diff(indptr)
    row = np.repeat(np.arange(n_rows, dtype=np.int64), nnz_row)
    v = chunk.data
    nnz = v.size
    if nnz == 0:
        e = np.empty(0, dtype=np.int64)
        return _RowRanks(row, e, e, e, nnz_row, np.zeros(n_rows, dtype=np.int64))
    col = chunk.indices.astype(np.int64)
    vmin, vmax = float(v.min()), float(v.max())
    integer = vmin >= 0 and vmax < 2**20 and np.array_equal(v, np.round(v))
    if integer and n_rows * (vmax + 1) * n_cols < 2**62:
        key = (row * int(vmax + 1) + v.astype(np.int64)) * n_cols + col
        order = np.argsort(key)
    else:  # stable: ties keep CSR (column) order
        order = np.lexsort((v, row))
    sv = v[order]
    srow = row[order]
    idx = np.arange(nnz, dtype=np.int64)
    pos_sorted = idx - indptr[srow]
    new_run = np.empty(nnz, dtype=bool)
    new_run[0] = True
    new_run[1:] = (srow[1:] != srow[:-1]) | (sv[1:] != sv[:-1])
    run_start = np.maximum.accumulate(np.where(new_run, idx, 0))
    end_run = np.empty(nnz, dtype=bool)
    end_run[-1] = True
    end_run[:-1] = new_run[1:]
    run_end = np.minimum.accumulate(np.where(end_run, idx, nnz)[::-1])[::-1]
    pos = np.empty(nnz, dtype=np.int64)
    first = np.empty(nnz, dtype=np.int64)
    last = np.empty(nnz, dtype=np.int64)
    pos[order] = pos_sorted
    first[order] = run_start - indptr[srow]
    last[order] = run_end - indptr[srow]
    n_neg_row = np.bincount(row[v < 0], minlength=n_rows).astype(np.int64)
    return _RowRanks(row, pos, first, last, nnz_row, n_neg_row)


def _like(chunk: sp.csr_matrix, data: np.ndarray) -> sp.csr_matrix:
    """CSR with ``chunk``'s structure and new ``data``."""
    return sp.csr_matrix((data, chunk.indices, chunk.indptr), shape=chunk.shape)


class SetMatrices:
    """Gene-set membership in the forms the kernels need (built once per call)."""

    def __init__(self, indices: list[np.ndarray], n_genes: int):
        n_sets = len(indices)
        rows = np.concatenate(indices) if indices else np.empty(0, dtype=np.int64)
        cols = np.repeat(np.arange(n_sets), [len(i) for i in indices])
        self.n_genes = n_genes
        self.member = sp.csr_matrix(
            (np.ones(rows.size), (rows, cols)), shape=(n_genes, n_sets), dtype=np.float64
        )
        self.k = np.array([len(i) for i in indices], dtype=np.float64)
        # sum over set genes of (g + 1), for the ordinal ranks of tied zeros
        self.sum_g1 = np.array([(i + 1).sum() for i in indices], dtype=np.float64)
        # greater[h, s] = #{g in s : g > h}; only needed at stored columns
        dense = self.member.toarray()
        self.greater = np.ascontiguousarray(self.k[None, :] - np.cumsum(dense, axis=0))

    def dot(self, chunk: sp.csr_matrix, data: np.ndarray) -> np.ndarray:
        """Return ``chunk_with(data) @ member`` as a dense ``(rows, sets)`` array."""
        return np.asarray((_like(chunk, data) @ self.member).todense())


def ssgsea_chunk(
    chunk: sp.csr_matrix,
    sets: SetMatrices,
    *,
    weight: float = 0.25,
    sample_norm_method: str = "rank",
    correl_norm_type: str = "rank",
) -> np.ndarray:
    """Raw ssGSEA enrichment scores ``(rows, sets)`` exactly as ``gseapy.ssgsea`` computes them.

    gseapy (Rust core) ranks each spot's normalised values in descending order with a
    stable sort reversed (ties: later genes first), weights ``|metric| ** weight`` and
    returns ``sum_S w r / sum_S w - (n(n+1)/2 - sum_S r) / (n - k)`` with ``r`` the
    ascending ordinal rank (1-based). Here the ranks of the implicit zeros are summed
    in closed form.
    """
    n = chunk.shape[1]
    if sample_norm_method == "log":
        # values <= 1 all become 1 before log(x + e): they tie with the zero block
        chunk = chunk.copy()
        chunk.data[chunk.data <= 1] = 0.0
        chunk.eliminate_zeros()
    rr = _rank_rows(chunk)
    v = chunk.data
    n_rows = chunk.shape[0]
    n_zero = (n - rr.nnz_row).astype(np.float64)
    n_neg = rr.n_neg_row.astype(np.float64)
    pos_offset = np.where(v > 0, n_zero[rr.row], 0.0)
    ordinal = rr.pos + 1.0 + pos_offset
    avg_rank = (rr.first + rr.last) / 2.0 + 1.0 + pos_offset
    avg_rank0 = n_neg + (n_zero + 1.0) / 2.0

    if sample_norm_method == "rank":
        metric = 10000.0 * avg_rank / n
        metric0 = 10000.0 * avg_rank0 / n
    elif sample_norm_method == "log_rank":
        metric = np.log(10000.0 * avg_rank / n + np.e)
        metric0 = np.log(10000.0 * avg_rank0 / n + np.e)
    elif sample_norm_method == "log":
        metric = np.log(v + np.e)
        metric0 = np.full(n_rows, np.log(1.0 + np.e))
    elif sample_norm_method == "custom":
        metric = v.copy()
        metric0 = np.zeros(n_rows)
    else:  # pragma: no cover - validated by the caller
        raise ValueError(sample_norm_method)

    if weight > 0 and correl_norm_type == "zscore":
        s1 = np.bincount(rr.row, weights=metric, minlength=n_rows) + n_zero * metric0
        mean = s1 / n
        dev = metric - mean[rr.row]
        var = (np.bincount(rr.row, weights=dev * dev, minlength=n_rows)
               + n_zero * (metric0 - mean) ** 2) / n  # fmt: skip
        sd = np.sqrt(var)
        with np.errstate(divide="ignore", invalid="ignore"):
            metric = dev / sd[rr.row]
            metric0 = (metric0 - mean) / sd
    w = np.abs(metric) ** weight
    w0 = np.abs(metric0) ** weight

    k = sets.k
    ones = np.ones_like(v)
    k_nz = sets.dot(chunk, ones)
    k_zero = k[None, :] - k_nz
    sum_w_nz = sets.dot(chunk, w)
    sum_wo_nz = sets.dot(chunk, w * ordinal)
    sum_o_nz = sets.dot(chunk, ordinal)
    col = chunk.indices
    # ordinal rank of a zero gene g: n_neg + (g + 1) - #(stored entries with column < g)
    nz_before = (np.arange(v.size) - chunk.indptr[rr.row]).astype(np.float64)
    sum_g1_nz = sets.dot(chunk, col + 1.0)
    # sum over all g in S of #(stored entries before g) = sum over stored h of #{g in S: g > h}
    before_all = np.asarray(_like(chunk, ones) @ sets.greater)
    before_nz = sets.dot(chunk, nz_before)
    zero_ord = (
        n_neg[:, None] * k_zero + (sets.sum_g1[None, :] - sum_g1_nz) - (before_all - before_nz)
    )
    a = sum_wo_nz + w0[:, None] * zero_ord
    b = sum_w_nz + w0[:, None] * k_zero
    c = sum_o_nz + zero_ord
    with np.errstate(divide="ignore", invalid="ignore"):
        es = a / b - (n * (n + 1) / 2.0 - c) / (n - k[None, :])
    return es


def aucell_chunk(chunk: sp.csr_matrix, sets: SetMatrices, *, max_rank: int) -> np.ndarray:
    """AUCell-style recovery AUC ``(rows, sets)`` in [0, 1], ties credited by expectation.

    Genes are ranked by decreasing value (0-based rank ``r``); a set gene at rank
    ``r < K`` (``K = max_rank``) adds ``K - r``; the sum is divided by the maximum,
    reached when the set's genes occupy the top ranks. A gene in a block of tied values
    spanning ranks ``[a, b)`` adds the mean of ``(K - r)_+`` over the block, i.e. the
    expectation over random tie-breaking, so the score is deterministic and does not
    depend on gene order.
    """
    n = chunk.shape[1]
    kk = float(max_rank)
    rr = _rank_rows(chunk)
    v = chunk.data
    n_zero = (n - rr.nnz_row).astype(np.float64)
    n_pos = (rr.nnz_row - rr.n_neg_row).astype(np.float64)
    greater = (rr.nnz_row[rr.row] - 1 - rr.last).astype(np.float64)
    a = greater + np.where(v < 0, n_zero[rr.row], 0.0)
    b = a + (rr.last - rr.first + 1)
    credit = _block_credit(a, b, kk)
    credit0 = _block_credit(n_pos, n_pos + n_zero, kk)
    k_nz = sets.dot(chunk, np.ones_like(v))
    auc = sets.dot(chunk, credit) + credit0[:, None] * (sets.k[None, :] - k_nz)
    m = np.minimum(sets.k, kk)
    max_auc = _tri(kk) - _tri(kk - m)
    return auc / max_auc[None, :]


def _tri(x):
    return x * (x + 1.0) / 2.0


def _block_credit(a, b, kk: float):
    """Mean of ``max(K - r, 0)`` over integer ranks ``r`` in ``[a, b)``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    top = np.minimum(b, kk)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(a < kk, (_tri(kk - a) - _tri(kk - top)) / np.maximum(b - a, 1.0), 0.0)
    return c


@dataclass
class GeneMoments:
    """Running per-gene mean / M2 (Chan et al. parallel update)."""

    n: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, n_genes: int) -> GeneMoments:
        return cls(0, np.zeros(n_genes), np.zeros(n_genes))

    def update(self, x: sp.csr_matrix) -> None:
        """Fold the rows of ``x`` into the running moments."""
        nb = x.shape[0]
        if nb == 0:
            return
        mean_b = np.asarray(x.sum(axis=0)).ravel() / nb
        sq = np.asarray(x.multiply(x).sum(axis=0)).ravel()
        m2_b = sq - nb * mean_b**2
        n = self.n + nb
        delta = mean_b - self.mean
        self.mean = self.mean + delta * nb / n
        self.m2 = self.m2 + m2_b + delta**2 * self.n * nb / n
        self.n = n

    def std(self, ddof: int = 1) -> np.ndarray:
        """Per-gene standard deviation."""
        return np.sqrt(np.maximum(self.m2, 0.0) / max(self.n - ddof, 1))
