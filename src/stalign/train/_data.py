"""In-memory pairs dataset, deterministic global batching, batch augmentation, statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "GlobalBatchSampler",
    "TensorPairsDataset",
    "augment_batch",
    "collate_pairs",
    "crop_batch",
    "image_statistics",
    "pathway_statistics",
]


class TensorPairsDataset(Dataset):
    """(patch, pathway profile) pairs held in memory, with ``PairsDataset``'s item layout.

    Items are dicts ``{'image': float32 (3, H, W) in [0, 1], 'pathways': float32 (P,),
    'index', 'sample_id', 'patient_id', 'barcode'}``.

    Parameters
    ----------
    images
        ``(n, H, W, 3)`` uint8 RGB patches, or ``(n, 3, H, W)`` float in ``[0, 1]``.
    pathways
        ``(n, P)`` pathway scores (or any molecular profile).
    sample_ids, patient_ids, barcodes
        Per-pair labels (default: ``"sample"``, ``"patient"``, the row number).
    pathway_names
        Names of the ``P`` columns.
    total_counts
        ``(n,)`` library size (raw counts, all genes) of each pair's spot; needed by
        ``TrainConfig(target_transform="depth_regression")``.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        pathways: np.ndarray | torch.Tensor,
        *,
        sample_ids: Sequence[str] | None = None,
        patient_ids: Sequence[str] | None = None,
        barcodes: Sequence[str] | None = None,
        pathway_names: Sequence[str] | None = None,
        total_counts: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        images = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
        if images.ndim != 4:
            msg = f"TensorPairsDataset: images must be 4-d, got shape {tuple(images.shape)}"
            raise ValueError(msg)
        if images.dtype == torch.uint8 and images.shape[-1] == 3:
            self._uint8 = True
            self.images = images.contiguous()
        elif images.is_floating_point() and images.shape[1] == 3:
            self._uint8 = False
            self.images = images.float().contiguous()
        else:
            msg = (
                "TensorPairsDataset: images must be (n, H, W, 3) uint8 or (n, 3, H, W) float, "
                f"got {tuple(images.shape)} {images.dtype}"
            )
            raise ValueError(msg)
        pw = torch.as_tensor(np.asarray(pathways, dtype=np.float32))
        if pw.ndim != 2 or pw.shape[0] != images.shape[0]:
            msg = (
                f"TensorPairsDataset: pathways must be (n={images.shape[0]}, P), "
                f"got {tuple(pw.shape)}"
            )
            raise ValueError(msg)
        if not torch.isfinite(pw).all():
            msg = "TensorPairsDataset: pathways contain NaN or inf"
            raise ValueError(msg)
        self.pathways = pw
        n = images.shape[0]
        self.sample_ids = list(sample_ids) if sample_ids is not None else ["sample"] * n
        self.patient_ids = list(patient_ids) if patient_ids is not None else ["patient"] * n
        self.barcodes = list(barcodes) if barcodes is not None else [str(i) for i in range(n)]
        for name, seq in (
            ("sample_ids", self.sample_ids),
            ("patient_ids", self.patient_ids),
            ("barcodes", self.barcodes),
        ):
            if len(seq) != n:
                msg = f"TensorPairsDataset: {name} has {len(seq)} entries, expected {n}"
                raise ValueError(msg)
        p = pw.shape[1]
        self.pathway_names = (
            list(pathway_names) if pathway_names is not None else [f"p{i}" for i in range(p)]
        )
        if len(self.pathway_names) != p:
            msg = f"TensorPairsDataset: {len(self.pathway_names)} pathway_names for {p} columns"
            raise ValueError(msg)
        self.total_counts = None
        if total_counts is not None:
            tc = np.asarray(total_counts, dtype=np.float64).reshape(-1)
            if tc.shape != (n,) or not (np.isfinite(tc).all() and (tc >= 0).all()):
                msg = f"TensorPairsDataset: total_counts must be {n} finite counts >= 0"
                raise ValueError(msg)
            self.total_counts = tc

    def __len__(self) -> int:
        return self.images.shape[0]

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as float32 ``(3, H, W)`` in ``[0, 1]``."""
        if self._uint8:
            return self.images[i].permute(2, 0, 1).float().div_(255.0)
        return self.images[i]

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        return {
            "image": self.image(i),
            "pathways": self.pathways[i],
            "index": i,
            "sample_id": self.sample_ids[i],
            "patient_id": self.patient_ids[i],
            "barcode": self.barcodes[i],
        }

    def subset(self, indices: Sequence[int]) -> TensorPairsDataset:
        """Return a new dataset of the given rows."""
        idx = list(indices)
        return TensorPairsDataset(
            self.images[idx],
            self.pathways[idx],
            sample_ids=[self.sample_ids[i] for i in idx],
            patient_ids=[self.patient_ids[i] for i in idx],
            barcodes=[self.barcodes[i] for i in idx],
            pathway_names=self.pathway_names,
            total_counts=None if self.total_counts is None else self.total_counts[idx],
        )


def collate_pairs(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack images and pathways; keep the labels as lists."""
    if not items:
        msg = "collate_pairs: empty batch"
        raise ValueError(msg)
    return {
        "image": torch.stack([torch.as_tensor(it["image"]) for it in items]),
        "pathways": torch.stack([torch.as_tensor(it["pathways"]) for it in items]).float(),
        "index": torch.as_tensor([int(it["index"]) for it in items]),
        "sample_id": [it.get("sample_id") for it in items],
        "barcode": [it.get("barcode") for it in items],
    }


