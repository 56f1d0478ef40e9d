"""stalign.pl.pathways_to_obs: pathway scores where scanpy / squidpy plots look for them."""

from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest

import stalign as st

matplotlib.use("Agg")

PATHWAYS = ["HALLMARK_HYPOXIA", "HALLMARK_APOPTOSIS", "HALLMARK_GLYCOLYSIS"]


@pytest.fixture
def adata() -> ad.AnnData:
    rng = np.random.default_rng(0)
    obs_names = [f"spot{i}" for i in range(6)]
    a = ad.AnnData(X=rng.poisson(2, (6, 4)).astype(np.float32))
    a.obs_names = obs_names
    a.obsm["spatial"] = rng.uniform(0, 100, (6, 2))
    a.obsm["pathway_scores"] = pd.DataFrame(
        rng.normal(size=(6, 3)), index=obs_names, columns=PATHWAYS
    )
    return a


def test_scanpy_colours_by_a_pathway_once_it_is_in_obs(adata):
    sc = pytest.importorskip("scanpy")
    with pytest.raises(KeyError):  # the reason for the helper
        sc.pl.embedding(adata, basis="spatial", color="HALLMARK_HYPOXIA", show=False)
    assert st.pl.pathways_to_obs(adata, ["HALLMARK_HYPOXIA"]) is None
    sc.pl.embedding(adata, basis="spatial", color="HALLMARK_HYPOXIA", show=False)
    np.testing.assert_array_equal(
        adata.obs["HALLMARK_HYPOXIA"], adata.obsm["pathway_scores"]["HALLMARK_HYPOXIA"]
    )
    assert "HALLMARK_APOPTOSIS" not in adata.obs


def test_all_names_prefix_and_copy(adata):
    out = st.pl.pathways_to_obs(adata, prefix="pw_", copy=True)
    assert [f"pw_{p}" for p in PATHWAYS] == list(out.obs.columns)
    assert adata.obs.shape[1] == 0, "copy=True must leave the input alone"
    st.pl.pathways_to_obs(adata, "HALLMARK_GLYCOLYSIS", prefix="pw_")  # one name as a string
    assert list(adata.obs.columns) == ["pw_HALLMARK_GLYCOLYSIS"]


def test_joins_on_obs_names_not_row_position(adata):
    scores = adata.obsm["pathway_scores"]
    view = adata[::-1].copy()  # rows reversed: obsm follows, obs_names say which spot
    st.pl.pathways_to_obs(view, ["HALLMARK_APOPTOSIS"])
    expected = scores.loc[view.obs_names, "HALLMARK_APOPTOSIS"].to_numpy()
    np.testing.assert_array_equal(view.obs["HALLMARK_APOPTOSIS"].to_numpy(), expected)


def test_unknown_name_or_missing_scores_say_what_exists(adata):
    with pytest.raises(KeyError, match=r"HALLMARK_HYPOXA.*did you mean \['HALLMARK_HYPOXIA'"):
        st.pl.pathways_to_obs(adata, ["HALLMARK_HYPOXA"])
    with pytest.raises(KeyError, match="score_pathways"):
        st.pl.pathways_to_obs(adata, key="pw_other")
    adata.obsm["dense"] = np.zeros((adata.n_obs, 2))
    with pytest.raises(TypeError, match="expected a DataFrame"):
        st.pl.pathways_to_obs(adata, key="dense")
