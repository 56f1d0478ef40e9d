"""Numba kernels for pathway scoring: one pass per spot over its stored non-zeros.

Every kernel loops over the rows (spots) of a CSR chunk and releases the GIL, so
callers can run row blocks in threads. Per spot only the stored non-zero values are
ranked (count data through a lookup table, other values by a sort); the implicit
zeros form one tied block whose ranks are known in closed form. Gene sets enter through

- ``u_genes``: the sorted, unique gene columns that belong to at least one set, and
- ``set_ptr`` / ``set_u``: a CSR over sets listing positions into ``u_genes``,

so the per-spot cost is ``O(nnz log nnz + len(u_genes) + total set size)``, independent
of the number of genes outside the sets. Rows are independent, hence results are
deterministic and do not depend on the number of threads or on the chunking.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: ssGSEA sample normalisations, as integer codes for the kernel
SAMPLE_NORM_CODES = {"rank": 0, "log_rank": 1, "log": 2, "custom": 3}

_JIT = dict(cache=True, nogil=True, error_model="numpy")


#: Ciura's gap sequence, extended by x2.25 (shell sort)
_GAPS = np.array([1, 4, 10, 23, 57, 132, 301, 701, 1750, 3937, 8858, 19930, 44842, 100894,
                  227011, 510774, 1149241, 2585792, 5818032, 13090572], dtype=np.int64)  # fmt: skip


@njit(**_JIT)
def _shell_sort(a, m):
    """Sort ``a[:m]`` ascending in place (shell sort: compiles fast, quick for small rows)."""
    k = 0
    while k + 1 < _GAPS.size and _GAPS[k + 1] < m:
        k += 1
    while k >= 0:
        gap = _GAPS[k]
        for i in range(gap, m):
            x = a[i]
            j = i
            while j >= gap and a[j - gap] > x:
                a[j] = a[j - gap]
                j -= gap
            a[j] = x
        k -= 1


#: integer values up to this are ranked with a lookup table instead of a sort
INT_TABLE_SIZE = 1 << 16


@njit(**_JIT)
def _row_runs(v, m, run_val, run_start, run_len, run_of, slot, sv):
    """Group ``v[:m]`` into runs of tied values, in ascending value order.

    Fills ``run_val[t]``, ``run_start[t]`` (0-based ascending position of the run's
    first entry) and ``run_len[t]`` for every run ``t``, and ``run_of[j]`` (the run of
    entry ``j``); returns the number of runs. Count data (positive integers below
    ``slot.size``) take a fast path: the few distinct values are found through the
    lookup table ``slot`` (all ``-1`` on entry and on exit) and only they are sorted.
    Other values are sorted in full (``sv`` is scratch).
    """
    q = 0
    for j in range(m):
        x = v[j]
        if not (x >= 1.0 and x < slot.size and x == np.floor(x)):
            for t in range(q):  # leave the table clean for the next row
                slot[int(run_val[t])] = -1
            q = -1
            break
        k = int(x)
        if slot[k] < 0:
            slot[k] = q
            run_val[q] = x
            q += 1
        run_of[j] = slot[k]
    if q >= 0:
        # slot order -> sorted order of the distinct values
        for t in range(q):
            sv[t] = run_val[t]
        _shell_sort(sv, q)
        for t in range(q):
            slot[int(sv[t])] = t
        for t in range(q):
            run_val[t] = sv[t]
            run_len[t] = 0
        for j in range(m):
            t = slot[int(v[j])]
            run_of[j] = t
            run_len[t] += 1
        start = 0
        for t in range(q):
            run_start[t] = start
            start += run_len[t]
            slot[int(run_val[t])] = -1
        return q
    for j in range(m):  # generic values: full sort, then binary search per entry
        sv[j] = v[j]
    _shell_sort(sv, m)
    q = 0
    for i in range(m):
        if i == 0 or sv[i] != sv[i - 1]:
            run_val[q] = sv[i]
            run_start[q] = i
            run_len[q] = 0
            q += 1
        run_len[q - 1] += 1
    for j in range(m):
        lo, hi = 0, q - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if run_val[mid] < v[j]:
                lo = mid + 1
            else:
                hi = mid
        run_of[j] = lo
    return q


@njit(**_JIT)
def _max_row_nnz(indptr):
    best = 0
    for i in range(indptr.size - 1):
        best = max(best, indptr[i + 1] - indptr[i])
    return best


@njit(**_JIT)
def _load_row(data, indices, start, stop, v, c, drop_le_one):
    """Copy the row's non-zero values/columns into ``v``/``c``; return their count.

    With ``drop_le_one`` values ``<= 1`` are treated as zeros (gseapy's ``log``
    normalisation maps them all to the same value as the zeros).
    """
    m = 0
    for p in range(start, stop):
        x = data[p]
        if x == 0.0 or (drop_le_one and x <= 1.0):
            continue
        v[m] = x
        c[m] = indices[p]
        m += 1
    return m


@njit(**_JIT)
def _metric(avg_rank, value, n, code):
    """Return gseapy's per-gene ranking metric for one tie run."""
    if code == 0:
        return 10000.0 * avg_rank / n
    if code == 1:
        return np.log(10000.0 * avg_rank / n + np.e)
    if code == 2:
        return np.log(value + np.e)
    return value