class GlobalBatchSampler:
    """Deterministic global batches, each split across ranks.

    Epoch ``e`` uses the permutation drawn from ``seed + e``; global batch ``b`` is
    ``perm[b * B:(b + 1) * B]`` and rank ``r`` of ``W`` gets its ``r``-th contiguous
    ``B / W`` slice. The last incomplete global batch is dropped. A 1-process run and
    a ``W``-process run therefore see exactly the same global batches.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if batch_size % world_size:
            msg = (
                f"batch_size={batch_size} is not divisible by the number of processes "
                f"({world_size})"
            )
            raise ValueError(msg)
        if n < batch_size:
            msg = (
                f"the training set has {n} pairs, fewer than one batch of {batch_size}; "
                "lower batch_size"
            )
            raise ValueError(msg)
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle

    def __len__(self) -> int:
        """Global batches per epoch."""
        return self.n // self.batch_size

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Return this rank's index lists for ``epoch``."""
        if self.shuffle:
            g = torch.Generator().manual_seed(int(self.seed) * 100_003 + int(epoch))
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        local = self.batch_size // self.world_size
        out = []
        for b in range(len(self)):
            glob = perm[b * self.batch_size : (b + 1) * self.batch_size]
            out.append(glob[self.rank * local : (self.rank + 1) * local])
        return out


