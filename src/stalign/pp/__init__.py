"""Preprocessing: gene-identifier harmonisation and normalisation (delegates to scanpy)."""

from ._genes import (
    GeneSetMatch,
    gene_keys,
    looks_like_ensembl,
    match_gene_sets,
    normalize_gene_keys,
)
from ._normalize import lognorm_matrix, normalize_log1p

__all__ = [
    "GeneSetMatch",
    "gene_keys",
    "lognorm_matrix",
    "looks_like_ensembl",
    "match_gene_sets",
    "normalize_gene_keys",
    "normalize_log1p",
]
