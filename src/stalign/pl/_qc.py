"""QC figures of a pairs build; their home is `stalign.pairs` (its report draws them)."""

from ..pairs._qc_plots import (
    qc_counts_histogram,
    qc_pathway_depth,
    qc_spots,
    qc_tissue_histogram,
)

__all__ = ["qc_counts_histogram", "qc_pathway_depth", "qc_spots", "qc_tissue_histogram"]
