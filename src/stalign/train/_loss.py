"""Symmetric InfoNCE (CLIP) loss, soft targets, and cross-rank gathering."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["contrastive_loss", "gather_features", "pathway_soft_targets"]


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_features(x: torch.Tensor, *, with_grad: bool = True) -> torch.Tensor:
    """Concatenate ``x`` from all ranks in rank order (identity in a single process).

    With ``with_grad`` the gradients flow back to every rank's own slice
    (``torch.distributed.nn.functional.all_gather``).
    """
    if _world() == 1:
        return x
    import torch.distributed as dist

    if with_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(_world())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def pathway_soft_targets(pathways_std: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Row-stochastic targets ``softmax_j(cos(p_i, p_j) / temperature)``.

    Spots with near-identical profiles share the target mass instead of being pushed
    apart as negatives. ``temperature → 0`` gives the identity (hard InfoNCE).
    """
    p = F.normalize(pathways_std.float(), dim=-1)
    return torch.softmax(p @ p.T / temperature, dim=-1)


def contrastive_loss(
    image_emb: torch.Tensor,
    pathway_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalised embeddings ``(B, D)``.

    Parameters
    ----------
    image_emb, pathway_emb
        Matching rows are positive pairs.
    logit_scale
        ``log(1 / temperature)``.
    targets
        Optional ``(B, B)`` soft targets (rows sum to 1, symmetric); ``None`` = identity.

    Returns
    -------
    torch.Tensor
        Scalar: mean of the image→profile and profile→image cross-entropies.
    """
    if image_emb.shape != pathway_emb.shape or image_emb.ndim != 2:
        msg = (
            f"contrastive_loss: shapes {tuple(image_emb.shape)} and "
            f"{tuple(pathway_emb.shape)} differ"
        )
        raise ValueError(msg)
    logits = logit_scale.exp() * image_emb.float() @ pathway_emb.float().T
    if targets is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    t = targets.to(logits.dtype)
    loss_i = -(t * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_p = -(t.T * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (loss_i + loss_p)
