"""Benchmark plots: per-target Pearson scatter, measured vs predicted maps, retrieval curves."""

from __future__ import annotations

import os
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
        Label the targets furthest from the diagonal.
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
    fig = _new_figure((4.6, 4.4))
    ax = fig.add_subplot()
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
    ax.set_aspect("equal")
    for i in np.argsort(-np.abs(b - a))[:n_labels]:
        ax.annotate(common[i], (a[i], b[i]), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel(f"{xlabel} (mean {np.nanmean(a):.3f})")
    ax.set_ylabel(f"{ylabel} (mean {np.nanmean(b):.3f})")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    _save(fig, save)
    return fig


def bench_maps(
    coords: np.ndarray,
    measured: np.ndarray,
    predicted: Mapping[str, np.ndarray],
    names: Sequence[str],
    *,
    scores: Mapping[str, Sequence[float]] | None = None,
    spot_size: float = 18.0,
    title: str | None = None,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Measured vs predicted values of a few targets on the tissue (one row per target).

    Parameters
    ----------
    coords
        ``(n, 2)`` spot centres (level-0 px, x right, y down) of one section.
    measured
        ``(n, len(names))`` measured values.
    predicted
        Feature-set label → ``(n, len(names))`` predictions (one column of panels each).
    names
        Target names (row titles).
    scores
        Feature-set label → per-target Pearson shown in the panel titles.
    spot_size
        Marker size (points²).
    title
        Figure title.
    save
        Write the figure to this path.

    Returns
    -------
    Figure
        The matplotlib figure.
    """
    coords = np.asarray(coords, float)
    measured = np.asarray(measured, float)
    k = len(names)
    cols = ["measured", *predicted]
    fig = _new_figure((2.4 * len(cols), 2.3 * k + (0.3 if title else 0)))
    axes = fig.subplots(k, len(cols), squeeze=False)
    for r, name in enumerate(names):
        panels = [measured[:, r]] + [np.asarray(p, float)[:, r] for p in predicted.values()]
        for c, (label, v) in enumerate(zip(cols, panels, strict=True)):
            ax = axes[r, c]
            # each panel on its own scale: Pearson ignores offset and scale
            lo, hi = np.nanpercentile(v, [2, 98])
            ax.scatter(
                coords[:, 0],
                coords[:, 1],
                c=v,
                s=spot_size,
                cmap="viridis",
                vmin=lo,
                vmax=hi if hi > lo else lo + 1e-9,
                linewidths=0,
            )
            ax.set_aspect("equal")
            ax.invert_yaxis()
            ax.set_xticks([])
            ax.set_yticks([])
            t = label
            if scores is not None and label in scores:
                t += f"\nr = {scores[label][r]:.2f}"
            ax.set_title(t, fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, save)
    return fig


def bench_retrieval_curves(
    curves: Mapping[str, np.ndarray],
    *,
    chance: np.ndarray | None = None,
    title: str = "image → profile retrieval",
    save: str | os.PathLike | None = None,
) -> Figure:
    """Recall@k curves (k = 1 … K) of several feature sets, with the chance line.

    Parameters
    ----------
    curves
        Label → recall@k for ``k = 1 … K`` (``RetrievalResult.curve``).
    chance
        Recall@k of a random ranking, same length.
    title
        Axes title.
    save
        Write the figure to this path.

    Returns
    -------
    Figure
        The matplotlib figure.
    """
    fig = _new_figure((5.0, 3.8))
    ax = fig.add_subplot()
    for label, curve in curves.items():
        k = np.arange(1, len(curve) + 1)
        ax.plot(k, curve, label=label, lw=1.5)
    if chance is not None:
        ax.plot(np.arange(1, len(chance) + 1), chance, color="0.3", ls="--", lw=1, label="chance")
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, save)
    return fig
