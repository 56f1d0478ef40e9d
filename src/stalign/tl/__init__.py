"""Tools: pathway scoring and embeddings (scanpy-style ``f(adata, ..., key_added=...)``)."""

from ._embed import (
    embed,
    embed_dataset,
    embed_patches,
    embedding_precision,
    encoder_digest,
    iter_embeddings,
    resolve_encoder,
    write_embeddings,
)
from ._pathway_depth import pathway_depth_diagnostics
from ._pathways import score_pathways

__all__ = [
    "embed",
    "embed_dataset",
    "embed_patches",
    "embedding_precision",
    "encoder_digest",
    "iter_embeddings",
    "pathway_depth_diagnostics",
    "resolve_encoder",
    "score_pathways",
    "write_embeddings",
]
