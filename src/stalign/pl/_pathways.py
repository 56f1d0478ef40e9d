"""Pathway scores on the tissue image, several pathways side by side."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .. import _keys as K

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = ["pathways"]


def _background(adata: AnnData, max_size: int) -> tuple[np.ndarray | None, float]:
    """Return ``(thumbnail, level-0 px per thumbnail px)``; ``(None, 1)`` without an image."""
    try:
        from ..im import open_image

        slide = open_image(adata)
        try:
            thumb = slide.get_thumbnail(max_size)
            return thumb, slide.width / thumb.shape[1]
        finally:
            slide.close()
    except Exception as e:  # im not available or no image: fall back to uns['spatial']
        logger.debug("stalign.im could not serve the image (%s); trying uns['spatial']", e)
    lib = (adata.uns.get(K.STALIGN) or {}).get(K.LIBRARY_ID)
    spatial = adata.uns.get(K.SPATIAL) or {}
    if lib is None and len(spatial) == 1:
        lib = next(iter(spatial))
    entry = spatial.get(lib) or {}
    images = entry.get(K.IMAGES) or {}
    sfs = entry.get(K.SCALEFACTORS) or {}
    for res, sf in (("hires", K.SF_HIRES), ("lowres", K.SF_LOWRES)):
        if res in images and sf in sfs:
            return np.asarray(images[res]), 1.0 / float(sfs[sf])
    return None, 1.0


def _spot_diameter_px(adata: AnnData) -> float | None:
    meta = adata.uns.get(K.STALIGN) or {}
    if meta.get(K.SPOT_DIAMETER_UM) and meta.get(K.MPP):
        return float(meta[K.SPOT_DIAMETER_UM]) / float(meta[K.MPP])
    lib = meta.get(K.LIBRARY_ID)
    sfs = ((adata.uns.get(K.SPATIAL) or {}).get(lib) or {}).get(K.SCALEFACTORS) or {}
    return float(sfs[K.SF_SPOT_DIAMETER]) if K.SF_SPOT_DIAMETER in sfs else None


def pathways(
    adata: AnnData,
    pathways: Sequence[str] | None = None,
    *,
    key: str = K.PATHWAY_SCORES,
    ncols: int = 3,
    image: bool = True,
    max_size: int = 1000,
    cmap: str = "magma",
    alpha: float = 0.85,
    vmin: str | float | None = "p1",
    vmax: str | float | None = "p99",
    crop: bool = True,
    panel_size: float = 4.0,
    spatial_key: str = K.SPATIAL,
    save: str | os.PathLike | None = None,
    dpi: int = 150,
) -> Figure:
    """Plot pathway scores on the tissue image, one panel per pathway.

    Parameters
    ----------
    adata
        AnnData with ``obsm[key]`` from `stalign.tl.score_pathways` and spot
        centres in ``obsm[spatial_key]`` (level-0 image px).
    pathways
        Columns of ``obsm[key]`` to draw (default: the first 6).
    key
        ``obsm`` key of the scores.
    ncols
        Panels per row.
    image
        Draw the H&E under the spots (via [`stalign.im.open_image`][stalign.im.open_image], else
        ``uns['spatial'][library]['images']``; skipped when there is none).
    max_size
        Longest side (px) of the background thumbnail.
    cmap, alpha
        Colour map and spot opacity.
    vmin, vmax
        Colour limits per panel: numbers, or ``"pN"`` for the N-th percentile.
    crop
        Zoom onto the spots instead of showing the whole image.
    panel_size
        Size of one panel (inches).
    spatial_key
        ``obsm`` key of the spot centres.
    save, dpi
        Optional output file and its resolution.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import EllipseCollection

    if key not in adata.obsm:
        msg = f"adata.obsm[{key!r}] not found; run stalign.tl.score_pathways(adata) first"
        raise KeyError(msg)
    scores = adata.obsm[key]
    names = list(getattr(scores, "columns", []))
    if not names:
        msg = f"adata.obsm[{key!r}] must be a DataFrame with pathway columns"
        raise ValueError(msg)
    chosen = list(pathways) if pathways is not None else names[:6]
    unknown = [p for p in chosen if p not in names]
    if unknown:
        msg = f"pathways {unknown} are not columns of adata.obsm[{key!r}] (e.g. {names[:3]})"
        raise KeyError(msg)
    if spatial_key not in adata.obsm:
        msg = f"adata.obsm[{spatial_key!r}] (spot centres, level-0 px) is required"
        raise KeyError(msg)
    xy = np.asarray(adata.obsm[spatial_key], dtype=float)[:, :2]
    thumb, scale = _background(adata, max_size) if image else (None, 1.0)
    diam = _spot_diameter_px(adata)
    if diam is None:  # half the median nearest-neighbour distance
        from scipy.spatial import cKDTree

        d, _ = cKDTree(xy).query(xy, k=2)
        diam = float(np.median(d[:, 1])) * 0.8

    ncols = max(1, min(ncols, len(chosen)))
    nrows = int(np.ceil(len(chosen) / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size * ncols, panel_size * nrows), squeeze=False
    )
    pad = diam
    for ax, name in zip(axes.ravel(), chosen, strict=False):
        v = np.asarray(scores[name], dtype=float)
        lo, hi = (_limit(v, vmin), _limit(v, vmax))
        if thumb is not None:
            h, w = thumb.shape[:2]
            ax.imshow(thumb, extent=(0, w * scale, h * scale, 0))
        coll = EllipseCollection(
            widths=diam,
            heights=diam,
            angles=0,
            units="xy",
            offsets=xy,
            offset_transform=ax.transData,
            cmap=cmap,
            alpha=alpha,
            linewidths=0,
        )
        coll.set_array(v)
        coll.set_clim(lo, hi)
        ax.add_collection(coll)
        if crop or thumb is None:
            ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
            ax.set_ylim(xy[:, 1].max() + pad, xy[:, 1].min() - pad)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        title = name.removeprefix("HALLMARK_").replace("_", " ").lower()
        ax.set_title(title, fontsize=10)
        fig.colorbar(coll, ax=ax, fraction=0.046, pad=0.02)
    for ax in axes.ravel()[len(chosen) :]:
        ax.axis("off")
    fig.tight_layout()
    if save is not None:
        fig.savefig(save, dpi=dpi, bbox_inches="tight")
        logger.info("saved %s", save)
    return fig


def _limit(v: np.ndarray, spec: str | float | None) -> float | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        if not (spec.startswith("p") and spec[1:].replace(".", "", 1).isdigit()):
            msg = f"colour limit {spec!r} must be a number or 'pN' (percentile), e.g. 'p99'"
            raise ValueError(msg)
        finite = v[np.isfinite(v)]
        return float(np.percentile(finite, float(spec[1:]))) if finite.size else None
    return float(spec)
