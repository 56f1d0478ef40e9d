"""H&E image access: the lazy `SlideImage`, spot → patch extraction, tissue QC.

Also `to_spatialdata`: the SpatialData writer `stalign.io.to_spatialdata` with the H&E
opened for you through `open_image` (the reader is `stalign.io.read_spatialdata`).

Coordinates are level-0 image pixels ``(x, y)``; resolutions are µm/px.
"""

from ._hest import (
    HEST_PATCH_MPP,
    HestPatches,
    HestPatchGeometry,
    HestPatchReader,
    check_hest_coords,
    hest_patch_geometry,
    read_hest_patches,
    write_hest_patches,
)
from ._hest_tissue import read_hest_tissue
from ._patches import PatchBatch, extract_patches, iter_patches
from ._slide import SlideImage, from_array, open_image
from ._spatialdata import to_spatialdata
from ._tissue import (
    TissueMask,
    saturation,
    tissue_fraction,
    tissue_mask,
    tissue_mask_settings,
    tissue_threshold,
)

__all__ = [
    "HEST_PATCH_MPP",
    "HestPatchGeometry",
    "HestPatchReader",
    "HestPatches",
    "PatchBatch",
    "SlideImage",
    "TissueMask",
    "check_hest_coords",
    "extract_patches",
    "from_array",
    "hest_patch_geometry",
    "iter_patches",
    "open_image",
    "read_hest_patches",
    "read_hest_tissue",
    "saturation",
    "tissue_fraction",
    "tissue_mask",
    "tissue_mask_settings",
    "tissue_threshold",
    "to_spatialdata",
    "write_hest_patches",
]
