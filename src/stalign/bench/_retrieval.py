"""Cross-modal retrieval: image embedding → expression/pathway profile."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["RetrievalResult", "retrieval"]


@dataclass
class RetrievalResult:
    """Outcome of [`retrieval`][stalign.bench.retrieval].

    Attributes
    ----------
    recall
        ``{k: recall@k}`` — fraction of queries whose own profile ranks in the top k.
    chance
        ``{k: k / pool size}`` averaged over queries (what a random ranking scores).
    curve
        ``recall@k`` for ``k = 1 … max_k`` (index ``k - 1``).
    ranks
        ``(n,)`` 0-based rank of each query's true profile (0 = retrieved first).
        Ties count against the query: an encoder giving every patch the same
        embedding ranks last, never first.
    profile_corr
        Mean Pearson between the top-1 retrieved profile and the query's true profile
        (NaN without ``profiles``); graded credit when neighbouring spots have
        near-identical profiles and exact-match retrieval is harsh.
    profile_corr_chance
        The same for a random pick from the pool (mean over all pairs in the pool).
    params
        Parameters of the run.
    """

    recall: dict[int, float]
    chance: dict[int, float]
    curve: np.ndarray
    ranks: np.ndarray
    profile_corr: float
    profile_corr_chance: float
    params: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Flat dict: ``recall@k``, ``chance@k``, ``profile_corr``, ``profile_corr_chance``."""
        out: dict = {f"recall@{k}": v for k, v in self.recall.items()}
        out.update({f"chance@{k}": v for k, v in self.chance.items()})
        out["profile_corr"] = self.profile_corr
        out["profile_corr_chance"] = self.profile_corr_chance
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _row_pearson(
    a: np.ndarray, b: np.ndarray, *, rows_a: np.ndarray | None = None, block: int = 4096
) -> np.ndarray:
    """Pearson of row ``i`` of ``b`` with row ``rows_a[i]`` of ``a`` (default row ``i``).

    Works ``block`` rows at a time, so no ``n × p`` temporary is made.
    """
    n = b.shape[0]
    out = np.empty(n)
    for i in range(0, n, block):
        ai = a[i : i + block] if rows_a is None else a[rows_a[i : i + block]]
        x = ai - ai.mean(axis=1, keepdims=True)
        y = b[i : i + block] - b[i : i + block].mean(axis=1, keepdims=True)
        den = np.sqrt((x * x).sum(1) * (y * y).sum(1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i : i + block] = (x * y).sum(1) / den
    return out


def retrieval(
    query_emb,
    target_emb,
    *,
    ks: Sequence[int] = (1, 5, 10),
    groups=None,
    profiles=None,
    metric: str = "cosine",
    max_k: int = 50,
) -> RetrievalResult:
    """Image → profile retrieval: recall@k of each spot's own profile.

    Row ``i`` of ``query_emb`` (an image embedding in the joint space) and row ``i``
    of ``target_emb`` (the molecular embedding of the same spot) form the true
    pair. For every query all targets of its pool (the whole set, or the spots with
    the same ``groups`` value, e.g. the same slide) are ranked by similarity.

    Parameters
    ----------
    query_emb
        ``(n, d)`` image-side embeddings.
    target_emb
        ``(n, d)`` profile-side embeddings in the same space (or predicted vs measured
        profiles when there is no joint space).
    ks
        Cut-offs reported in ``recall``.
    groups
        ``(n,)`` pool of each spot (retrieve only within the same value); default one pool.
    profiles
        ``(n, p)`` measured profiles (e.g. pathway scores) used to score the top-1
        retrieved profile against the true one by Pearson.
    metric
        ``"cosine"`` or ``"dot"`` similarity.
    max_k
        Length of the recall curve.

    Returns
    -------
    RetrievalResult
        [`RetrievalResult`][stalign.bench.RetrievalResult].
    """
    q = np.asarray(query_emb, dtype=np.float64)
    t = np.asarray(target_emb, dtype=np.float64)
    if q.ndim != 2 or t.ndim != 2 or q.shape != t.shape:
        msg = (
            "query_emb and target_emb must be 2-D arrays of the same shape (n, d), "
            f"got {q.shape} and {t.shape}"
        )
        raise ValueError(msg)
    if metric not in ("cosine", "dot"):
        msg = f"metric must be 'cosine' or 'dot', got {metric!r}"
        raise ValueError(msg)
    if any(int(k) < 1 for k in ks):
        msg = f"ks must be positive integers, got {list(ks)}"
        raise ValueError(msg)
    n = q.shape[0]
    g = np.zeros(n, dtype=int) if groups is None else np.asarray(groups)
    if g.shape != (n,):
        msg = f"groups must have one entry per row ({n}), got shape {g.shape}"
        raise ValueError(msg)
    prof = None
    if profiles is not None:
        prof = np.asarray(profiles, dtype=np.float64)
        if prof.ndim != 2 or prof.shape[0] != n:
            msg = f"profiles must be (n={n}, p), got shape {prof.shape}"
            raise ValueError(msg)
    if metric == "cosine":
        q, t = _unit(q), _unit(t)

    ranks = np.empty(n, dtype=np.int64)
    pool_size = np.empty(n, dtype=np.int64)
    top1 = np.empty(n, dtype=np.int64)
    chance_corr = []
    for u in np.unique(g):
        idx = np.flatnonzero(g == u)
        for start in range(0, idx.size, 1024):
            rows = idx[start : start + 1024]
            sim = q[rows] @ t[idx].T  # (b, m)
            own = sim[np.arange(rows.size), np.searchsorted(idx, rows)]
            # pessimistic ties: every other target at least as similar ranks above
            ranks[rows] = (sim >= own[:, None]).sum(1) - 1
            top1[rows] = idx[np.argmax(sim, axis=1)]
        pool_size[idx] = idx.size
        if prof is not None and idx.size > 1:
            pc = np.corrcoef(prof[idx])
            off = pc[~np.eye(idx.size, dtype=bool)]
            chance_corr.append((np.nanmean(off), idx.size))
    ks = sorted({int(k) for k in ks})
    recall = {k: float((ranks < k).mean()) for k in ks}
    chance = {k: float(np.minimum(k / pool_size, 1.0).mean()) for k in ks}
    curve = np.array([(ranks < k).mean() for k in range(1, max_k + 1)])
    if prof is not None:
        profile_corr = float(np.nanmean(_row_pearson(prof, prof, rows_a=top1)))
        w = np.array([c[1] for c in chance_corr], dtype=float)
        profile_corr_chance = float(np.average([c[0] for c in chance_corr], weights=w))
    else:
        profile_corr = profile_corr_chance = float("nan")
    return RetrievalResult(
        recall=recall,
        chance=chance,
        curve=curve,
        ranks=ranks,
        profile_corr=profile_corr,
        profile_corr_chance=profile_corr_chance,
        params={"metric": metric, "ks": ks, "pooled_by_group": groups is not None, "n": n},
    )
