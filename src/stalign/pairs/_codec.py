"""JPEG encoding of patches (imagecodecs' libjpeg-turbo) and the PSNR to judge it."""

from __future__ import annotations

import numpy as np

__all__ = ["decode_jpeg", "encode_jpeg", "psnr"]


def encode_jpeg(patch: np.ndarray, *, quality: int = 90, subsampling: str = "444") -> bytes:
    """Encode an ``(H, W, 3)`` uint8 patch as a baseline JPEG stream.

    Parameters
    ----------
    patch
        RGB patch, uint8.
    quality
        libjpeg quality, 1–100.
    subsampling
        Chroma subsampling (``"444"`` keeps full colour resolution, which H&E
        stain boundaries need; ``"420"`` is smaller).

    Returns
    -------
    bytes
        The JPEG stream (deterministic for identical input and settings).
    """
    import imagecodecs

    if not 1 <= int(quality) <= 100:
        msg = f"JPEG quality must be in 1..100, got {quality}"
        raise ValueError(msg)
    if patch.dtype != np.uint8 or patch.ndim != 3 or patch.shape[2] != 3:
        msg = f"expected an (H, W, 3) uint8 patch, got {patch.shape} {patch.dtype}"
        raise ValueError(msg)
    return bytes(
        imagecodecs.jpeg8_encode(
            np.ascontiguousarray(patch), level=int(quality), subsampling=subsampling
        )
    )


def decode_jpeg(data: bytes) -> np.ndarray:
    """Decode a JPEG stream to an ``(H, W, 3)`` uint8 array."""
    import imagecodecs

    return np.asarray(imagecodecs.jpeg8_decode(data))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 images (``inf`` if identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0:
        return float("inf")
    return 10.0 * np.log10(255.0**2 / mse)