def crop_batch(
    images: torch.Tensor,
    *,
    jitter_px: int,
    out_px: int | None,
    generator: torch.Generator | None = None,
    slot: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Crop ``(B, 3, H, W)`` to ``H - 2 * jitter_px`` and resize to ``out_px`` if given.

    Offsets are random with a ``generator``, centred without. ``slot=(offset, total)``
    draws the random numbers for a global batch of ``total`` images and uses rows
    ``offset:offset + B`` (so DDP ranks reproduce a single process exactly).
    """
    b, _, h, w = images.shape
    crop_h, crop_w = h - 2 * jitter_px, w - 2 * jitter_px
    if crop_h <= 0 or crop_w <= 0:
        msg = f"jitter_px={jitter_px} is too large for {h}x{w}-px patches"
        raise ValueError(msg)
    if jitter_px == 0:
        out = images
    elif generator is None:
        out = images[:, :, jitter_px : jitter_px + crop_h, jitter_px : jitter_px + crop_w]
    else:
        start, total = slot if slot is not None else (0, b)
        offs = torch.randint(0, 2 * jitter_px + 1, (total, 2), generator=generator)
        offs = offs[start : start + b].tolist()
        out = torch.stack(
            [images[i, :, dy : dy + crop_h, dx : dx + crop_w] for i, (dy, dx) in enumerate(offs)]
        )
    if out_px is not None and (out.shape[-2], out.shape[-1]) != (out_px, out_px):
        out = F.interpolate(
            out, size=(out_px, out_px), mode="bilinear", antialias=True, align_corners=False
        )
    return out.contiguous()


def augment_batch(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    color_jitter: float = 0.1,
    slot: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Random flips, 90° rotations and ± ``color_jitter`` brightness/contrast per image.

    The random draws come from ``generator`` (CPU), so runs are reproducible and
    resumable; the arithmetic runs on ``images.device``. ``slot`` as in `crop_batch`.
    """
    b = images.shape[0]
    start, total = slot if slot is not None else (0, b)
    sl = slice(start, start + b)
    flip = (torch.rand(total, generator=generator) < 0.5)[sl]
    rot = torch.randint(0, 4, (total,), generator=generator)[sl]
    bright = (1 + (torch.rand(total, generator=generator) * 2 - 1) * color_jitter)[sl]
    contrast = (1 + (torch.rand(total, generator=generator) * 2 - 1) * color_jitter)[sl]
    out = images.clone()
    if flip.any():
        idx = flip.nonzero().flatten().to(images.device)
        out[idx] = out[idx].flip(-1)
    if out.shape[-1] == out.shape[-2]:
        for k in (1, 2, 3):
            sel = (rot == k).nonzero().flatten()
            if len(sel):
                idx = sel.to(images.device)
                out[idx] = torch.rot90(out[idx], k, dims=(-2, -1))
    if color_jitter > 0:
        dev = images.device
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        c = contrast.to(dev, out.dtype).view(b, 1, 1, 1)
        br = bright.to(dev, out.dtype).view(b, 1, 1, 1)
        out = ((out - mean) * c + mean) * br
        out = out.clamp_(0.0, 1.0)
    return out


def _sample_indices(n: int, max_items: int, seed: int) -> list[int]:
    if n <= max_items:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:max_items].tolist())


def image_statistics(
    dataset: Dataset, *, max_items: int = 2048, seed: int = 0, jitter_px: int = 0
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``[0, 1]`` RGB over (a sample of) ``dataset``'s patches.

    Returns
    -------
    tuple[list[float], list[float]]
        ``(mean, std)``, 3 floats each, computed on the centre crops the model sees.
    """
    idx = _sample_indices(len(dataset), max_items, seed)
    s = torch.zeros(3, dtype=torch.float64)
    s2 = torch.zeros(3, dtype=torch.float64)
    count = 0
    for i in idx:
        img = torch.as_tensor(dataset[i]["image"]).double()
        if jitter_px:
            img = img[:, jitter_px:-jitter_px, jitter_px:-jitter_px]
        s += img.sum(dim=(1, 2))
        s2 += (img**2).sum(dim=(1, 2))
        count += img.shape[1] * img.shape[2]
    mean = s / count
    std = (s2 / count - mean**2).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.clamp_min(1e-3).tolist()


def pathway_statistics(
    dataset: Dataset, *, max_items: int = 100_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pathway mean and std over ``dataset`` (std floored at 1e-6)."""
    pw = getattr(dataset, "pathways", None)
    if torch.is_tensor(pw) and pw.ndim == 2 and pw.shape[0] == len(dataset):
        x = pw.double()
    else:
        idx = _sample_indices(len(dataset), max_items, seed)
        x = torch.stack([torch.as_tensor(dataset[i]["pathways"]) for i in idx]).double()
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)
    return mean.float().numpy(), std.float().numpy()
