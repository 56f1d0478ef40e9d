"""Tools: pathway scoring and embeddings (scanpy-style ``f(adata, ..., key_added=...)``)."""

from ._embed import embed, encoder_digest, iter_embeddings, resolve_encoder
from ._pathways import score_pathways

__all__ = ["embed", "encoder_digest", "iter_embeddings", "resolve_encoder", "score_pathways"]
