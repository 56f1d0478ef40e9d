"""Benchmark plots: maps over the H&E, retrieval with spread, scatter labels, training curves."""

import numpy as np
import pandas as pd
from matplotlib.text import Text

from stalign import pl

SCALE = 8.0  # level-0 px per thumbnail px
MPP0 = 0.5  # µm per level-0 px
LONG = "HALLMARK_EPITHELIAL_MESENCHYMAL_TRANSITION_AND_A_VERY_LONG_TAIL_OF_WORDS"


def test_maps_lie_on_the_thumbnail_in_level0_pixels():
    """The H&E is placed by its recorded scale; spots to scale; colour bars, scale bar, names."""
    thumb = np.zeros((100, 120, 3), np.uint8)
    coords = np.array([[100.0, 100.0], [500.0, 300.0], [300.0, 200.0]])
    values = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 0.0]])
    fig = pl.bench_maps(
        coords,
        values,
        {"aligned": values[::-1]},
        ["A", LONG],
        scores={"aligned": [0.5, -0.5]},
        image=thumb,
        image_scale=SCALE,
        mpp=MPP0,
        spot_diameter=20.0,
        value_label="log1p counts",
    )
    axes = [ax for sf in fig.subfigs for ax in sf.axes]
    maps = [ax for ax in axes if ax.images]
    assert len(maps) == 4  # 2 targets × (measured, aligned)
    x0, x1, y1, y0 = maps[0].images[0].get_extent()
    # the crop around the spots (± one spot diameter), in level-0 px on thumbnail px edges
    assert x0 <= 80 and x1 >= 520 and y0 <= 80 and y1 >= 320
    assert x0 % SCALE == 0 and y0 % SCALE == 0 and x1 - x0 < 120 * SCALE
    bars = [ax for ax in axes if ax not in maps]
    assert len(bars) == 4 and all(b.get_xlabel() == "log1p counts" for b in bars)
    # a scale bar of a round length (µm) in each measured panel only
    texts = [[t.get_text() for a in ax.artists for t in a.findobj(Text)] for ax in maps]
    assert texts == [["50 µm"], [], ["50 µm"], []]
    # long target names wrapped, never cut: every character is in the row title
    titles = [t.get_text() for sf in fig.subfigs for t in sf.texts]
    assert titles[0] == "A" and titles[1].replace("\n", "") == LONG
    assert max(len(line) for line in titles[1].splitlines()) <= 60


def test_retrieval_curves_show_the_spread_over_seeds():
    curves = {
        "a": np.stack([np.linspace(0, 1, 10), np.linspace(0, 0.8, 10)]),
        "b": np.linspace(0, 1, 10),
    }
    fig = pl.bench_retrieval_curves(curves, chance=np.linspace(0, 0.5, 10), highlight=("a",))
    left = fig.axes[0]
    assert len(left.collections) == 1  # one band: only "a" has seeds
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["a (mean ± sd, 2 seeds)", "b", "chance (random ranking)"]
    styles = {line.get_label(): (line.get_color(), line.get_linestyle()) for line in left.lines}
    assert styles["a (mean ± sd, 2 seeds)"] != styles["b"]
    np.testing.assert_allclose(left.lines[0].get_ydata(), np.linspace(0, 0.9, 10))


def test_training_curves_draw_recall_as_a_fraction():
    history = pd.DataFrame(
        {
            "step": [0, 10],
            "train_loss": [3.0, 2.0],
            "val_loss": [3.1, 2.5],
            **{f"val_recall@{k}": [0.1, 0.2] for k in (1, 5, 10)},
            **{f"val_chance@{k}": [0.05, 0.05] for k in (1, 5, 10)},
        }
    )
    import matplotlib.pyplot as plt

    fig = pl.training_curves(history)
    ret = fig.axes[1]
    assert "fraction" in ret.get_ylabel()
    np.testing.assert_allclose(ret.lines[0].get_ydata(), [0.1, 0.2])  # not x 100
    plt.close(fig)


def test_scatter_names_the_furthest_targets_in_a_column_without_overlap():
    names = [LONG, "G1", "G2", "G3"]
    x = pd.Series([0.1, 0.2, 0.3, 0.4], index=names)
    y = pd.Series([0.5, 0.21, 0.0, 0.45], index=names)  # |y - x|: 0.4, 0.01, 0.3, 0.05
    fig = pl.bench_scatter(x, y, n_labels=3, title="Pearson per pathway")
    ax = fig.axes[0]
    labels = {t.get_text().replace("\n", ""): t.xyann[1] for t in ax.texts}
    assert set(labels) == {LONG, "G2", "G3"}  # every character of the long name kept
    ys = sorted(labels.values())
    assert min(np.diff(ys)) > 0.2  # stacked apart, in axes fractions of the label column
    assert fig._suptitle.get_text() == "Pearson per pathway"