@njit(**_JIT)
def _run_weights(run_val, run_start, run_len, q, n, n_zero, n_neg, code, zscore, weight, w):
    """Write gseapy's weight ``|metric| ** weight`` of every run into ``w``; return the zeros' one.

    The metric of a run uses its tie-averaged ascending rank (zeros rank after the
    negatives); with ``zscore`` it is standardised over all ``n`` genes first.
    """
    for t in range(q):
        off = n_zero if run_val[t] > 0 else 0
        avg = run_start[t] + (run_len[t] - 1) / 2.0 + 1.0 + off
        w[t] = _metric(avg, run_val[t], n, code)
    if code == 2:
        metric0 = np.log(1.0 + np.e)
    elif code == 3:
        metric0 = 0.0
    else:
        metric0 = _metric(n_neg + (n_zero + 1.0) / 2.0, 0.0, n, code)
    if zscore and weight > 0:
        s1 = n_zero * metric0
        for t in range(q):
            s1 += run_len[t] * w[t]
        mean = s1 / n
        s2 = n_zero * (metric0 - mean) ** 2
        for t in range(q):
            s2 += run_len[t] * (w[t] - mean) ** 2
        sd = np.sqrt(s2 / n)
        for t in range(q):
            w[t] = (w[t] - mean) / sd
        metric0 = (metric0 - mean) / sd
    for t in range(q):
        w[t] = np.abs(w[t]) ** weight
    return np.abs(metric0) ** weight


@njit(**_JIT)
def _add_compensated(total, comp, x):
    """Neumaier summation step: return ``(total + x, compensation)``.

    The rounding error of every addition is carried in ``comp`` (add it at the end), so
    a sum does not depend on the order of its terms beyond the last bit or two.
    """
    t = total + x
    if abs(total) >= abs(x):
        comp += (total - t) + x
    else:
        comp += (x - t) + total
    return t, comp


