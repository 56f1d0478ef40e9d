"""Chunked pathway scoring (ssGSEA, AUCell-style, z-score) on CSR chunks of spots.

The per-spot work runs in the numba kernels of `_pathway_kernels`: implicit
zeros form one tied block whose contribution is computed in closed form, so only the
stored non-zeros are sorted. No Python loop runs over spots or gene sets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

from . import _pathway_kernels as _k

SAMPLE_NORM_METHODS = ("rank", "log_rank", "log", "custom")
CORREL_NORM_TYPES = ("rank", "zscore")
#: how ssGSEA orders tied genes: mean rank of the tie (default) or gseapy's column order
SSGSEA_TIES = ("average", "gseapy")


def iter_row_chunks(x, chunk_size: int) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """Yield ``(start, stop, chunk)`` with ``chunk`` a CSR of rows ``start:stop``.

    ``x`` may be a NumPy array, any SciPy sparse matrix, an AnnData backed sparse
    dataset or an h5py dataset: only ``x[start:stop]`` is read per chunk, so memory
    stays bounded by ``chunk_size``. Chunks have sorted indices and no duplicates
    (stored zeros may remain; the kernels skip them).
    """
    if sp.issparse(x) and not isinstance(x, sp.csr_matrix | sp.csr_array):
        x = sp.csr_matrix(x)
    n = x.shape[0]
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        block = x[start:stop]
        chunk = sp.csr_matrix(block) if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
        if not chunk.has_canonical_format:  # copy before sorting: never touch the input
            chunk = chunk.copy()
            chunk.sum_duplicates()
        yield start, stop, chunk


class SetIndex:
    """Gene-set membership in the compact forms the kernels need (built once per call).

    Parameters
    ----------
    indices
        For each set, the sorted, unique gene (column) positions of its members.
    n_genes
        Number of genes (columns).
    """

    def __init__(self, indices: list[np.ndarray], n_genes: int):
        sizes = np.array([len(i) for i in indices], dtype=np.int64)
        genes = np.concatenate(indices).astype(np.int64) if indices else np.empty(0, np.int64)
        set_of = np.repeat(np.arange(len(indices), dtype=np.int64), sizes)
        self.n_genes = n_genes
        self.n_sets = len(indices)
        self.k = sizes.astype(np.float64)
        #: sorted unique member genes; sets as positions into it (CSR over sets)
        self.u_genes, self.set_u = np.unique(genes, return_inverse=True)
        self.set_u = self.set_u.astype(np.int64)
        self.set_ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        #: CSR over genes: the sets each gene belongs to (for the z-score kernel)
        order = np.argsort(genes, kind="stable")
        self.gene_sets = set_of[order]
        self.gene_ptr = np.searchsorted(genes[order], np.arange(n_genes + 1)).astype(np.int64)
        self.is_member = np.zeros(n_genes, dtype=bool)
        self.is_member[self.u_genes] = True
        self._gene_order = order

    def gene_weights(self, per_pair: np.ndarray) -> np.ndarray:
        """Reorder a per-(set, gene) array from set-major into the gene-major CSR order."""
        return np.ascontiguousarray(per_pair[self._gene_order], dtype=np.float64)

    def pair_genes(self) -> np.ndarray:
        """Gene of every (set, gene) pair, set-major."""
        return self.u_genes[self.set_u]

    def pair_sets(self) -> np.ndarray:
        """Set of every (set, gene) pair, set-major."""
        return np.repeat(np.arange(self.n_sets), np.diff(self.set_ptr))


def _csr_arrays(chunk: sp.csr_matrix):
    """Return ``(data, indices, indptr)`` of a canonical CSR chunk, copied only if needed.

    float32/float64 data and int32/int64 indices are passed as they are (the kernels
    compute in float64); other dtypes are converted to float64 / int64.
    """
    data, idx = chunk.data, chunk.indices
    if data.dtype not in (np.float32, np.float64):
        data = data.astype(np.float64)
    if idx.dtype not in (np.int32, np.int64):
        idx = idx.astype(np.int64)
    return data, idx, chunk.indptr.astype(np.int64)


def _n_threads(n_rows: int) -> int:
    """Threads for one chunk: all available cores, at most one per 256 rows."""
    return max(1, min(os.cpu_count() or 1, n_rows // 256))


def _run_threaded(kernel, chunk: sp.csr_matrix, *args) -> np.ndarray:
    """Run a row kernel (it releases the GIL) on contiguous row blocks in threads.

    Rows are independent, so the result does not depend on the number of threads.
    """
    data, indices, indptr = _csr_arrays(chunk)
    n_rows = chunk.shape[0]
    n_thr = _n_threads(n_rows)
    if n_thr == 1:
        return kernel(data, indices, indptr, *args)
    from concurrent.futures import ThreadPoolExecutor

    bounds = np.linspace(0, n_rows, n_thr + 1).astype(int)

    def part(b):
        lo, hi = bounds[b], bounds[b + 1]
        return kernel(data, indices, indptr[lo : hi + 1], *args)

    with ThreadPoolExecutor(n_thr) as pool:
        return np.concatenate(list(pool.map(part, range(n_thr))), axis=0)


def ssgsea_chunk(
    chunk: sp.csr_matrix,
    sets: SetIndex,
    *,
    weight: float = 0.25,
    sample_norm_method: str = "rank",
    correl_norm_type: str = "rank",
    ties: str = "average",
) -> np.ndarray:
    """Raw ssGSEA enrichment scores ``(rows, sets)``.

    As in gseapy (Rust core), each spot's genes are ranked by their normalised value,
    weighted ``|metric| ** weight`` (tied values share a metric) and the score is the
    sum of the running enrichment score,
    ``sum_S w r / sum_S w - (n(n+1)/2 - sum_S r) / (n - k)``, with ``r`` the ascending
    rank (1-based) of a gene. Tied genes get their ``r``

    - ``ties="average"``: the mean of the ranks their tie spans. The score is linear in
      ``r``, so this equals the mean score over all orders of the tied genes and depends
      on the values alone, not on the column order. A set whose genes all weigh 0 (e.g.
      ``sample_norm_method="custom"`` and no counts) is scored with equal weights.
    - ``ties="gseapy"``: ordinal ranks, tied genes in column order (gseapy's stable sort,
      reversed): identical to ``gseapy.ssgsea`` on the same matrix.

    Ranks of the implicit zeros (one tied block after the negatives) are known in
    closed form, so only the stored non-zeros are sorted.
    """
    if ties not in SSGSEA_TIES:
        msg = f"ties must be one of {SSGSEA_TIES}, found {ties!r}"
        raise ValueError(msg)
    return _run_threaded(
        _k.ssgsea_kernel,
        chunk,
        chunk.shape[1],
        _k.SAMPLE_NORM_CODES[sample_norm_method],
        correl_norm_type == "zscore",
        float(weight),
        sets.u_genes,
        sets.set_ptr,
        sets.set_u,
        sets.k,
        ties == "average",
    )


def aucell_chunk(chunk: sp.csr_matrix, sets: SetIndex, *, max_rank: int) -> np.ndarray:
    """AUCell-style recovery AUC ``(rows, sets)`` in [0, 1], ties credited by expectation.

    Genes are ranked by decreasing value (0-based rank ``r``); a set gene at rank
    ``r < K`` (``K = max_rank``) adds ``K - r``; the sum is divided by the maximum,
    reached when the set's genes occupy the top ranks. A gene in a block of tied values
    spanning ranks ``[a, b)`` adds the mean of ``(K - r)_+`` over the block, i.e. the
    expectation over random tie-breaking, so the score is deterministic and does not
    depend on gene order.
    """
    return _run_threaded(
        _k.aucell_kernel, chunk, chunk.shape[1], int(max_rank), sets.u_genes, sets.set_ptr,
        sets.set_u, sets.k,
    )  # fmt: skip


class GeneMoments:
    """Per-gene sums of log-normalised values and of their squares, added chunk by chunk.

    Only genes that belong to a set are accumulated. Rows are added in order, so the
    result does not depend on the chunk size.
    """

    def __init__(self, sets: SetIndex, *, normalize: bool, target_sum: float):
        self.sets = sets
        self.normalize = bool(normalize)
        self.target_sum = float(target_sum)
        self.n = 0
        self.s1 = np.zeros(sets.n_genes)
        self.s2 = np.zeros(sets.n_genes)

    def update(self, chunk: sp.csr_matrix) -> None:
        """Fold the rows of ``chunk`` (raw counts, or values when not normalising)."""
        data, indices, indptr = _csr_arrays(chunk)
        _k.lognorm_gene_moments(
            data, indices, indptr, self.normalize, self.target_sum, self.sets.is_member,
            self.s1, self.s2,
        )  # fmt: skip
        self.n += chunk.shape[0]

    def mean(self) -> np.ndarray:
        """Per-gene mean over all spots added."""
        return self.s1 / max(self.n, 1)

    def std(self, ddof: int = 1) -> np.ndarray:
        """Per-gene standard deviation."""
        m2 = self.s2 - self.s1 * self.mean()
        return np.sqrt(np.maximum(m2, 0.0) / max(self.n - ddof, 1))


def zscore_weights(moments: GeneMoments) -> tuple[np.ndarray, np.ndarray]:
    """Per (gene, set) weights ``1 / (sd_g k_s)`` (gene-major) and per-set offsets.

    ``mean_g (y_g - mu_g) / sd_g = sum_g y_g / (sd_g k) - sum_g mu_g / (sd_g k)``: the
    first term needs only the stored entries, the second is one constant per set.
    Constant genes (``sd = 0``) contribute ``z = 0`` (as ``scanpy.pp.scale``).
    """
    sets = moments.sets
    sd = moments.std(ddof=1)
    sd[sd == 0] = 1.0
    genes, set_of = sets.pair_genes(), sets.pair_sets()
    w = 1.0 / (sd[genes] * sets.k[set_of])
    offset = np.bincount(set_of, weights=w * moments.mean()[genes], minlength=sets.n_sets)
    return sets.gene_weights(w), offset


def zscore_chunk(
    chunk: sp.csr_matrix, moments: GeneMoments, weights: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Mean over set genes of per-gene z-scores, ``(rows, sets)`` (see `zscore_weights`)."""
    sets = moments.sets
    w, offset = weights
    out = _run_threaded(
        _k.lognorm_set_sums, chunk, moments.normalize, moments.target_sum, sets.n_sets,
        sets.gene_ptr, sets.gene_sets, w,
    )  # fmt: skip
    out -= offset[None, :]
    return out


