"""Image headers and small thumbnails for the readers (no full-resolution decoding).

The lazy, full-featured image belongs to :mod:`stalign.im`; :mod:`stalign.io` must not
import it (``im`` imports ``io``). Here we only read headers (PIL / tifffile) to get
the level-0 size and TIFF resolution tags, detect truncated or non-image files, and
build the small ``hires``/``lowres`` thumbnails stored in ``uns['spatial']``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".svs", ".ome.tif", ".ome.tiff")

#: Max side (px) of the thumbnails kept in ``uns['spatial'][lib]['images']``, as Space Ranger.
HIRES_MAX_PX = 2000
LOWRES_MAX_PX = 600


@dataclass(frozen=True)
class ImageInfo:
    """Header information of a level-0 image.

    Attributes
    ----------
    path
        The image file.
    width, height
        Level-0 size, px.
    mpp
        µm per px from the file's resolution metadata, or ``None`` when absent.
    """

    path: Path
    width: int
    height: int
    mpp: float | None = None


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    return magic[:2] in (b"II", b"MM") and magic[2:4] in (b"*\x00", b"\x00*", b"+\x00", b"\x00+")


def _tiff_info(path: Path) -> ImageInfo:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            page = series.levels[0].keyframe if series.levels else tif.pages[0]
            shape = page.shape
            axes = page.axes
            width = int(shape[axes.index("X")])
            height = int(shape[axes.index("Y")])
            size = os.path.getsize(path)
            # truncated file: a tile/strip points past the end of the file
            for level in series.levels or [series]:
                for p in level.pages:
                    if p is None:
                        continue
                    offs = np.asarray(p.dataoffsets, dtype=np.int64)
                    counts = np.asarray(p.databytecounts, dtype=np.int64)
                    if offs.size and int((offs + counts).max()) > size:
                        msg = (
                            f"{path}: TIFF is truncated: expected image data up to byte "
                            f"{int((offs + counts).max())}, found a {size}-byte file"
                        )
                        raise ValueError(msg)
            mpp = _tiff_mpp(tif, page)
    except ValueError:
        raise
    except Exception as e:  # tifffile raises TiffFileError, struct errors, ...
        msg = f"{path}: cannot read the TIFF header ({type(e).__name__}: {e})"
        raise ValueError(msg) from e
    return ImageInfo(path=path, width=width, height=height, mpp=mpp)


def _tiff_mpp(tif, page) -> float | None:
    """µm/px from OME physical size, Aperio ``MPP=``, or the resolution tags (cm/inch)."""
    import re

    if tif.is_ome and tif.ome_metadata:
        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
        if m and (unit is None or unit.group(1) in ("µm", "um", "\u00b5m")):
            return float(m.group(1))
    desc = page.description or ""
    m = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
    if m:
        return float(m.group(1))
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        if num and den and unit in (2, 3):
            px_per_unit = num / den
            um_per_unit = 25400.0 if unit == 2 else 10000.0
            # 72/96 dpi with inch units is a default of image software, not a scan resolution
            if unit == 2 and px_per_unit in (72.0, 96.0, 300.0):
                return None
            return um_per_unit / px_per_unit
    return None


def image_info(path: str | os.PathLike) -> ImageInfo:
    """Return the level-0 size (and resolution µm/px if recorded) from the file header.

    Parameters
    ----------
    path
        TIFF / OME-TIFF / JPEG / PNG file.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When the file is not a readable image or is truncated.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"image not found: expected an image file at '{path}'"
        raise FileNotFoundError(msg)
    if path.stat().st_size == 0:
        msg = f"{path}: expected an image file, found an empty file"
        raise ValueError(msg)
    if _is_tiff(path):
        return _tiff_info(path)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            width, height = im.size
    except UnidentifiedImageError as e:
        msg = f"{path}: expected an image (TIFF, JPEG or PNG), found a file PIL cannot identify"
        raise ValueError(msg) from e
    return ImageInfo(path=path, width=int(width), height=int(height), mpp=None)


def load_thumbnail(path: str | os.PathLike, max_side: int) -> tuple[np.ndarray, float]:
    """Decode a down-scaled RGB copy of the image with its longest side ``<= max_side`` px.

    For pyramidal TIFFs the smallest pyramid level that is still large enough is read;
    other files are decoded once (use only for images that fit in memory).

    Returns
    -------
    ``(image, scale)``: uint8 ``(h, w, 3)`` and the factor from level-0 px to image px.

    Raises
    ------
    ValueError
        When the image data is truncated or cannot be decoded.
    """
    from PIL import Image

    path = Path(path)
    info = image_info(path)
    scale = min(1.0, max_side / max(info.width, info.height))
    try:
        if _is_tiff(path):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                levels = tif.series[0].levels or [tif.series[0]]
                chosen = levels[0]
                for lvl in levels:
                    ax = lvl.axes
                    lw = lvl.shape[ax.index("X")]
                    if lw >= info.width * scale:
                        chosen = lvl
                arr = chosen.asarray()
                if chosen.axes.startswith("C") or chosen.axes.startswith("S"):
                    arr = np.moveaxis(arr, 0, -1)
            im = Image.fromarray(_to_rgb_uint8(arr, path))
        else:
            with Image.open(path) as src:
                src.draft("RGB", (int(info.width * scale) + 1, int(info.height * scale) + 1))
                im = src.convert("RGB")
                im.load()
    except ValueError:
        raise
    except (OSError, SyntaxError) as e:
        msg = f"{path}: cannot decode the image data ({e}); is the file truncated?"
        raise ValueError(msg) from e
    size = (max(1, round(info.width * scale)), max(1, round(info.height * scale)))
    if im.size != size:
        im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(im, dtype=np.uint8), scale


def _to_rgb_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        msg = f"{path}: expected an RGB image (H, W, 3), found array shape {arr.shape}"
        raise ValueError(msg)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        hi = float(arr.max()) or 1.0
        arr = np.clip(arr.astype(np.float32) * (255.0 / hi), 0, 255).astype(np.uint8)
    return arr


def thumbnails(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Return squidpy-style ``images`` (hires ≤2000 px, lowres ≤600 px) and their scale factors."""
    hires, sf_h = load_thumbnail(path, HIRES_MAX_PX)
    from PIL import Image

    low_scale = min(1.0, LOWRES_MAX_PX / max(hires.shape[:2]))
    if low_scale < 1.0:
        size = (
            max(1, round(hires.shape[1] * low_scale)),
            max(1, round(hires.shape[0] * low_scale)),
        )
        lowres = np.asarray(Image.fromarray(hires).resize(size, Image.Resampling.LANCZOS))
    else:
        lowres = hires
    sf_l = sf_h * lowres.shape[1] / hires.shape[1]
    images = {"hires": hires, "lowres": lowres}
    scalefactors = {"tissue_hires_scalef": sf_h, "tissue_lowres_scalef": sf_l}
    return images, scalefactors