@njit(**_JIT)
def ssgsea_kernel(
    data, indices, indptr, n, code, zscore, weight, u_genes, set_ptr, set_u, set_k, tie_average
):
    """Raw ssGSEA scores ``(rows, sets)`` of a CSR chunk (see ``_scoring.ssgsea_chunk``).

    Per set: ``sum w r / sum w - (n(n+1)/2 - sum r) / (n - k)`` over its genes, with
    ``w`` the run weight and ``r`` the ascending rank: ordinal with ties by column
    (gseapy), or with ``tie_average`` the mean rank of the gene's tie run (the score is
    linear in ``r``, so this is the mean score over all orders of the tied genes). With
    ``tie_average``, a set whose genes all weigh 0 uses equal weights (gseapy: 0/0).

    Computed as ``sum w c / sum w + sum c / (n - k)`` with centred ranks
    ``c = r - (n + 1) / 2`` (the same value; ``c`` are multiples of 1/2, so ``sum c`` is
    exact and a spot whose genes all tie scores exactly 0), the weighted sums with
    compensated summation (the result does not depend on the order of the genes).
    """
    n_rows = indptr.size - 1
    n_sets = set_k.size
    out = np.empty((n_rows, n_sets))
    mx = _max_row_nnz(indptr)
    v, sv, run_val, run_w, run_r, pos = np.empty((6, mx))
    c, run_start, run_len, run_of, seen = np.empty((5, mx), dtype=np.int64)
    slot = np.full(INT_TABLE_SIZE, -1, dtype=np.int32)
    r_u = np.empty(u_genes.size)
    w_u = np.empty(u_genes.size)
    entry_of = np.full(n, -1, dtype=np.int64)  # column -> stored entry of the row (-1: zero)
    mid = (n + 1) / 2.0
    for i in range(n_rows):
        m = _load_row(data, indices, indptr[i], indptr[i + 1], v, c, code == 2)
        q = _row_runs(v, m, run_val, run_start, run_len, run_of, slot, sv)
        n_zero = n - m
        n_neg = 0
        for t in range(q):
            if run_val[t] < 0:
                n_neg += run_len[t]
        w0 = _run_weights(run_val, run_start, run_len, q, n, n_zero, n_neg, code, zscore,
                          weight, run_w)  # fmt: skip
        if tie_average:
            # mean ascending rank of each run (centred); zeros rank after the negatives
            for t in range(q):
                run_r[t] = run_start[t] + (run_len[t] + 1) / 2.0 + (n_zero if run_val[t] > 0 else 0)
                run_r[t] -= mid
        else:
            # ordinal rank of each stored entry: ascending value, ties by column
            seen[:q] = 0
            for j in range(m):
                t = run_of[j]
                pos[j] = run_start[t] + seen[t] + 1 + (n_zero if run_val[t] > 0 else 0) - mid
                seen[t] += 1
        r0 = n_neg + (n_zero + 1) / 2.0 - mid
        # rank and weight of every set gene
        for j in range(m):
            entry_of[c[j]] = j
        left = 0  # gseapy mode: stored entries left of the current gene
        for u in range(u_genes.size):
            g = u_genes[u]
            j = entry_of[g]
            if j >= 0:
                r_u[u] = run_r[run_of[j]] if tie_average else pos[j]
                w_u[u] = run_w[run_of[j]]
            elif tie_average:
                r_u[u] = r0
                w_u[u] = w0
            else:  # zeros after the negatives, in column order
                while left < m and c[left] < g:
                    left += 1
                r_u[u] = n_neg + g + 1 - left - mid
                w_u[u] = w0
        for j in range(m):
            entry_of[c[j]] = -1
        for s in range(n_sets):
            a = a_c = b = b_c = rs = 0.0
            for p in range(set_ptr[s], set_ptr[s + 1]):
                u = set_u[p]
                a, a_c = _add_compensated(a, a_c, w_u[u] * r_u[u])
                b, b_c = _add_compensated(b, b_c, w_u[u])
                rs += r_u[u]
            a += a_c
            b += b_c
            if tie_average and not b > 0:
                a, b = rs, set_k[s]  # all weights 0 (or undefined): equal weights
            out[i, s] = a / b + rs / (n - set_k[s])
    return out


@njit(**_JIT)
def _tri(x):
    return x * (x + 1.0) / 2.0


@njit(**_JIT)
def _block_credit(a, b, kk):
    """Mean of ``max(K - r, 0)`` over integer ranks ``r`` in ``[a, b)``."""
    if a >= kk:
        return 0.0
    top = min(b, kk)
    return (_tri(kk - a) - _tri(kk - top)) / max(b - a, 1.0)


