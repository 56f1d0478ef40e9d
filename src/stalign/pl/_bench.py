"""Benchmark plots: per-target Pearson scatter, measured vs predicted maps, retrieval curves."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["bench_maps", "bench_retrieval_curves", "bench_scatter"]


def _new_figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure  # no pyplot: never touches the user's backend

    return Figure(figsize=figsize, layout="constrained")


def _save(fig: Figure, save: str | os.PathLike | None, dpi: int = 110) -> None:
    if save is not None:
        fig.savefig(save, dpi=dpi, metadata={"Software": None})


def _label_column(ax, column, names: list[str], a: np.ndarray, b: np.ndarray, n: int) -> None:
    """Name the ``n`` points of ``ax`` furthest from the diagonal, stacked in ``column``.

    Labels are stacked in the points' vertical order with a leader line each, and long
    names (pathways) are wrapped, so they neither overlap nor run off the figure.
    """
    idx = np.argsort(-np.abs(b - a))[:n]
    idx = idx[np.argsort(b[idx])]  # bottom to top, so leader lines do not cross
    ys = np.linspace(0.06, 0.94, len(idx)) if len(idx) > 1 else [0.5][: len(idx)]
    for y, i in zip(ys, idx, strict=True):
        text = ax.annotate(
            _wrap(names[i], 32),
            xy=(a[i], b[i]),
            xytext=(0.04, y),
            textcoords=column.transAxes,
            fontsize=6.5,
            va="center",
            annotation_clip=False,
            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5", "shrinkA": 0, "shrinkB": 2},
        )
        text.set_in_layout(False)  # the column's axes holds the room


def bench_scatter(
    x: pd.Series,
    y: pd.Series,
    *,
    xlabel: str = "baseline",
    ylabel: str = "aligned",
    title: str = "Pearson per gene",
    n_labels: int = 8,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Scatter of a per-target score (e.g. Pearson per gene) for two feature sets.

    Parameters
    ----------
    x, y
        Scores indexed by target name; plotted on the targets both contain.
    xlabel, ylabel
        Names of the two feature sets.
    title
        Axes title.
    n_labels
        Name the targets furthest from the diagonal (in a column right of the axes).
    save
        Write the figure to this path (PNG/SVG/PDF by suffix).

    Returns
    -------
    Figure
        The matplotlib figure.
    """
    common = [t for t in x.index if t in y.index]
    if not common:
        msg = "bench_scatter: x and y share no target names"
        raise ValueError(msg)
    a = x.loc[common].to_numpy(float)
    b = y.loc[common].to_numpy(float)
    fig = _new_figure((7.0, 4.4))
    grid = fig.add_gridspec(1, 2, width_ratios=[1.5, 1])
    ax, column = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    column.set_axis_off()
    better = b > a
    ax.scatter(a[better], b[better], s=16, c="#1a9850", label=f"{ylabel} higher ({better.sum()})")
    ax.scatter(
        a[~better], b[~better], s=16, c="#d73027", label=f"{xlabel} higher ({(~better).sum()})"
    )
    lo = float(np.nanmin([a.min(), b.min(), 0.0])) - 0.05
    hi = float(np.nanmax([a.max(), b.max()])) + 0.05
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, ls="--")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_box_aspect(1)  # square box, equal limits: equal scales (layout-friendly)
    _label_column(ax, column, [str(t) for t in common], a, b, n_labels)
    ax.set_xlabel(f"{xlabel} (mean {np.nanmean(a):.3f})")
    ax.set_ylabel(f"{ylabel} (mean {np.nanmean(b):.3f})")
    fig.suptitle(title)  # an axes title overflows: constrained layout + a square box
    ax.legend(fontsize=7, loc="upper left")
    _save(fig, save)
    return fig


#: Scale-bar lengths to choose from, µm.
_SCALE_BAR_UM = (10, 20, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 20000)


