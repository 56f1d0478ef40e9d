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
