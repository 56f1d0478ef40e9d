"""Pathway scoring (owned by the pathway capability)."""


def score_pathways(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("stalign.tl.score_pathways is not implemented yet")
