"""Patch augmentation for contrastive training: dihedral moves and colour/HED jitter."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Augment"]


@dataclass(frozen=True)
class Augment:
    """Random augmentation of an ``(H, W, 3)`` uint8 H&E patch.

    Attributes
    ----------
    flips
        Random horizontal and vertical flips.
    rot90
        Random multiple of 90° rotation (with ``flips``: the 8 dihedral poses).
    brightness, contrast
        Maximum relative change (``0.1`` = ±10 %).
    hed
        Strength σ of HED stain jitter (Tellez et al. 2018): in the
        haematoxylin-eosin-DAB space each channel becomes ``a·c + b`` with
        ``a ~ U(1-σ, 1+σ)``, ``b ~ U(-σ, σ)·s`` (``s`` the channel's scale);
        ``0`` disables it (it is the most expensive step).
    """

    flips: bool = True
    rot90: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    hed: float = 0.0

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return an augmented copy of ``img`` (uint8, same shape when square)."""
        out = img
        if self.flips:
            if rng.random() < 0.5:
                out = out[:, ::-1]
            if rng.random() < 0.5:
                out = out[::-1, :]
        if self.rot90:
            out = np.rot90(out, k=int(rng.integers(0, 4)))
        if self.hed > 0:
            out = _hed_jitter(out, rng, self.hed)
        if self.brightness > 0 or self.contrast > 0:
            f = out.astype(np.float32)
            if self.contrast > 0:
                c = 1.0 + rng.uniform(-self.contrast, self.contrast)
                mean = f.mean()
                f = (f - mean) * c + mean
            if self.brightness > 0:
                f = f * (1.0 + rng.uniform(-self.brightness, self.brightness))
            out = np.clip(f, 0, 255).round().astype(np.uint8)
        return np.ascontiguousarray(out)


def _hed_jitter(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(img)
    scale = np.maximum(np.abs(hed).reshape(-1, 3).max(axis=0), 1e-6)
    a = rng.uniform(1 - sigma, 1 + sigma, size=3)
    b = rng.uniform(-sigma, sigma, size=3) * scale
    rgb = hed2rgb(hed * a + b)
    return np.clip(rgb * 255.0, 0, 255).round().astype(np.uint8)
