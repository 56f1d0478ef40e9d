"""Spots on the H&E and grids of patches: how a user checks registration by eye."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _keys as K

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = ["patch_grid", "spatial_spots"]


def _spot_diameter_px(adata: AnnData, mpp: float | None, spot_diameter_um: float | None) -> float:
    meta = adata.uns.get(K.STALIGN, {}) or {}
    d_um = spot_diameter_um if spot_diameter_um is not None else meta.get(K.SPOT_DIAMETER_UM)
    if d_um is not None and mpp:
        return float(d_um) / float(mpp)
    lib = meta.get(K.LIBRARY_ID)
    sfs = adata.uns.get(K.SPATIAL, {}).get(lib, {}).get(K.SCALEFACTORS, {})
    if K.SF_SPOT_DIAMETER in sfs:
        return float(sfs[K.SF_SPOT_DIAMETER])
    msg = (
        "cannot size the spots: need uns['stalign']['spot_diameter_um'] and the image "
        "mpp, or uns['spatial'][library]['scalefactors']['spot_diameter_fullres'], "
        "or pass spot_diameter_um="
    )
    raise ValueError(msg)


def _color_values(adata: AnnData, color: str, layer: str | None) -> tuple[np.ndarray, str]:
    """Return (values, kind) with kind 'numeric' or 'categorical'."""
    import pandas as pd

    if color in adata.obs.columns:
        col = adata.obs[color]
        if (
            isinstance(col.dtype, pd.CategoricalDtype)
            or col.dtype == bool
            or col.dtype == object
            or pd.api.types.is_string_dtype(col)
        ):
            return col.astype(str).to_numpy(), "categorical"
        return col.to_numpy(dtype=float), "numeric"
    if color in adata.var_names:
        X = adata.layers[layer] if layer is not None else adata.X
        j = adata.var_names.get_loc(color)
        v = X[:, j]
        v = v.toarray() if hasattr(v, "toarray") else np.asarray(v)
        return np.asarray(v, dtype=float).ravel(), "numeric"
    msg = (
        f"color={color!r} is neither an obs column nor a var_name (obs columns: "
        f"{list(adata.obs.columns)[:10]}...)"
    )
    raise ValueError(msg)


def _finish(fig: Figure, save: str | os.PathLike | None, dpi: int) -> Figure:
    if save is not None:
        fig.savefig(save, dpi=dpi, bbox_inches="tight")
        logger.info("saved %s", save)
    return fig


def _draw_spots(fig, ax, adata, xy: np.ndarray, diam: float, *, color, layer, cmap, alpha) -> None:
    """Draw the spots as circles of ``diam`` level-0 px.

    Outlines without ``color``; a numeric colour with a colour bar; categories with a legend.
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import EllipseCollection

    sizes = np.full(len(xy), diam)
    coll_kw: dict[str, Any] = {
        "offsets": xy,
        "units": "xy",
        "offset_transform": ax.transData,
        "linewidths": 0.4,
    }
    values, kind = _color_values(adata, color, layer) if color is not None else (None, None)
    if kind is None:
        style: dict[str, Any] = {"facecolors": "none", "edgecolors": "black"}
    elif kind == "numeric":
        style = {"cmap": cmap, "alpha": alpha, "edgecolors": "none"}
    else:
        cats = sorted(set(values.tolist()))
        palette = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
        lut = {c: palette(i % palette.N) for i, c in enumerate(cats)}
        style = {"facecolors": [lut[v] for v in values], "alpha": alpha, "edgecolors": "none"}
    coll = EllipseCollection(sizes, sizes, np.zeros(len(xy)), **style, **coll_kw)
    if kind == "numeric":
        coll.set_array(values)
    ax.add_collection(coll)
    if kind == "numeric":
        fig.colorbar(coll, ax=ax, shrink=0.7, label=color)
    elif kind is not None:
        from matplotlib.patches import Patch

        ax.legend(
            handles=[Patch(color=lut[c], label=f"{c} ({(values == c).sum()})") for c in cats],
            title=color,
            loc="upper right",
            fontsize="small",
        )


