"""stalign.pl.pathways: scores on the tissue image."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

import stalign as st


def test_pathways_plot_on_mob(mob_adata, tmp_path):
    a = mob_adata[mob_adata.obs["in_tissue"].to_numpy()].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        st.tl.score_pathways(a, "hallmark", method="zscore")
    names = ["HALLMARK_COAGULATION", "HALLMARK_ESTROGEN_RESPONSE_EARLY", "HALLMARK_HYPOXIA"]
    out = tmp_path / "p.png"
    fig = st.pl.pathways(a, names, ncols=2, save=out)
    assert out.stat().st_size > 10_000
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["coagulation", "estrogen response early", "hypoxia"]
    assert axes[0].images, "the H&E should be drawn under the spots"
    coll = axes[0].collections[0]
    np.testing.assert_allclose(coll.get_array(), a.obsm["pathway_scores"][names[0]])
    with pytest.raises(KeyError, match="not columns"):
        st.pl.pathways(a, ["NOPE"])
    del a.obsm["pathway_scores"]
    with pytest.raises(KeyError, match="score_pathways"):
        st.pl.pathways(a)
    matplotlib.pyplot.close("all")


def test_qc_pathway_depth_orders_pathways_and_flags_sections():
    import pandas as pd

    tables = {
        "A": pd.DataFrame({"r_log_counts": [0.9, -0.1, 0.6]}, index=["P1", "P2", "P3"]),
        "B": pd.DataFrame({"r_log_counts": [0.2, 0.05, -0.1]}, index=["P1", "P2", "P3"]),
    }
    fig = st.pl.qc_pathway_depth(tables, threshold=0.5)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["P1", "P3", "P2"]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0].endswith("!") and not labels[1].endswith("!")  # A: median |r| 0.6
