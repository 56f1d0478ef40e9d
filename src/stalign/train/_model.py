"""The two towers of the alignment model and the model itself."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models import Encoder

__all__ = ["AlignmentModel", "ImageTower", "MolecularTower", "ProjectionHead"]


class ProjectionHead(nn.Module):
    """``Linear → GELU → Linear`` into the shared space (outputs are not normalised)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``(B, in_dim)`` → ``(B, out_dim)``."""
        return self.net(x)


class ImageTower(nn.Module):
    """Encoder (with its normalisation buffers and optional LoRA) + projection head."""

    def __init__(self, encoder: Encoder, proj_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = ProjectionHead(encoder.embed_dim, proj_dim, hidden_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[0, 1]`` images ``(B, 3, H, W)`` → projected ``(B, proj_dim)``."""
        return self.head(self.encoder(images))


class MolecularTower(nn.Module):
    """MLP over standardised pathway scores (the standardisation is a pair of buffers)."""

    def __init__(
        self,
        n_pathways: int,
        proj_dim: int,
        hidden_dim: int,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        mean_t = torch.zeros(n_pathways) if mean is None else torch.as_tensor(mean).float()
        std_t = torch.ones(n_pathways) if std is None else torch.as_tensor(std).float()
        if mean_t.shape != (n_pathways,) or std_t.shape != (n_pathways,):
            msg = f"MolecularTower: mean/std need {n_pathways} values"
            raise ValueError(msg)
        self.register_buffer("mean", mean_t.clone())
        self.register_buffer("std", std_t.clone())
        self.net = nn.Sequential(
            nn.Linear(n_pathways, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, proj_dim),
        )

    @property
    def n_pathways(self) -> int:
        """Input dimension."""
        return int(self.mean.shape[0])

    def standardize(self, pathways: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` with the training-set statistics."""
        return (pathways - self.mean) / self.std

    def forward(self, pathways: torch.Tensor) -> torch.Tensor:
        """Raw pathway scores ``(B, P)`` → projected ``(B, proj_dim)``."""
        return self.net(self.standardize(pathways))


class AlignmentModel(nn.Module):
    """Image tower, molecular tower and the (learnable) InfoNCE temperature.

    ``logit_scale`` holds ``log(1 / temperature)``.
    """

    def __init__(
        self,
        image_tower: ImageTower,
        molecular_tower: MolecularTower,
        *,
        temperature: float = 0.07,
        learn_temperature: bool = True,
    ) -> None:
        super().__init__()
        self.image_tower = image_tower
        self.molecular_tower = molecular_tower
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature
        )

    @property
    def temperature(self) -> float:
        """Current softmax temperature."""
        return float(torch.exp(-self.logit_scale.detach()))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings."""
        return F.normalize(self.image_tower(images).float(), dim=-1)

    def encode_pathways(self, pathways: torch.Tensor) -> torch.Tensor:
        """L2-normalised molecular embeddings."""
        return F.normalize(self.molecular_tower(pathways).float(), dim=-1)

    def forward(
        self, images: torch.Tensor, pathways: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(image_embeddings, pathway_embeddings)``, both L2-normalised."""
        return self.encode_images(images), self.encode_pathways(pathways)