def spatial_spots(
    adata: AnnData,
    color: str | None = None,
    *,
    image: Any = None,
    layer: str | None = None,
    spot_diameter_um: float | None = None,
    max_size: int = 1500,
    crop: bool = True,
    cmap: str = "viridis",
    alpha: float = 0.75,
    spatial_key: str = K.SPATIAL,
    title: str | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] = (7.0, 7.0),
    save: str | os.PathLike | None = None,
    dpi: int = 150,
) -> Figure:
    """Draw the spots on the H&E, each a circle of its true physical diameter.

    Parameters
    ----------
    adata
        Spots with ``obsm[spatial_key]`` in level-0 pixels and an image (see
        [`stalign.im.open_image`][stalign.im.open_image]).
    color
        A gene (``var_name``, values from ``layer`` or ``X``) or an ``obs`` column
        (numeric → colour map; bool/categorical → one colour per value, e.g. the QC
        flag ``'patch_in_tissue'``). ``None`` draws outlines only.
    image
        Anything `stalign.im.open_image` accepts; defaults to the AnnData's.
    layer
        Layer for gene values.
    spot_diameter_um
        Spot diameter (µm); default ``uns['stalign']['spot_diameter_um']`` (else the
        ``spot_diameter_fullres`` scale factor, px).
    max_size
        Longest side (px) of the thumbnail drawn (read lazily from the pyramid).
    crop
        Zoom onto the spots (with a margin) instead of the whole slide.
    cmap, alpha
        Colour map for numeric values; spot opacity.
    spatial_key
        ``obsm`` key of the spot centres.
    title
        Axes title (default: ``color``).
    ax
        Draw into this axes instead of a new figure.
    figsize, save, dpi
        Figure size (inches), optional output file, its resolution.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    from ..im import SlideImage, open_image

    src = adata if image is None else image
    slide = open_image(src)
    try:
        thumb = slide.get_thumbnail(max_size)
        scale = slide.width / thumb.shape[1]  # level-0 px per thumbnail px
        mpp = slide.mpp
        w0, h0 = slide.width, slide.height
    finally:
        if not isinstance(src, SlideImage):
            slide.close()
    xy = np.asarray(adata.obsm[spatial_key], dtype=float)[:, :2]
    diam = _spot_diameter_px(adata, mpp, spot_diameter_um)

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    else:
        fig = ax.figure
    # pixel i of the thumbnail covers level-0 [i*scale, (i+1)*scale) - 0.5
    ax.imshow(
        thumb,
        extent=(-0.5, thumb.shape[1] * scale - 0.5, thumb.shape[0] * scale - 0.5, -0.5),
        interpolation="antialiased",
    )
    _draw_spots(fig, ax, adata, xy, diam, color=color, layer=layer, cmap=cmap, alpha=alpha)
    if crop and len(xy):
        m = 2 * diam
        ax.set_xlim(max(xy[:, 0].min() - m, -0.5), min(xy[:, 0].max() + m, w0 - 0.5))
        ax.set_ylim(min(xy[:, 1].max() + m, h0 - 0.5), max(xy[:, 1].min() - m, -0.5))
    else:
        ax.set_xlim(-0.5, w0 - 0.5)
        ax.set_ylim(h0 - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xlabel("x (level-0 px)")
    ax.set_ylabel("y (level-0 px)")
    diam_txt = f"spot ⌀ {diam:.1f} px" + (f" = {diam * mpp:.0f} µm" if mpp else "")
    ax.set_title(title if title is not None else f"{color or 'spots'} — {diam_txt}")
    return _finish(fig, save, dpi)


def patch_grid(
    data: Any,
    n: int = 16,
    *,
    barcodes: Any = None,
    ncols: int | None = None,
    mpp: float = 0.5,
    size_px: int = 224,
    image: Any = None,
    obs_filter: str | None = None,
    seed: int = 0,
    spatial_key: str = K.SPATIAL,
    title: str | None = None,
    panel_size: float = 1.6,
    save: str | os.PathLike | None = None,
    dpi: int = 120,
) -> Figure:
    """Show a grid of sample patches with their barcodes.

    Parameters
    ----------
    data
        ``(n, H, W, 3)`` uint8 patches (e.g. from `stalign.im.extract_patches`
        or `stalign.im.read_hest_patches` ``.img``), or an AnnData whose
        patches are read lazily from its image.
    n
        Number of patches shown (a random sample, fixed by ``seed``).
    barcodes
        Labels for array input (default: the patch index).
    ncols
        Grid columns (default ≈ √n).
    mpp, size_px
        Patch resolution (µm/px) and side (px) for AnnData input.
    image
        Image for AnnData input (default: the AnnData's own).
    obs_filter
        For AnnData input, a bool ``obs`` column restricting the sample (e.g.
        ``'patch_in_tissue'``).
    seed
        Random seed of the sample.
    spatial_key
        ``obsm`` key of the spot centres.
    title
        Figure title.
    panel_size
        Size of one panel (inches).
    save, dpi
        Optional output file and its resolution.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    if isinstance(data, np.ndarray):
        if data.ndim != 4 or data.shape[-1] != 3:
            msg = f"patches must have shape (n, H, W, 3), got {data.shape}"
            raise ValueError(msg)
        labels = (
            np.arange(len(data)).astype(str)
            if barcodes is None
            else np.asarray([str(b) for b in barcodes])
        )
        if len(labels) != len(data):
            msg = f"got {len(labels)} barcodes for {len(data)} patches"
            raise ValueError(msg)
        pick = np.sort(rng.choice(len(data), size=min(n, len(data)), replace=False))
        shown, names = data[pick], labels[pick]
    elif hasattr(data, "obs") and hasattr(data, "obsm"):
        from ..im import SlideImage, open_image

        pool = np.arange(data.n_obs)
        if obs_filter is not None:
            if obs_filter not in data.obs.columns:
                msg = f"obs_filter={obs_filter!r} is not an obs column"
                raise ValueError(msg)
            pool = pool[data.obs[obs_filter].to_numpy(dtype=bool)]
        pick = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))
        src = data if image is None else image
        slide = open_image(src)
        try:
            centres = np.asarray(data.obsm[spatial_key], dtype=float)[pick, :2]
            shown, _ = slide.read_patches(centres, size_px=size_px, mpp=mpp)
        finally:
            if not isinstance(src, SlideImage):
                slide.close()
        names = np.asarray(data.obs_names)[pick]
    else:
        msg = f"patch_grid expects an (n, H, W, 3) array or an AnnData, got {type(data).__name__}"
        raise TypeError(msg)
    k = len(shown)
    if k == 0:
        msg = "no patches to show"
        raise ValueError(msg)
    ncols = ncols or int(np.ceil(np.sqrt(k)))
    nrows = int(np.ceil(k / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(ncols * panel_size, nrows * panel_size + 0.3), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, name in zip(axes.ravel(), shown, names, strict=False):
        ax.imshow(img)
        ax.set_title(str(name), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig, save, dpi)
