"""QC figures of a pairs build: kept/dropped spots on the H&E, counts and tissue histograms.

They take plain arrays and tables (a thumbnail, ``spots.csv`` frames, depth tables), so
``pl`` needs nothing of ``pairs``: the store's QC report (`stalign.pairs.write_qc_report`,
a layer above) draws them from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = ["qc_counts_histogram", "qc_pathway_depth", "qc_spots", "qc_tissue_histogram"]

#: colour of each spot status in `qc_spots` (kept + the drop reasons)
QC_COLORS = {
    "kept": "#1a9850",
    "low_tissue": "#fdae61",
    "not_in_tissue_call": "#9e9e9e",
    "outside_image": "#d73027",
    "no_counts": "#762a83",
    "below_rarefy_depth": "#c2a5cf",
}
#: colour of the tissue-mask outline in `qc_spots`
MASK_COLOR = "#00a6d6"


def _figure(ax=None, figsize=(5.0, 5.0)):
    if ax is None:
        from matplotlib.figure import Figure  # no pyplot: never touches the user's backend

        fig = Figure(figsize=figsize, layout="constrained")
        ax = fig.add_subplot()
        return fig, ax
    return ax.figure, ax


def _save(fig, save: str | os.PathLike | None, dpi: int = 110) -> None:
    if save is not None:
        fig.savefig(save, dpi=dpi, metadata={"Software": None})


def qc_spots(
    thumbnail: np.ndarray,
    spots: pd.DataFrame,
    *,
    scale: float,
    spot_diameter_px: float | None = None,
    tissue_mask: np.ndarray | None = None,
    title: str | None = None,
    ax=None,
    save: str | os.PathLike | None = None,
):
    """Spots on the H&E thumbnail, coloured by kept / drop reason.

    Parameters
    ----------
    thumbnail
        ``(h, w, 3)`` uint8 down-sampled H&E covering the whole level-0 image.
    spots
        One row per spot with level-0 pixel ``x``, ``y`` and ``reason`` (``""``
        for kept spots, else one of ``outside_image``, ``not_in_tissue_call``,
        ``low_tissue``, ``no_counts``, ``below_rarefy_depth``) — the ``spots.csv`` of
        a shard.
    scale
        Level-0 px per thumbnail px.
    spot_diameter_px
        Spot diameter in thumbnail px (default 4); spots are drawn to scale.
    tissue_mask
        The slide's tissue mask on the thumbnail's grid, ``(h, w)`` coverage in
        ``[0, 1]`` (or 0–255 / bool); its outline is drawn.
    title
        Axes title.
    ax
        Draw into this matplotlib axes instead of a new figure.
    save
        Write the figure to this path (PNG).

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _figure(ax)
    ax.imshow(thumbnail, interpolation="lanczos")
    from matplotlib.collections import EllipseCollection
    from matplotlib.lines import Line2D

    status = spots["reason"].fillna("").astype(str).replace("", "kept")
    diameter = float(spot_diameter_px or 4.0)  # thumbnail px (data units)
    handles = []
    for name, colour in QC_COLORS.items():
        sel = (status == name).to_numpy()
        if not sel.any():
            continue
        xy = np.column_stack([spots["x"].to_numpy()[sel], spots["y"].to_numpy()[sel]]) / scale
        d = np.full(len(xy), diameter)
        ax.add_collection(
            EllipseCollection(
                d,
                d,
                np.zeros(len(xy)),
                units="xy",
                offsets=xy,
                offset_transform=ax.transData,
                facecolors=colour,
                edgecolors="none",
                alpha=0.8 if name == "kept" else 0.6,
            )
        )
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker="o",
                color=colour,
                markersize=7,
                label=f"{name.replace('_', ' ')} ({int(sel.sum())})",
            )
        )
    if tissue_mask is not None:
        handles.append(_draw_mask_outline(ax, tissue_mask, thumbnail.shape[:2]))
    ax.set_xlim(0, thumbnail.shape[1])
    ax.set_ylim(thumbnail.shape[0], 0)
    ax.set_axis_off()
    ax.legend(handles=handles, loc="lower left", fontsize=7, framealpha=0.8)
    if title:
        ax.set_title(title, fontsize=10)
    _save(fig, save)
    return fig


def _draw_mask_outline(ax, tissue_mask: np.ndarray, shape: tuple[int, ...]):
    """Draw the 50 % contour of ``tissue_mask`` on ``ax``; return its legend handle."""
    from matplotlib.lines import Line2D

    cover = np.asarray(tissue_mask, dtype=np.float32)
    if cover.shape != tuple(shape):
        msg = f"tissue_mask must have the thumbnail's shape {tuple(shape)}, got {cover.shape}"
        raise ValueError(msg)
    if cover.max() > 1.0:
        cover = cover / 255.0
    if cover.min() < 0.5 <= cover.max():
        ax.contour(cover, levels=[0.5], colors=[MASK_COLOR], linewidths=1.2)
    return Line2D([], [], color=MASK_COLOR, lw=1.5, label="tissue mask")


