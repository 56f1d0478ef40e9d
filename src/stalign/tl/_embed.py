"""Batch embeddings of H&E patches (owned by the models capability)."""


def embed(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("stalign.tl.embed is not implemented yet")
