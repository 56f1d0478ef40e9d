"""H&E image access: the lazy :class:`SlideImage`, spot → patch extraction, tissue QC.

Coordinates are level-0 image pixels ``(x, y)``; resolutions are µm/px.
"""

from ._hest import HestPatches, read_hest_patches, write_hest_patches
from ._patches import PatchBatch, extract_patches, iter_patches
from ._slide import SlideImage, from_array, open_image
from ._tissue import TissueMask, saturation, tissue_fraction, tissue_mask, tissue_threshold

__all__ = [
    "HestPatches",
    "PatchBatch",
    "SlideImage",
    "TissueMask",
    "extract_patches",
    "from_array",
    "iter_patches",
    "open_image",
    "read_hest_patches",
    "saturation",
    "tissue_fraction",
    "tissue_mask",
    "tissue_threshold",
    "write_hest_patches",
]