def _status(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Kept mask and 'dropped because outside the platform's tissue call' mask."""
    kept = df["kept"].to_numpy(bool)
    off = (df["reason"].fillna("").astype(str) == "not_in_tissue_call").to_numpy()
    return kept, off & ~kept


def _hist_by_sample(
    values: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    bins: np.ndarray,
    xlabel: str,
    title: str,
    log_x: bool,
    vline: float | None,
    save,
):
    n = len(values)
    ncols = min(4, max(1, n))
    nrows = int(np.ceil(n / ncols)) if n else 1
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.0 * ncols, 2.4 * nrows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (sid, (v, kept, off)) in zip(axes, values.items(), strict=False):
        qc_drop = ~kept & ~off
        ax.hist(
            [v[kept], v[qc_drop], v[off]],
            bins=bins,
            stacked=True,
            color=[QC_COLORS["kept"], QC_COLORS["low_tissue"], QC_COLORS["not_in_tissue_call"]],
            label=[
                f"kept ({int(kept.sum())})",
                f"dropped by QC ({int(qc_drop.sum())})",
                f"off tissue call ({int(off.sum())})",
            ],
        )
        if log_x:
            ax.set_xscale("log")
        if vline is not None:
            ax.axvline(vline, color="k", ls="--", lw=1)
        ax.set_title(sid, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("spots", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    _save(fig, save)
    return fig


def qc_counts_histogram(
    spots: Mapping[str, pd.DataFrame], *, save: str | os.PathLike | None = None
):
    """Histogram of total counts per spot for each sample, kept vs dropped stacked.

    Parameters
    ----------
    spots
        ``sample_id`` → the shard's ``spots.csv`` table (``total_counts``, ``kept``,
        ``reason``). Bars stack kept spots, spots dropped by QC and spots outside
        the platform's tissue call.
    save
        Write the figure to this path (PNG).

    Returns
    -------
    matplotlib.figure.Figure
    """
    values = {sid: (df["total_counts"].to_numpy(float), *_status(df)) for sid, df in spots.items()}
    pos = np.concatenate([v[v > 0] for v, _, _ in values.values()] or [np.ones(1)])
    hi = max(10.0, float(pos.max()) if pos.size else 10.0)
    bins = np.geomspace(1.0, hi * 1.05, 40)
    clipped = {sid: (np.clip(v, 1.0, None), k, o) for sid, (v, k, o) in values.items()}
    return _hist_by_sample(
        clipped,
        bins=bins,
        xlabel="total counts per spot (0 shown at 1)",
        title="Counts per spot",
        log_x=True,
        vline=None,
        save=save,
    )


def qc_tissue_histogram(
    spots: Mapping[str, pd.DataFrame],
    *,
    threshold: float | None = None,
    save: str | os.PathLike | None = None,
):
    """Histogram of each patch's tissue fraction per sample, kept vs dropped stacked.

    Parameters
    ----------
    spots
        ``sample_id`` → the shard's ``spots.csv`` table (``tissue_fraction``, ``kept``,
        ``reason``), stacked as in [`qc_counts_histogram`][stalign.pl.qc_counts_histogram].
    threshold
        Tissue threshold of the build, drawn as a dashed line.
    save
        Write the figure to this path (PNG).

    Returns
    -------
    matplotlib.figure.Figure
    """
    values = {
        sid: (df["tissue_fraction"].to_numpy(float), *_status(df)) for sid, df in spots.items()
    }
    return _hist_by_sample(
        values,
        bins=np.linspace(0.0, 1.0, 26),
        xlabel="tissue fraction of the patch",
        title="Tissue fraction",
        log_x=False,
        vline=threshold,
        save=save,
    )


def qc_pathway_depth(
    tables: Mapping[str, pd.DataFrame],
    *,
    threshold: float | None = None,
    column: str = "r_log_counts",
    save: str | os.PathLike | None = None,
):
    """Heat map of each pathway's correlation with sequencing depth, per section.

    Parameters
    ----------
    tables
        ``sample_id`` → depth table indexed by pathway (columns as
        [`pathway_depth_diagnostics`][stalign.tl.pathway_depth_diagnostics]).
    threshold
        The median |r| above which a section is flagged; flagged sections are
        marked ``!`` in their label.
    column
        The statistic drawn (default: Pearson r on log total counts).
    save
        Write the figure to this path (PNG).

    Returns
    -------
    matplotlib.figure.Figure
        Rows: pathways, most depth-driven (median |r| over sections) on top; columns:
        sections, labelled with their median |r|; colour: signed r in [-1, 1].
    """
    frame = pd.DataFrame({sid: t[column] for sid, t in tables.items()})
    order = frame.abs().median(axis=1).sort_values(ascending=False).index
    frame = frame.loc[order]
    med = frame.abs().median(axis=0)
    labels = [
        f"{sid}\n|r| {m:.2f}" + (" !" if threshold is not None and m > threshold else "")
        for sid, m in med.items()
    ]
    fig, ax = _figure(
        figsize=(4.2 + 0.6 * max(1, frame.shape[1]), 1.8 + 0.16 * max(1, frame.shape[0]))
    )
    im = ax.imshow(frame.to_numpy(float), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(frame.shape[1]), labels, fontsize=7)
    ax.set_yticks(range(frame.shape[0]), [_short(p) for p in frame.index], fontsize=6)
    ax.xaxis.tick_top()
    fig.colorbar(im, ax=ax, shrink=0.5, label=f"Pearson {column.replace('_', ' ')}")
    fig.suptitle(
        "Pathway score vs sequencing depth\n(section: median |r| over pathways)", fontsize=9
    )
    _save(fig, save)
    return fig


def _short(pathway: str) -> str:
    """Pathway name without the collection prefix (``HALLMARK_``), at most 32 characters."""
    name = pathway.split("_", 1)[1] if pathway.startswith("HALLMARK_") else pathway
    return name if len(name) <= 32 else name[:31] + "…"