def _wrap(name: str, width: int = 60) -> str:
    """Break a long target name into lines at underscores or spaces (no character lost)."""
    if len(name) <= width:
        return name
    parts = re.split(r"(?<=[_ ])", name)
    lines = [""]
    for part in parts:
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


def _view_box(coords: np.ndarray, pad: float) -> tuple[float, float, float, float]:
    """``(x0, x1, y0, y1)`` around the spots, ``pad`` level-0 px on each side."""
    (x0, y0), (x1, y1) = np.nanmin(coords, axis=0), np.nanmax(coords, axis=0)
    return x0 - pad, x1 + pad, y0 - pad, y1 + pad


def _draw_image(ax, image: np.ndarray, scale: float, box: tuple[float, ...]) -> None:
    """Draw the part of ``image`` (``scale`` level-0 px per px) under ``box`` in level-0 px."""
    x0, x1, y0, y1 = box
    h, w = image.shape[:2]
    ix0, iy0 = max(0, int(np.floor(x0 / scale))), max(0, int(np.floor(y0 / scale)))
    ix1, iy1 = min(w, int(np.ceil(x1 / scale))), min(h, int(np.ceil(y1 / scale)))
    if ix1 <= ix0 or iy1 <= iy0:  # the spots lie outside the image
        return
    ax.imshow(
        image[iy0:iy1, ix0:ix1],
        extent=(ix0 * scale, ix1 * scale, iy1 * scale, iy0 * scale),
        interpolation="antialiased",
        alpha=0.8,  # a little faded, so the spots' colours read first
        zorder=0,
    )


def _draw_spots(ax, coords: np.ndarray, v: np.ndarray, diameter: float | None, spot_size: float):
    """Spots coloured by ``v`` on their own 2–98 percentile range; return the mappable."""
    from matplotlib.collections import EllipseCollection
    from matplotlib.colors import Normalize

    finite = v[np.isfinite(v)]
    lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-9)
    if diameter is None:
        return ax.scatter(
            coords[:, 0], coords[:, 1], c=v, s=spot_size, cmap="viridis", norm=norm, linewidths=0
        )
    d = np.full(len(coords), float(diameter))
    spots = EllipseCollection(
        d,
        d,
        np.zeros(len(coords)),
        units="xy",
        offsets=coords,
        offset_transform=ax.transData,
        cmap="viridis",
        norm=norm,
        edgecolors="white",  # each spot stands out of the H&E, dark values too
        linewidths=0.4,
        zorder=1,
    )
    spots.set_array(v)
    ax.add_collection(spots)
    return spots


