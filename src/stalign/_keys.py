"""Every AnnData key stalign reads or writes, in one place (squidpy-style).

Keys owned by others (read, never overwritten once present):
``obsm['spatial']``, ``uns['spatial'][library_id]``, ``layers['counts']``.
"""

from __future__ import annotations

# --- owned by the readers / others -------------------------------------------------
SPATIAL = "spatial"  # obsm: (n, 2) float, level-0 image pixels (x, y); uns: squidpy layout
COUNTS_LAYER = "counts"  # layers: raw integer counts (sparse CSR)
GENE_IDS = "gene_ids"  # var: Ensembl (or platform) gene ids
GENE_SYMBOLS = "gene_symbols"  # var: gene symbols (var_names are the symbols, made unique)
FEATURE_TYPES = "feature_types"  # var: e.g. "Gene Expression"

# uns['spatial'][library_id][...] (squidpy / scanpy layout)
SCALEFACTORS = "scalefactors"
IMAGES = "images"
METADATA = "metadata"
SF_HIRES = "tissue_hires_scalef"
SF_LOWRES = "tissue_lowres_scalef"
SF_SPOT_DIAMETER = "spot_diameter_fullres"  # spot diameter in level-0 px

# --- written by stalign.io ---------------------------------------------------------
STALIGN = "stalign"  # uns: dict, see below
# uns['stalign'] fields
LIBRARY_ID = "library_id"  # str: key into uns['spatial']
PLATFORM = "platform"  # str: visium | visium_hd | xenium | legacy_st | hest | h5ad
IMAGE_PATH = "image_path"  # str | None: level-0 H&E image on disk (absolute path)
MPP = "mpp"  # float: µm per level-0 pixel of the image that obsm['spatial'] refers to
MPP_SOURCE = "mpp_source"  # str: how MPP was obtained (user, scalefactors, spot_pitch, ...)
SPOT_DIAMETER_UM = "spot_diameter_um"  # float: physical spot/bin/cell diameter (µm)
X_IS_COUNTS = "x_is_counts"  # bool (generic .h5ad only): False when X is not raw counts
IN_TISSUE = "in_tissue"  # obs: bool, the platform's own under-tissue call
ARRAY_ROW = "array_row"  # obs: int
ARRAY_COL = "array_col"  # obs: int

# --- written by stalign.im ---------------------------------------------------------
PATCH_IN_IMAGE = "patch_in_image"  # obs: bool, whole patch lies inside the image
TISSUE_FRACTION = "tissue_fraction"  # obs: float in [0, 1], tissue pixels in the patch
PATCH_IN_TISSUE = "patch_in_tissue"  # obs: bool, tissue_fraction >= threshold and in image
PATCHES = "patches"  # uns: dict with the patch parameters (mpp, size_px, threshold)

# --- written by stalign.tl ---------------------------------------------------------
PATHWAY_SCORES = "pathway_scores"  # obsm: DataFrame spots × pathways; uns: params/coverage
EMBEDDING_PREFIX = "X_"  # obsm: f"X_{encoder_name}" (n, dim) float32
# uns['pathway_scores'] fields (besides 'params', 'coverage', 'genes')
PATHWAY_DEPTH = "depth"  # dict of columns: per pathway r / R² of the score on log depth
PATHWAY_RAREFACTION = "rarefaction"  # dict: depth, draws, spots below, agreement of draws

# --- written by stalign.pairs (samples/<id>/pairs.h5ad of a pairs store) ----------
SAMPLE_ID = "sample_id"  # obs: category, the manifest's sample_id
PATIENT_ID = "patient_id"  # obs: category, the manifest's patient_id (splits never cut it)
TOTAL_COUNTS = "total_counts"  # obs: float, raw counts of the spot (all genes)
N_GENES_BY_COUNTS = "n_genes_by_counts"  # obs: int, genes with counts > 0
PAIRS_INFO = "stalign_pairs"  # uns: JSON string with the sample row and build parameters


def embedding_key(encoder_name: str) -> str:
    """Return the ``obsm`` key for embeddings of ``encoder_name`` (``X_<name>``)."""
    return f"{EMBEDDING_PREFIX}{encoder_name}"
