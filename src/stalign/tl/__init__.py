"""Tools: pathway scoring and embeddings (scanpy-style ``f(adata, ..., key_added=...)``).

Also the constants and helpers other subpackages share with pathway scoring
(``PATHWAY_METHODS``, the bundled gene sets, the depth diagnostics' tables), so that no
one imports a private module of ``tl``.
"""

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
from ._genesets import BUNDLED_GENE_SETS, bundled_gmt_path, gene_set_source, read_gmt
from ._pathway_depth import (
    DEPTH_WARN_ABS_R,
    depth_summary,
    depth_table,
    depth_table_from_record,
    depth_table_to_record,
    pathway_depth_diagnostics,
    warn_if_depth_driven,
)
from ._pathways import PATHWAY_METHODS, score_pathways
from ._scoring import SSGSEA_TIES

__all__ = [
    "BUNDLED_GENE_SETS",
    "DEPTH_WARN_ABS_R",
    "PATHWAY_METHODS",
    "SSGSEA_TIES",
    "bundled_gmt_path",
    "depth_summary",
    "depth_table",
    "depth_table_from_record",
    "depth_table_to_record",
    "embed",
    "embed_dataset",
    "embed_patches",
    "embedding_precision",
    "encoder_digest",
    "gene_set_source",
    "iter_embeddings",
    "pathway_depth_diagnostics",
    "read_gmt",
    "resolve_encoder",
    "score_pathways",
    "warn_if_depth_driven",
    "write_embeddings",
]