def _scale_bar(ax, mpp: float, width_px: float) -> None:
    """Draw a bar of a round number of µm, at most a quarter of a ``width_px`` (level-0 px) view."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    fits = [um for um in _SCALE_BAR_UM if um / mpp <= width_px / 4] or [_SCALE_BAR_UM[0]]
    um = fits[-1]
    label = f"{um / 1000:g} mm" if um >= 1000 else f"{um} µm"
    ax.add_artist(
        AnchoredSizeBar(
            ax.transData,
            um / mpp,
            label,
            "lower left",
            pad=0.3,
            borderpad=0.3,
            sep=2,
            color="black",
            frameon=True,
            size_vertical=width_px / 150,
            fontproperties={"size": 7},
        )
    )


def _map_panel(ax, coords, v, *, box, image, image_scale, diameter, spot_size, label, title):
    """Draw one panel: H&E, spots to scale, its colour bar and title."""
    if image is not None:
        _draw_image(ax, image, image_scale, box)
    mappable = _draw_spots(ax, coords, v, diameter, spot_size)
    ax.set_xlim(box[0], box[1])
    ax.set_ylim(box[3], box[2])  # image rows grow downwards
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    cb = ax.figure.colorbar(
        mappable, ax=ax, orientation="horizontal", shrink=0.9, pad=0.02, aspect=25, extend="both"
    )
    cb.ax.tick_params(labelsize=6)
    cb.locator = _ticks(3)
    cb.update_ticks()
    cb.set_label(label, fontsize=7)


def _ticks(n: int, *, integer: bool = False):
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(n, integer=integer)


def bench_maps(
    coords: np.ndarray,
    measured: np.ndarray,
    predicted: Mapping[str, np.ndarray],
    names: Sequence[str],
    *,
    scores: Mapping[str, Sequence[float]] | None = None,
    image: np.ndarray | None = None,
    image_scale: float = 1.0,
    mpp: float | None = None,
    spot_diameter: float | None = None,
    value_label: str = "value",
    predicted_label: str | None = None,
    spot_size: float = 18.0,
    title: str | None = None,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Measured vs predicted values of a few targets on the tissue (one row per target).

    Each panel has its own colour range (2nd–98th percentile of its spots) and colour
    bar: Pearson ignores offset and scale, and a ridge probe's predictions span a
    narrower range than the measured values.

    Parameters
    ----------
    coords
        ``(n, 2)`` spot centres (level-0 px, x right, y down) of one section.
    measured
        ``(n, len(names))`` measured values.
    predicted
        Feature-set label → ``(n, len(names))`` predictions (one column of panels each).
    names
        Target names (row titles; long ones are wrapped, never cut).
    scores
        Feature-set label → per-target Pearson shown in the panel titles.
    image
        ``(h, w, 3)`` H&E drawn under the spots, e.g. a pairs store's section
        thumbnail; its pixel ``(0, 0)`` is level-0 pixel ``(0, 0)``.
    image_scale
        Level-0 px per ``image`` px.
    mpp
        µm per level-0 px: a scale bar (µm) is drawn in the ``measured`` column.
    spot_diameter
        Spot diameter in level-0 px: spots are drawn to scale (else as markers of
        ``spot_size`` points²).
    value_label
        Colour-bar label of the measured values (their unit).
    predicted_label
        Colour-bar label of the predictions (default ``value_label``), e.g. to say
        that a probe without intercept predicts up to an offset.
    spot_size
        Marker size (points²) when ``spot_diameter`` is not given.
    title
        Figure title.
    save
        Write the figure to this path.

    Returns
    -------
    Figure
        The matplotlib figure (one sub-figure per target name, then one per row of
        panels).
    """
    coords = np.asarray(coords, float)
    measured = np.asarray(measured, float)
    if measured.shape != (len(coords), len(names)):
        msg = f"bench_maps: measured must be (spots, names) = {(len(coords), len(names))}"
        raise ValueError(msg + f", got {measured.shape}")
    cols = ["measured", *predicted]
    pad = float(spot_diameter) if spot_diameter else 0.03 * float(np.ptp(coords, axis=0).max())
    box = _view_box(coords, max(pad, 1.0))
    aspect = (box[3] - box[2]) / max(box[1] - box[0], 1e-9)
    panel_w = 3.0
    row_h = 0.9 * panel_w * min(max(aspect, 0.3), 1.6) + 1.1  # + titles and colour bar
    # each target: a header strip with its (wrapped) name above its row of panels
    wrapped = [_wrap(str(n)) for n in names]
    heads = [0.1 + 0.17 * (w.count("\n") + 1) for w in wrapped]
    ratios = [h for head in heads for h in (head, row_h)]
    fig = _new_figure((panel_w * len(cols), sum(ratios) + (0.4 if title else 0)))
    strips = fig.subfigures(len(ratios), 1, height_ratios=ratios, squeeze=False)[:, 0]
    for r, name in enumerate(wrapped):
        head, sub = strips[2 * r], strips[2 * r + 1]
        head.text(0.5, 0.3, name, ha="center", va="bottom", fontsize=9, fontweight="bold")
        axes = sub.subplots(1, len(cols), squeeze=False)[0]
        panels = [measured[:, r]] + [np.asarray(p, float)[:, r] for p in predicted.values()]
        for c, (label, v) in enumerate(zip(cols, panels, strict=True)):
            t = label if c == 0 else f"{label} (predicted)"
            if scores is not None and label in scores:
                t += f"\nr = {scores[label][r]:.2f}"
            _map_panel(
                axes[c],
                coords,
                v,
                box=box,
                image=image,
                image_scale=image_scale,
                diameter=spot_diameter,
                spot_size=spot_size,
                label=value_label if c == 0 else (predicted_label or value_label),
                title=t,
            )
            if c == 0 and mpp is not None:
                _scale_bar(axes[c], mpp, box[1] - box[0])
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, save)
    return fig


