"""Readers: every platform to one AnnData layout (see docs/architecture.md).

Each reader returns raw integer counts in ``.X`` and ``.layers['counts']``,
``var['gene_ids']``/``var['gene_symbols']``, ``obsm['spatial']`` in level-0 pixels of
the H&E image, ``uns['spatial'][library_id]`` (squidpy layout) and ``uns['stalign']``
(``mpp``, ``mpp_source``, ``image_path``, ``platform``, ``spot_diameter_um``).
"""

from __future__ import annotations

from ._image import ImageInfo, image_info
from ._legacy_st import estimate_mpp_from_grid, find_legacy_st_files, read_legacy_st
from ._mpp import MppMismatchWarning, reconcile_mpp
from ._visium import read_visium, read_visium_hd

__all__ = [
    "ImageInfo",
    "MppMismatchWarning",
    "estimate_mpp_from_grid",
    "find_legacy_st_files",
    "image_info",
    "read_legacy_st",
    "read_visium",
    "read_visium_hd",
    "reconcile_mpp",
]
