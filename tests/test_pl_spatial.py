"""stalign.pl.spatial_spots / patch_grid on the real MOB1 section."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import EllipseCollection

import stalign as st


def _spots(fig):
    (coll,) = [c for c in fig.axes[0].collections if isinstance(c, EllipseCollection)]
    return coll


def test_spatial_spots_gene_obs_and_outline(mob_adata, tmp_path):
    gene = mob_adata.var_names[0]
    fig = st.pl.spatial_spots(mob_adata, gene, save=tmp_path / "gene.png")
    assert (tmp_path / "gene.png").stat().st_size > 10_000
    coll = _spots(fig)
    assert len(coll.get_offsets()) == mob_adata.n_obs
    # circles of the true physical diameter: 100 µm / mpp level-0 px
    diam = 100.0 / mob_adata.uns["stalign"]["mpp"]
    np.testing.assert_allclose(coll._widths * 2, diam)  # matplotlib stores half-widths
    np.testing.assert_allclose(coll.get_array(), mob_adata[:, gene].X.toarray().ravel())
    fig2 = st.pl.spatial_spots(mob_adata, "in_tissue")
    assert fig2.axes[0].get_legend() is not None
    fig3 = st.pl.spatial_spots(mob_adata, crop=False)
    assert fig3.axes[0].get_xlim()[1] == pytest.approx(1905 - 0.5)
    with pytest.raises(ValueError, match="neither an obs column nor a var_name"):
        st.pl.spatial_spots(mob_adata, "no-such-gene")
    plt.close("all")


def test_patch_grid_from_array_and_anndata(mob_adata):
    patches = np.random.default_rng(0).integers(0, 255, (30, 16, 16, 3), dtype=np.uint8)
    fig = st.pl.patch_grid(patches, n=9, barcodes=[f"b{i}" for i in range(30)])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 9 and all(t.startswith("b") for t in titles)
    fig = st.pl.patch_grid(mob_adata, n=6, mpp=4.0, size_px=24, obs_filter="in_tissue")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert set(titles) <= set(mob_adata.obs_names[mob_adata.obs["in_tissue"]])
    assert len(titles) == 6
    with pytest.raises(ValueError, match="shape"):
        st.pl.patch_grid(np.zeros((3, 4, 4)))
    plt.close("all")