_LINE_STYLES = ("-", "--", "-.", ":")


def _mean_sd(curve: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Mean over seeds, sd over seeds (``None``: one seed) and the number of seeds."""
    c = np.asarray(curve, float)
    if c.ndim == 1:
        return c, None, 1
    if c.shape[0] == 1:
        return c[0], None, 1
    return c.mean(axis=0), c.std(axis=0), c.shape[0]


def bench_retrieval_curves(
    curves: Mapping[str, np.ndarray],
    *,
    chance: np.ndarray | None = None,
    highlight: Sequence[str] = (),
    title: str = "image → profile retrieval",
    save: str | os.PathLike | None = None,
) -> Figure:
    """Recall@k curves (k = 1 … K, a fraction) of several feature sets, with chance.

    Left: recall@k; right: recall@k minus chance, where small differences show.
    A feature set scored over several seeds is drawn as its mean with a band of
    ± one sd over the seeds.

    Parameters
    ----------
    curves
        Label → recall@k for ``k = 1 … K`` (``RetrievalResult.curve``), or
        ``(seeds, K)`` curves of one label over seeds.
    chance
        Recall@k of a random ranking, length ``K``.
    highlight
        Labels drawn with thicker lines (e.g. the compared baseline and aligned encoder).
    title
        Figure title (wrapped when long, never cut).
    save
        Write the figure to this path.

    Returns
    -------
    Figure
        The matplotlib figure.
    """
    import textwrap

    from matplotlib import colormaps

    fig = _new_figure((9.0, 4.4))
    ax, gain = fig.subplots(1, 2)
    palette = colormaps["tab10" if len(curves) <= 10 else "tab20"].colors
    for i, (label, curve) in enumerate(curves.items()):
        mean, sd, n = _mean_sd(curve)
        k = np.arange(1, len(mean) + 1)
        style = {
            "color": palette[i % len(palette)],
            "ls": _LINE_STYLES[i % len(_LINE_STYLES)],
            "lw": 2.2 if label in highlight else 1.3,
        }
        name = f"{label} (mean ± sd, {n} seeds)" if sd is not None else label
        base = np.zeros_like(mean) if chance is None else np.asarray(chance, float)[: len(mean)]
        for axis, y in ((ax, mean), (gain, mean - base)):
            axis.plot(k, y, label=name if axis is ax else None, **style)
            if sd is not None:
                axis.fill_between(k, y - sd, y + sd, color=style["color"], alpha=0.18, lw=0)
    if chance is not None:
        kc = np.arange(1, len(chance) + 1)
        ax.plot(kc, chance, color="black", ls=(0, (1, 1)), lw=1.5, label="chance (random ranking)")
        gain.axhline(0.0, color="black", ls=(0, (1, 1)), lw=1.5)
    ax.set_ylabel("recall@k (fraction of spots)")
    gain.set_ylabel("recall@k − chance" if chance is not None else "recall@k")
    for axis in (ax, gain):
        axis.set_xlabel("k (spots retrieved)")
        axis.xaxis.set_major_locator(_ticks(6, integer=True))
        axis.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(textwrap.fill(title, 90), fontsize=10)
    _save(fig, save)
    return fig
