"""Preprocessing: gene-identifier harmonisation and normalisation (delegates to scanpy)."""

from ._depth import DepthRegression, log_depth, regress_out_depth
from ._genes import (
    GeneSetMatch,
    gene_keys,
    looks_like_ensembl,
    match_gene_sets,
    normalize_gene_keys,
)
from ._normalize import lognorm_matrix, normalize_log1p

__all__ = [
    "DepthRegression",
    "GeneSetMatch",
    "gene_keys",
    "log_depth",
    "lognorm_matrix",
    "looks_like_ensembl",
    "match_gene_sets",
    "normalize_gene_keys",
    "normalize_log1p",
    "regress_out_depth",
]
