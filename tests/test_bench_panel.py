"""The HEST gene panel has one rule: in memory and streamed over row blocks alike."""

import numpy as np
import pytest
import scipy.sparse as sp

from stalign.bench import hest_gene_panel
from stalign.bench._genes import panel_from_blocks


def _counts(n: int, g: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Y = rng.poisson(rng.gamma(0.3, 3.0, size=g), size=(n, g)).astype(np.float64)
    Y[:, ::7] = 0
    Y[: n // 20, ::7] = 5  # 5 % of the spots: below the detection threshold
    return Y


@pytest.mark.parametrize(("n", "g", "rows"), [(200, 30, 1), (1537, 400, 97), (3000, 60, 1000)])
def test_the_panel_does_not_depend_on_how_the_rows_are_read(n, g, rows):
    Y = _counts(n, g, seed=n)
    want = hest_gene_panel(Y, n_genes=g)  # every kept gene, ranked

    def blocks(cols):  # sparse row blocks, as a store read sample by sample gives them
        X = sp.csr_matrix(Y if cols is None else Y[:, cols])
        yield from (X[s : s + rows] for s in range(0, n, rows))

    got = panel_from_blocks(blocks, n, g, n_genes=g)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(hest_gene_panel(sp.csr_matrix(Y), n_genes=g), want)
    np.testing.assert_array_equal(hest_gene_panel(sp.csc_matrix(Y), n_genes=g), want)
    assert not set(want) & set(range(0, g, 7))  # detected in 5 % of the spots only


def test_block_rule_checks_its_input():
    def blocks(cols):
        yield np.array([[1.0, -1.0], [2.0, 0.0]])

    with pytest.raises(ValueError, match="the counts of S must be non-negative"):
        panel_from_blocks(blocks, 2, 2, what="the counts of S")
    with pytest.raises(ValueError, match="no gene is detected in >= 10% of the 3 spots in S"):
        panel_from_blocks(lambda cols: iter([np.zeros((3, 2))]), 3, 2, what="S")
    with pytest.raises(ValueError, match="n_genes"):
        panel_from_blocks(lambda cols: iter([np.ones((3, 2))]), 3, 2, n_genes=0)
