"""stalign.pp: gene-identifier harmonisation and normalisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stalign import pp


def _var(names, **cols):
    return pd.DataFrame(cols, index=pd.Index(names))


def test_looks_like_ensembl():
    assert pp.looks_like_ensembl(["ENSMUSG00000064339.1", "ENSG00000141510"])
    assert not pp.looks_like_ensembl(["Gapdh", "TP53", "ENSG00000141510"])


def test_mouse_symbols_match_human_sets_case_insensitively():
    var = _var(["Gapdh", "Actb", "Cd3e", "Trp53"])
    m = pp.match_gene_sets(var, {"S": ["GAPDH", "ACTB", "CD3E", "NOPE"]}, min_genes=2)
    assert m.source == "var_names" and m.id_type == "symbol"
    np.testing.assert_array_equal(m.indices[0], [0, 1, 2])
    row = m.coverage.loc["S"]
    assert (row.n_found, row.n_total, row.missing) == (3, 4, "NOPE")


def test_symbol_column_preferred_over_ensembl_var_names():
    var = _var(
        ["ENSMUSG00000000001.4", "ENSMUSG00000000003.1", "ENSMUSG00000000028.2"],
        feature_name=["Gnai3", "Pbsn", "Cdc45"],
    )
    m = pp.match_gene_sets(var, {"S": ["GNAI3", "CDC45"]}, min_genes=1)
    assert m.source == "feature_name"
    np.testing.assert_array_equal(m.indices[0], [0, 2])


def test_ensembl_gene_sets_match_gene_ids_without_version():
    var = _var(
        ["Gnai3", "Pbsn", "Cdc45"],
        gene_ids=["ENSMUSG00000000001.4", "ENSMUSG00000000003.1", "ENSMUSG00000000028.2"],
    )
    m = pp.match_gene_sets(var, {"S": ["ENSMUSG00000000001", "ENSMUSG00000000028.9"]}, min_genes=1)
    assert m.id_type == "ensembl" and m.source == "gene_ids"
    np.testing.assert_array_equal(m.indices[0], [0, 2])


def test_ensembl_only_var_raises_clear_error():
    var = _var(["ENSMUSG00000000001.4", "ENSMUSG00000000003.1"])
    with pytest.raises(ValueError, match="no symbol column"):
        pp.match_gene_sets(var, {"S": ["GNAI3"]}, min_genes=1)


def test_nothing_overlaps_and_min_genes():
    var = _var(["A1", "A2", "A3", "A4"])
    with pytest.raises(ValueError, match="no gene of any gene set was found"):
        pp.match_gene_sets(var, {"S": ["B1", "B2"]})
    with pytest.warns(UserWarning, match=r"dropped 1 of 2 gene sets.*SMALL \(1/2\)"):
        m = pp.match_gene_sets(var, {"BIG": ["A1", "A2", "A3"], "SMALL": ["A4", "X"]}, min_genes=2)
    assert m.names == ["BIG"] and m.dropped == ["SMALL (1/2)"]
    with pytest.raises(ValueError, match="min_genes must be >= 1"):
        pp.match_gene_sets(var, {"S": ["A1"]}, min_genes=0)
    with pytest.raises(KeyError, match="gene_column='sym'"):
        pp.match_gene_sets(var, {"S": ["A1"]}, gene_column="sym")


def test_duplicate_keys_use_first_gene():
    var = _var(["Abc", "ABC", "Def"])
    m = pp.match_gene_sets(var, {"S": ["ABC", "DEF"]}, min_genes=1)
    np.testing.assert_array_equal(m.indices[0], [0, 2])


def test_normalize_log1p_matches_definition(mob_adata):
    a = mob_adata[:30].copy()
    counts = a.X.toarray()
    pp.normalize_log1p(a, key_added="lognorm")
    assert sp.issparse(a.layers["lognorm"])
    expected = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(a.layers["lognorm"].toarray(), expected, rtol=1e-5)
    np.testing.assert_array_equal(a.X.toarray(), counts)  # input untouched
    with pytest.raises(KeyError, match="layer='nope'"):
        pp.normalize_log1p(a, layer="nope")