#: decoupler's guard against ``r = ±1`` in the t-value of the slope
_ULM_EPS = 2.2e-16


def ulm_chunk(
    chunk: sp.csr_matrix, sets: SetIndex, *, normalize: bool, target_sum: float
) -> np.ndarray:
    """Univariate linear model per spot and set: t-value of the slope, ``(rows, sets)``.

    Per spot, the log-normalised values ``y`` of all ``n`` genes are regressed on the
    set indicator ``x`` (1 for the ``k`` set genes); the score is the t-value of the
    slope, ``r sqrt((n - 2) / ((1 - r)(1 + r)))`` with ``r`` the Pearson correlation of
    ``x`` and ``y``, as ``decoupler.mt.ulm`` computes it on the same matrix. Only sums
    are needed (``sum y``, ``sum y**2`` over the spot, ``sum y`` over each set), so
    zeros cost nothing. A spot whose genes are all equal (no counts) scores 0
    (decoupler: NaN).
    """
    data, _, indptr = _csr_arrays(chunk)
    n = float(sets.n_genes)
    k = sets.k[None, :]
    ones = sets.gene_weights(np.ones(sets.set_u.size))
    set_sum = _run_threaded(
        _k.lognorm_set_sums, chunk, normalize, float(target_sum), sets.n_sets, sets.gene_ptr,
        sets.gene_sets, ones,
    )  # fmt: skip
    moments = _k.lognorm_row_moments(data, indptr, normalize, float(target_sum))
    s1, s2 = moments[:, :1], moments[:, 1:]
    cov = set_sum - k * s1 / n  # (n - 1) * covariance of x and y
    var_x = k - k * k / n  # (n - 1) * variance of x
    var_y = np.maximum(s2 - s1 * s1 / n, 0.0)  # (n - 1) * variance of y
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(var_y > 0, cov / np.sqrt(var_x * var_y), 0.0)
        r = np.clip(r, -1.0, 1.0)
        return r * np.sqrt((n - 2.0) / ((1.0 - r + _ULM_EPS) * (1.0 + r + _ULM_EPS)))