@njit(**_JIT)
def aucell_kernel(data, indices, indptr, n, max_rank, u_genes, set_ptr, set_u, set_k):
    """AUCell-style recovery AUC ``(rows, sets)`` of a CSR chunk (see ``_scoring.aucell_chunk``)."""
    n_rows = indptr.size - 1
    n_sets = set_k.size
    out = np.empty((n_rows, n_sets))
    kk = float(max_rank)
    max_auc = np.empty(n_sets)
    for s in range(n_sets):
        max_auc[s] = _tri(kk) - _tri(kk - min(set_k[s], kk))
    mx = _max_row_nnz(indptr)
    v, sv, run_val, run_credit = np.empty((4, mx))
    c, run_start, run_len, run_of = np.empty((4, mx), dtype=np.int64)
    slot = np.full(INT_TABLE_SIZE, -1, dtype=np.int32)
    credit_u = np.empty(u_genes.size)
    for i in range(n_rows):
        m = _load_row(data, indices, indptr[i], indptr[i + 1], v, c, False)
        q = _row_runs(v, m, run_val, run_start, run_len, run_of, slot, sv)
        n_zero = n - m
        n_neg = 0
        for t in range(q):
            if run_val[t] < 0:
                n_neg += run_len[t]
        n_pos = m - n_neg
        for t in range(q):
            # 0-based descending rank of the run's first gene (negatives after zeros)
            a = m - run_start[t] - run_len[t] + (n_zero if run_val[t] < 0 else 0)
            run_credit[t] = _block_credit(a, a + run_len[t], kk)
        credit0 = _block_credit(n_pos, n_pos + n_zero, kk)
        j = 0
        for u in range(u_genes.size):
            g = u_genes[u]
            while j < m and c[j] < g:
                j += 1
            if j < m and c[j] == g:
                credit_u[u] = run_credit[run_of[j]]
            else:
                credit_u[u] = credit0
        for s in range(n_sets):
            acc = 0.0
            for p in range(set_ptr[s], set_ptr[s + 1]):
                acc += credit_u[set_u[p]]
            out[i, s] = acc / max_auc[s]
    return out


@njit(**_JIT)
def lognorm_set_sums(
    data, indices, indptr, normalize, target_sum, n_sets, gene_ptr, gene_sets, gene_w
):
    """Per spot and set: ``sum_g w[g, s] * y_g`` over stored entries, ``y`` log-normalised.

    ``y = log1p(x / (total / target_sum))`` when ``normalize`` (scanpy's
    ``normalize_total`` + ``log1p``), else ``y = x``. ``gene_ptr``/``gene_sets``/``gene_w``
    is a CSR over genes listing the sets each gene belongs to and its weight there.
    """
    n_rows = indptr.size - 1
    out = np.zeros((n_rows, n_sets))
    for i in range(n_rows):
        scale = _row_scale(data, indptr[i], indptr[i + 1], normalize, target_sum)
        for p in range(indptr[i], indptr[i + 1]):
            g = indices[p]
            if gene_ptr[g] == gene_ptr[g + 1]:
                continue
            y = np.log1p(data[p] / scale) if normalize else data[p]
            for e in range(gene_ptr[g], gene_ptr[g + 1]):
                out[i, gene_sets[e]] += gene_w[e] * y
    return out


@njit(**_JIT)
def _row_scale(data, start, stop, normalize, target_sum):
    """``total / target_sum`` of one spot (1 when not normalising or the spot is empty)."""
    if not normalize:
        return 1.0
    total = 0.0
    for p in range(start, stop):
        total += data[p]
    return total / target_sum if total > 0 else 1.0


@njit(**_JIT)
def lognorm_gene_moments(data, indices, indptr, normalize, target_sum, wanted, s1, s2):
    """Add per-gene sums of ``y`` and ``y**2`` for the ``wanted`` genes.

    ``y`` as in `lognorm_set_sums`. Rows are added in order, so the sums do not
    depend on the chunking.
    """
    for i in range(indptr.size - 1):
        scale = _row_scale(data, indptr[i], indptr[i + 1], normalize, target_sum)
        for p in range(indptr[i], indptr[i + 1]):
            if not wanted[indices[p]]:
                continue
            y = np.log1p(data[p] / scale) if normalize else data[p]
            s1[indices[p]] += y
            s2[indices[p]] += y * y


@njit(**_JIT)
def lognorm_row_moments(data, indptr, normalize, target_sum):
    """Per spot: ``(sum_g y_g, sum_g y_g**2)`` over all genes, ``y`` as in `lognorm_set_sums`.

    Zeros add nothing, so only the stored entries are visited.
    """
    n_rows = indptr.size - 1
    out = np.zeros((n_rows, 2))
    for i in range(n_rows):
        scale = _row_scale(data, indptr[i], indptr[i + 1], normalize, target_sum)
        for p in range(indptr[i], indptr[i + 1]):
            y = np.log1p(data[p] / scale) if normalize else data[p]
            out[i, 0] += y
            out[i, 1] += y * y
    return out
