"""Reference image features for the benchmark: simple baselines and encoder embeddings.

Every image function maps patches ``(n, H, W, 3)`` uint8 to features ``(n, d)`` float32;
`library_size` is the one non-image floor (log total counts per spot).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

__all__ = [
    "color_histogram",
    "downsampled_pixels",
    "encoder_features",
    "library_size",
    "squidpy_features",
]

logger = logging.getLogger(__name__)

_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
_PROPS = ("contrast", "dissimilarity", "homogeneity", "correlation", "ASM")


def _check_patches(patches) -> np.ndarray:
    p = np.asarray(patches)
    if p.ndim != 4 or p.shape[-1] != 3:
        msg = f"patches must be (n, H, W, 3), got shape {p.shape}"
        raise ValueError(msg)
    if p.dtype != np.uint8:
        msg = f"patches must be uint8 RGB, got dtype {p.dtype}"
        raise ValueError(msg)
    return p


def color_histogram(patches, *, bins: int = 16) -> np.ndarray:
    """Per-channel RGB histogram over ``[0, 256)`` with ``bins`` bins, as pixel fractions.

    Returns
    -------
    np.ndarray
        ``(n, 3 · bins)`` float32.
    """
    p = _check_patches(patches)
    n = p.shape[0]
    idx = (p.astype(np.int64) * bins) >> 8  # 0..bins-1
    out = np.empty((n, 3, bins), dtype=np.float32)
    for c in range(3):
        flat = idx[..., c].reshape(n, -1) + np.arange(n)[:, None] * bins
        out[:, c] = np.bincount(flat.ravel(), minlength=n * bins).reshape(n, bins)
    out /= p.shape[1] * p.shape[2]
    return out.reshape(n, -1)


def downsampled_pixels(patches, *, size: int = 8) -> np.ndarray:
    """Patches shrunk to ``size × size`` px (box filter, antialiased), scaled to ``[0, 1]``.

    Returns
    -------
    np.ndarray
        ``(n, size · size · 3)`` float32.
    """
    from PIL import Image

    p = _check_patches(patches)
    h, w = p.shape[1:3]
    if h % size == 0 and w % size == 0:  # exact block means
        small = p.reshape(p.shape[0], size, h // size, size, w // size, 3).mean(axis=(2, 4))
    else:
        small = np.stack(
            [np.asarray(Image.fromarray(x).resize((size, size), Image.Resampling.BOX)) for x in p]
        )
    return (small.reshape(p.shape[0], -1) / 255.0).astype(np.float32)


def library_size(counts) -> np.ndarray:
    """Log total counts per spot: the library-size-only reference "feature".

    Not an image feature: it tells what a probe gets from sequencing depth alone. The
    HEST gene panel (top-50 variance of log1p raw counts, no library-size
    normalisation) follows depth closely when sections differ in depth, so any image
    feature that tracks depth (tissue density, staining) inherits that score; this
    row shows the floor. It is the same log depth
    ([`log_depth`][stalign.pp.log_depth]) that the depth-adjusted readout regresses
    out, so there it scores 0.

    Parameters
    ----------
    counts
        Raw counts ``(n_spots, n_genes)``, dense or scipy sparse.

    Returns
    -------
    np.ndarray
        ``(n, 1)`` float32 ``log(total counts)`` (``0`` for a spot without counts).
    """
    import scipy.sparse as sp

    from ..pp import log_depth

    if not (sp.issparse(counts) or isinstance(counts, np.ndarray)) or counts.ndim != 2:
        msg = f"counts must be a 2-D array or sparse matrix (spots × genes), got {type(counts)}"
        raise ValueError(msg)
    return log_depth(counts)[:, None].astype(np.float32)


def squidpy_features(patches) -> np.ndarray:
    """Squidpy's summary, histogram and texture image features, computed per patch.

    The definitions are those of ``squidpy.im.ImageContainer.features_summary``
    (quantiles 0.9/0.5/0.1, mean, std per channel), ``features_histogram`` (10 bins per
    channel over the patch's own value range) and ``features_texture`` (grey-level
    co-occurrence matrix with 256 levels, distance 1, angles 0, π/4, π/2, 3π/4;
    contrast, dissimilarity, homogeneity, correlation, ASM per channel), in that
    column order. They are computed directly with numpy/scikit-image because
    ``squidpy.im.calculate_image_features`` costs ~0.3 s per spot crop on a CPU
    (113 s for 314 patches of 32 px here); the test suite checks the values against
    squidpy on real patches.

    Returns
    -------
    np.ndarray
        ``(n, 105)`` float32.
    """
    from skimage.feature import graycomatrix, graycoprops

    p = _check_patches(patches)
    n = p.shape[0]
    flat = p.reshape(n, -1, 3).astype(np.float64)
    summary = []
    for c in range(3):
        q = np.quantile(flat[..., c], [0.9, 0.5, 0.1], axis=1).T
        summary.append(np.column_stack([q, flat[..., c].mean(1), flat[..., c].std(1)]))
    summary_arr = np.hstack(summary)
    hist = np.empty((n, 30))
    texture = np.empty((n, 60))
    for i in range(n):
        lo, hi = flat[i].min(), flat[i].max()
        for c in range(3):
            hist[i, c * 10 : (c + 1) * 10] = np.histogram(flat[i, :, c], bins=10, range=(lo, hi))[0]
            glcm = graycomatrix(p[i, :, :, c], distances=[1], angles=_ANGLES, levels=256)
            for j, prop in enumerate(_PROPS):
                base = c * 20 + j * 4
                texture[i, base : base + 4] = graycoprops(glcm, prop)[0]
    return np.nan_to_num(np.hstack([summary_arr, hist, texture])).astype(np.float32)


def encoder_features(
    encoder: Any,
    patches,
    *,
    batch_size: int = 64,
    image_size: int | None = None,
    device: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """Embed patches with an image encoder (a torch module taking ``[0, 1]`` RGB).

    Runs `stalign.tl.iter_embeddings` (the package's one embedding loop: bf16
    autocast on CUDA, float32 on the CPU).

    Parameters
    ----------
    encoder
        E.g. a `stalign.models.Encoder`; normalisation is its own business.
    patches
        ``(n, H, W, 3)`` uint8.
    batch_size
        Patches per forward pass (bounds memory).
    image_size
        Resize to this side in px first (bilinear, antialiased); default: the
        encoder's ``config.input_size`` when it has one, else unchanged.
    device
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``...
    progress
        Show a tqdm progress bar.

    Returns
    -------
    np.ndarray
        ``(n, embed_dim)`` float32.
    """
    from .._utils import progress_bar as tqdm
    from ..tl import iter_embeddings

    p = _check_patches(patches)
    if image_size is None:
        cfg = getattr(encoder, "config", None)
        image_size = getattr(cfg, "input_size", None)
    starts = range(0, p.shape[0], batch_size)
    batches = (p[s : s + batch_size] for s in tqdm(starts, disable=not progress, desc="embed"))
    out = list(iter_embeddings(encoder, batches, device=device, image_size=image_size))
    if not out:
        msg = "encoder_features: no patches to embed"
        raise ValueError(msg)
    return np.concatenate(out).astype(np.float32)
