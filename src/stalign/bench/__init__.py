"""Evaluation: gene / pathway prediction (HEST protocol), retrieval, MIL marker prediction.

Core functions take plain arrays, so any embedding can be scored the same way::

    res = st.bench.gene_prediction(X, counts, patient_ids, samples=sample_ids)
    print(res.mean, res.std)
"""

from ._genes import hest_gene_panel
from ._probe import ProbeResult, gene_prediction, pathway_prediction, pearson_columns
from ._retrieval import RetrievalResult, retrieval

__all__ = [
    "ProbeResult",
    "RetrievalResult",
    "gene_prediction",
    "hest_gene_panel",
    "pathway_prediction",
    "pearson_columns",
    "retrieval",
]
