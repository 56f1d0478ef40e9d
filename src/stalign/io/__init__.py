"""Readers: every platform to one AnnData layout (see docs/architecture.md).

Each reader returns raw integer counts in ``.X`` and ``.layers['counts']``,
``var['gene_ids']``/``var['gene_symbols']``, ``obsm['spatial']`` in level-0 pixels of
the H&E image, ``uns['spatial'][library_id]`` (squidpy layout) and ``uns['stalign']``
(``mpp``, ``mpp_source``, ``image_path``, ``platform``, ``spot_diameter_um``).

``read(path)`` detects the platform from the layout; the platform readers are
``read_visium``, ``read_visium_hd``, ``read_xenium``, ``read_legacy_st``, ``read_hest``,
``read_h5ad`` and ``read_spatialdata`` (a SpatialData object or ``.zarr`` store).
``hest_manifest`` makes a sample manifest from a HEST-1k folder.

``to_spatialdata`` writes SpatialData (or stalign's results into an existing store).
``io`` sits below ``im`` and never imports it, so the writer takes the H&E as an opened
image (``image=stalign.im.open_image(adata)``);
[`stalign.im.to_spatialdata`][stalign.im.to_spatialdata] opens it for you.

The image-file helpers (``open_pil``, ``tiff_mpp``, ``to_rgb_uint8`` ...) are public so
that ``im``'s lazy slide decodes files by the same rules as the readers.
"""

from __future__ import annotations

from ._h5ad import find_hest_files, read_h5ad, read_hest
from ._hest_folder import hest_manifest, read_hest_metadata
from ._image import (
    MAX_IMAGE_PIXELS,
    ImageInfo,
    ImageTooLargeError,
    check_decode_memory,
    image_info,
    is_tiff,
    max_image_pixels,
    open_pil,
    pil_to_rgb_uint8,
    tiff_mpp,
    to_rgb_uint8,
)
from ._legacy_st import estimate_mpp_from_grid, find_legacy_st_files, read_legacy_st
from ._mpp import MppMismatchWarning, reconcile_mpp
from ._read import PLATFORMS, detect_platform, read
from ._spatialdata import read_spatialdata
from ._spatialdata_writer import to_spatialdata
from ._visium import read_visium, read_visium_hd
from ._xenium import read_alignment_matrix, read_xenium

__all__ = [
    "MAX_IMAGE_PIXELS",
    "PLATFORMS",
    "ImageInfo",
    "ImageTooLargeError",
    "MppMismatchWarning",
    "check_decode_memory",
    "detect_platform",
    "estimate_mpp_from_grid",
    "find_hest_files",
    "find_legacy_st_files",
    "hest_manifest",
    "image_info",
    "is_tiff",
    "max_image_pixels",
    "open_pil",
    "pil_to_rgb_uint8",
    "read",
    "read_alignment_matrix",
    "read_h5ad",
    "read_hest",
    "read_hest_metadata",
    "read_legacy_st",
    "read_spatialdata",
    "read_visium",
    "read_visium_hd",
    "read_xenium",
    "reconcile_mpp",
    "tiff_mpp",
    "to_rgb_uint8",
    "to_spatialdata",
]
