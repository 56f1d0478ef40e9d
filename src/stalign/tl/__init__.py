"""Tools: pathway scoring and embeddings (scanpy-style ``f(adata, ..., key_added=...)``)."""

from ._embed import embed
from ._pathways import score_pathways

__all__ = ["embed", "score_pathways"]
