"""Validation retrieval metrics (image → molecular profile)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["retrieval_metrics"]


def retrieval_metrics(
    image_emb: torch.Tensor,
    pathway_emb: torch.Tensor,
    pathways: torch.Tensor | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
) -> dict[str, float]:
    """Image → profile retrieval among all ``n`` candidates.

    Parameters
    ----------
    image_emb, pathway_emb
        ``(n, D)`` L2-normalised embeddings; row ``i`` of each is the true pair.
    pathways
        ``(n, P)`` profiles; when given, ``profile_r`` is the mean Pearson correlation
        between each spot's true profile and the profile of its top-1 retrieval
        (exact-match recall is harsh when neighbouring spots are near identical).
    ks
        Cut-offs for ``recall@k``.

    Returns
    -------
    dict[str, float]
        ``recall@k`` and ``chance@k`` (= k / n) for each k, ``median_rank`` (1 = best), and
        ``profile_r`` when ``pathways`` is given. A NaN similarity counts as a miss: a pair
        whose own similarity is NaN ranks last, and a NaN candidate ranks above the true one.
    """
    n = image_emb.shape[0]
    ranks = torch.empty(n, dtype=torch.long)
    top1 = torch.empty(n, dtype=torch.long)
    for s in range(0, n, chunk):
        sim = image_emb[s : s + chunk].float() @ pathway_emb.float().T
        true = sim[torch.arange(sim.shape[0]), torch.arange(s, s + sim.shape[0])]
        # a NaN similarity is a miss: a NaN candidate ranks above the true pair, and a
        # NaN true pair ranks last (NaN > x is False, so it would otherwise rank first)
        above = (sim > true[:, None]) | sim.isnan()
        ranks[s : s + chunk] = (above.sum(1) + 1).clamp_max(n)
        ranks[s : s + chunk][true.isnan()] = n
        top1[s : s + chunk] = sim.nan_to_num(nan=-torch.inf).argmax(1)
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float((ranks <= k).float().mean())
        out[f"chance@{k}"] = min(k, n) / n
    out["median_rank"] = float(ranks.float().median())
    if pathways is not None:
        p = pathways.float()
        a = p - p.mean(1, keepdim=True)
        b = a[top1]
        r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
        out["profile_r"] = float(r.mean())
    return out
