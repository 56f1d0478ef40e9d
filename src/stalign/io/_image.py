"""Image files for the readers and `stalign.im`: headers, limits, thumbnails, metadata.

This module is the one home of what every image read shares:

* `open_pil` — open a plain image (JPEG, PNG, ...) with **stalign's own pixel
  limit** (`MAX_IMAGE_PIXELS`, environment variable ``STALIGN_MAX_IMAGE_PIXELS``,
  or ``max_pixels=``) instead of PIL's process-wide ``Image.MAX_IMAGE_PIXELS``, which is
  never changed: ordinary whole-slide images read without ``DecompressionBombWarning``,
  a file declaring more pixels than the limit is refused from its header with
  `ImageTooLargeError`, and PIL opens elsewhere in the process stay guarded;
* `tiff_mpp` — µm/px from OME-XML, an Aperio ``MPP=`` description or the TIFF
  resolution tags (one rule for the readers and [`stalign.im.open_image`][stalign.im.open_image]);
* `to_rgb_uint8` — one RGB conversion (gray repeated, alpha dropped, wider
  integer types scaled by their type's maximum, floats expected in ``[0, 1]``).

The lazy, full-featured image belongs to `stalign.im`; `stalign.io` must not
import it (``im`` imports ``io``). The readers here only read headers (PIL / tifffile)
to get the level-0 size and resolution, detect truncated or non-image files, and build
the small ``hires``/``lowres`` thumbnails stored in ``uns['spatial']``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._mpp import MPP_PLAUSIBLE_RANGE

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

logger = logging.getLogger(__name__)

#: Largest image, in pixels (width × height), that stalign decodes whole: plain JPEG /
#: PNG images (read into memory: 1 Gpx is ~3 GB of RGB, e.g. 31,600 × 31,600 px) and a
#: single TIFF tile or strip. Larger plain images are refused with
#: `ImageTooLargeError`; convert them to a tiled pyramidal TIFF, which is read
#: lazily tile by tile. Override with ``STALIGN_MAX_IMAGE_PIXELS`` or ``max_pixels=``.
MAX_IMAGE_PIXELS = 1_000_000_000
#: Environment variable that overrides `MAX_IMAGE_PIXELS` (a positive integer).
MAX_IMAGE_PIXELS_ENV = "STALIGN_MAX_IMAGE_PIXELS"
#: Largest memory, in bytes, a whole decode of a plain (untiled) image may take: a plain
#: JPEG or PNG cannot be read by region, so it is decoded whole, and the estimate
#: (`decode_bytes`: the pixels in the file's own mode plus two RGB copies) is checked
#: from the header before anything is decoded; above it `ImageTooLargeError` asks for a
#: tiled pyramidal TIFF (read lazily, tile by tile). 4 GiB holds an RGB image of about
#: 475 Mpx (21,800 × 21,800 px); a 92 Mpx whole-slide JPEG needs 0.8 GiB. Override with
#: ``STALIGN_MAX_DECODE_BYTES``.
MAX_DECODE_BYTES = 4 * 1024**3
#: Environment variable that overrides `MAX_DECODE_BYTES` (a positive integer).
MAX_DECODE_BYTES_ENV = "STALIGN_MAX_DECODE_BYTES"
#: bytes per pixel of PIL's modes (others: 4)
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "RGB": 3, "YCbCr": 3, "LAB": 3}
_MODE_BYTES |= {"HSV": 3, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}

#: Max side (px) of the thumbnails kept in ``uns['spatial'][lib]['images']``, as Space Ranger.
HIRES_MAX_PX = 2000
LOWRES_MAX_PX = 600

_OME_UNITS_UM = {"nm": 1e-3, "µm": 1.0, "\u03bcm": 1.0, "um": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}


class ImageTooLargeError(ValueError):
    """An image declares more pixels than stalign's limit (`MAX_IMAGE_PIXELS`)."""


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
    mpp_source
        Where ``mpp`` came from (``'ome'``, ``'aperio'``, ``'tiff_resolution'``) or ``None``.
    """

    path: Path
    width: int
    height: int
    mpp: float | None = None
    mpp_source: str | None = None


def max_image_pixels(max_pixels: int | None = None) -> int:
    """Return the pixel limit in force: ``max_pixels``, else the environment, else the default.

    Parameters
    ----------
    max_pixels
        Explicit limit (px); ``None`` reads ``STALIGN_MAX_IMAGE_PIXELS`` (``1_000_000``,
        ``4e9`` are accepted) and falls back to [`MAX_IMAGE_PIXELS`][stalign.io.MAX_IMAGE_PIXELS].

    Raises
    ------
    ValueError
        When the value is not a positive whole number.
    """
    if max_pixels is None:
        return _limit_from_env(MAX_IMAGE_PIXELS_ENV, MAX_IMAGE_PIXELS, "pixels")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int | np.integer):
        msg = f"max_pixels must be a positive integer (px), got {max_pixels!r}"
        raise ValueError(msg)
    if max_pixels < 1:
        msg = f"max_pixels must be a positive integer (px), got {max_pixels!r}"
        raise ValueError(msg)
    return int(max_pixels)


def _limit_from_env(name: str, default: int, unit: str) -> int:
    """Return the positive whole number in the environment variable ``name``, else ``default``.

    ``1_000_000`` and ``4e9`` are accepted.

    Raises
    ------
    ValueError
        When the value is not a positive whole number (the message names the variable).
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 1 and value == int(value)):
        msg = f"{name}={text!r}: expected a positive whole number of {unit}, default {default:_}"
        raise ValueError(msg)
    return int(value)


def decode_bytes(img: PILImage.Image) -> int:
    """Estimate the peak memory (bytes) of decoding ``img`` whole into an RGB array.

    The pixels in the file's own mode (e.g. 2 bytes for 16-bit grayscale), plus the
    RGB image and the array copied from it (3 bytes a pixel each).
    """
    n = int(img.width) * int(img.height)
    return n * _MODE_BYTES.get(img.mode, 4) + 2 * 3 * n


def check_decode_memory(path: Path, img: PILImage.Image) -> None:
    """Refuse to decode ``img`` whole when `decode_bytes` exceeds the memory limit.

    Called on an opened, not yet decoded image (its header only), so a small file
    declaring a huge image is refused at once instead of filling the memory.

    Raises
    ------
    ImageTooLargeError
        Above `MAX_DECODE_BYTES` (or ``STALIGN_MAX_DECODE_BYTES``); names the file.
    """
    limit = _limit_from_env(MAX_DECODE_BYTES_ENV, MAX_DECODE_BYTES, "bytes")
    need = decode_bytes(img)
    if need > limit:
        msg = (
            f"{path}: decoding this {img.width}×{img.height} px {img.mode} image whole needs "
            f"about {need / 2**30:.1f} GiB of memory, above stalign's limit of "
            f"{limit / 2**30:.1f} GiB (a plain JPEG/PNG cannot be read by region); convert "
            f"it to a tiled pyramidal TIFF, read lazily tile by tile, or raise the limit with "
            f"{MAX_DECODE_BYTES_ENV}=<bytes>"
        )
        raise ImageTooLargeError(msg)


def pil_to_rgb_uint8(img: PILImage.Image, *, source: str = "image") -> np.ndarray:
    """Decode ``img`` into an ``(h, w, 3)`` uint8 array, scaling wider pixel types.

    PIL's own ``convert("RGB")`` clips 16-bit grayscale (``I;16``) at 255, which turns
    an image white; such modes go through `to_rgb_uint8` instead (scaled by their
    type's maximum: 16-bit ``v`` becomes ``round(v * 255 / 65535)``). A PNG's 16-bit
    grayscale read as 32-bit ``I`` is scaled as 16-bit.
    """
    if img.mode == "RGB":
        return np.asarray(img)
    if img.mode.startswith("I;16") or img.mode == "F":
        return to_rgb_uint8(np.asarray(img), source=source)
    if img.mode == "I":
        arr = np.asarray(img)
        if img.format == "PNG":  # PNG samples have at most 16 bits
            arr = arr.astype(np.uint16)
        return to_rgb_uint8(arr, source=source)
    return np.asarray(img.convert("RGB"))


def check_image_pixels(
    path: Path, width: int, height: int, *, max_pixels: int | None = None, what: str = "image"
) -> None:
    """Raise `ImageTooLargeError` when ``width × height`` exceeds the limit.

    Parameters
    ----------
    path
        File named in the message.
    width, height
        Size of what would be decoded whole, px.
    max_pixels
        Limit (px); see [`max_image_pixels`][stalign.io.max_image_pixels].
    what
        What is decoded (``"image"``, ``"TIFF strip"``), used in the message.
    """
    limit = max_image_pixels(max_pixels)
    if int(width) * int(height) > limit:
        msg = (
            f"{path}: the {what} is {width}×{height} px ({int(width) * int(height):,} px), "
            f"above stalign's limit of {limit:,} px for an image decoded whole; if the file "
            f"is genuine, convert it to a tiled pyramidal TIFF or raise the limit with "
            f"{MAX_IMAGE_PIXELS_ENV}=<pixels> (or max_pixels=)"
        )
        raise ImageTooLargeError(msg)


def _identify_pil(path: Path) -> PILImage.Image:
    """Open ``path`` the way ``PIL.Image.open`` does, minus PIL's process-wide size check.

    Each registered format's ``accept`` test and factory are tried in PIL's own order;
    the factory reads the header only (nothing is decoded).
    """
    from PIL import Image

    with open(path, "rb") as fh:
        prefix = fh.read(16)
    for loader in (Image.preinit, Image.init):
        loader()
        for fmt in list(Image.ID):
            factory, accept = Image.OPEN[fmt]
            if accept is not None:
                ok = accept(prefix)
                if not ok or isinstance(ok, str):
                    continue
            try:
                return factory(os.fspath(path), None)
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue
    msg = f"{path}: expected an image (TIFF, JPEG or PNG), found a file PIL cannot identify"
    raise ValueError(msg)


def open_pil(path: str | os.PathLike, *, max_pixels: int | None = None) -> PILImage.Image:
    """Open a plain image with PIL under stalign's pixel limit (header only, lazy decode).

    PIL's global ``Image.MAX_IMAGE_PIXELS`` is neither used nor changed: an ordinary
    whole-slide JPEG (e.g. 92 Mpx) opens without ``DecompressionBombWarning`` while PIL
    opens elsewhere in the process keep their guard.

    Parameters
    ----------
    path
        JPEG, PNG or any other format PIL reads.
    max_pixels
        Limit (px); default ``STALIGN_MAX_IMAGE_PIXELS`` or `MAX_IMAGE_PIXELS`.

    Returns
    -------
    PILImage.Image
        The opened ``PIL.Image.Image`` (use it as a context manager to close the file).

    Raises
    ------
    ImageTooLargeError
        When the header declares more than the limit (nothing is decoded).
    ValueError
        When PIL cannot identify the file.
    """
    path = Path(path)
    img = _identify_pil(path)
    try:
        check_image_pixels(path, img.width, img.height, max_pixels=max_pixels)
    except ValueError:
        img.close()
        raise
    return img


def is_tiff(path: str | os.PathLike) -> bool:
    """Whether the file starts with a TIFF / BigTIFF header (whatever its suffix says)."""
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
            _check_tiff_complete(path, series)
            mpp, mpp_source = tiff_mpp(tif, page)
    except ValueError:
        raise
    except Exception as e:  # tifffile raises TiffFileError, struct errors, ...
        msg = f"{path}: cannot read the TIFF header ({type(e).__name__}: {e})"
        raise ValueError(msg) from e
    return ImageInfo(path=path, width=width, height=height, mpp=mpp, mpp_source=mpp_source)


def _check_tiff_complete(path: Path, series: Any) -> None:
    """Raise when a tile/strip points past the end of the file (truncated TIFF)."""
    size = os.path.getsize(path)
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


def _mpp_from_ome(ome_xml: str) -> float | None:
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("Pixels") and "PhysicalSizeX" in el.attrib:
            unit = el.attrib.get("PhysicalSizeXUnit", "µm")
            factor = _OME_UNITS_UM.get(unit)
            if factor is None:
                logger.warning("OME PhysicalSizeXUnit %r not understood; ignoring it", unit)
                return None
            return float(el.attrib["PhysicalSizeX"]) * factor
    return None


def tiff_mpp(tif: Any, page: Any) -> tuple[float | None, str | None]:
    """Return ``(µm/px, source)`` of a TIFF page from its metadata, or ``(None, None)``.

    Sources, in order: OME-XML ``PhysicalSizeX`` (with its unit) → ``'ome'``; an Aperio
    ``MPP = …`` image description → ``'aperio'``; the ``XResolution`` tag in px per
    inch or cm → ``'tiff_resolution'``, ignored when outside the plausible histology
    range `MPP_PLAUSIBLE_RANGE` (72/96/300 dpi defaults of image
    software give 85–350 µm/px).

    Parameters
    ----------
    tif
        An open ``tifffile.TiffFile``.
    page
        Its level-0 page (keyframe).
    """
    if tif.is_ome and tif.ome_metadata:
        mpp = _mpp_from_ome(tif.ome_metadata)
        if mpp is not None and mpp > 0 and math.isfinite(mpp):
            return mpp, "ome"
    desc = page.description or ""
    m = re.search(r"\bMPP\s*=\s*([0-9.eE+-]+)", desc)
    if m:
        try:
            mpp = float(m.group(1))
        except ValueError:
            mpp = 0.0
        if mpp > 0 and math.isfinite(mpp):  # "MPP = 0" / "nan": no information
            return mpp, "aperio"
    unit = int(page.resolutionunit)
    per_unit_um = {2: 25400.0, 3: 10000.0}.get(unit)
    xres = page.resolution[0] if page.resolution else 0
    if per_unit_um and xres:
        mpp = per_unit_um / float(xres)
        lo, hi = MPP_PLAUSIBLE_RANGE
        if lo <= mpp <= hi:
            return mpp, "tiff_resolution"
        logger.info("ignoring TIFF resolution %.4g µm/px (implausible for histology)", mpp)
    return None, None


def to_rgb_uint8(arr: np.ndarray, *, source: str = "image") -> np.ndarray:
    """Return ``arr`` as an ``(h, w, 3)`` uint8 array (gray is repeated, alpha dropped).

    The scaling depends on the pixel type only, never on the values, so every window
    of an image converts the same way.

    Parameters
    ----------
    arr
        ``(h, w)``, ``(h, w, 1)``, ``(h, w, 3)`` or ``(h, w, 4)`` array. Integer types
        wider than 8 bit are scaled by their type's maximum; floats are expected in
        ``[0, 1]``; bool is 0/255.
    source
        Name used in error messages.
    """
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        msg = (
            f"{source}: expected an image of shape (height, width[, 1|3|4]), "
            f"found shape {arr.shape}"
        )
        raise ValueError(msg)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        scale = 255.0 / np.iinfo(arr.dtype).max
        return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    msg = f"{source}: unsupported pixel type {arr.dtype}; expected uint8/uint16/float"
    raise ValueError(msg)


def image_info(path: str | os.PathLike, *, max_pixels: int | None = None) -> ImageInfo:
    """Return the level-0 size (and resolution µm/px if recorded) from the file header.

    Parameters
    ----------
    path
        TIFF / OME-TIFF / JPEG / PNG file.
    max_pixels
        Pixel limit for plain (non-TIFF) images, which stalign decodes whole; default
        ``STALIGN_MAX_IMAGE_PIXELS`` or `MAX_IMAGE_PIXELS`. TIFFs are read lazily
        and have no overall limit.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ImageTooLargeError
        When a plain image declares more pixels than the limit.
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
    if is_tiff(path):
        return _tiff_info(path)
    with open_pil(path, max_pixels=max_pixels) as im:
        width, height = im.size
    return ImageInfo(path=path, width=int(width), height=int(height), mpp=None)


def load_thumbnail(
    path: str | os.PathLike, max_side: int, *, max_pixels: int | None = None
) -> tuple[np.ndarray, float]:
    """Decode a down-scaled RGB copy of the image with its longest side ``<= max_side`` px.

    For pyramidal TIFFs the smallest pyramid level that is still large enough is read;
    a TIFF level above the pixel limit is read in row strips, each reduced before the
    next is read (bounded memory). JPEGs are decoded at a reduced scale where the codec
    allows it; other plain images are decoded once.

    Parameters
    ----------
    path
        The image.
    max_side
        Longest side of the result, px.
    max_pixels
        Pixel limit (see [`image_info`][stalign.io.image_info]).

    Returns
    -------
    tuple[np.ndarray, float]
        ``(image, scale)``: uint8 ``(h, w, 3)`` and the factor from level-0 px to image px.

    Raises
    ------
    ImageTooLargeError
        When a plain image, or one TIFF tile/strip, exceeds the pixel limit.
    ValueError
        When the image data is truncated or cannot be decoded.
    """
    from PIL import Image

    path = Path(path)
    info = image_info(path, max_pixels=max_pixels)
    scale = min(1.0, max_side / max(info.width, info.height))
    try:
        if is_tiff(path):
            im = Image.fromarray(_tiff_thumbnail(path, info.width * scale, max_pixels))
        else:
            with open_pil(path, max_pixels=max_pixels) as src:
                src.draft("RGB", (int(info.width * scale) + 1, int(info.height * scale) + 1))
                check_decode_memory(path, src)  # the size after a JPEG's draft reduction
                im = Image.fromarray(pil_to_rgb_uint8(src, source=str(path)))
    except ValueError:
        raise
    except (OSError, SyntaxError) as e:
        msg = f"{path}: cannot decode the image data ({e}); is the file truncated?"
        raise ValueError(msg) from e
    size = (max(1, round(info.width * scale)), max(1, round(info.height * scale)))
    if im.size != size:
        im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(im, dtype=np.uint8), scale


def _tiff_thumbnail(path: Path, target_width: float, max_pixels: int | None) -> np.ndarray:
    """RGB of the smallest TIFF level at least ``target_width`` wide (strip-reduced if huge)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        levels = series.levels or [series]
        index = 0
        for i, lvl in enumerate(levels):
            if lvl.shape[lvl.axes.index("X")] >= target_width:
                index = i
        lvl = levels[index]
        width, height = lvl.shape[lvl.axes.index("X")], lvl.shape[lvl.axes.index("Y")]
        if width * height <= max_image_pixels(max_pixels):
            arr = lvl.asarray()
            if lvl.axes.startswith(("C", "S")):
                arr = np.moveaxis(arr, 0, -1)
            return to_rgb_uint8(arr, source=str(path))
        return _tiff_level_in_strips(path, series, index, target_width, max_pixels)


def _tiff_level_in_strips(
    path: Path, series: Any, index: int, target_width: float, max_pixels: int | None
) -> np.ndarray:
    """Read a TIFF level too large to decode whole in row strips, box-reducing each."""
    import zarr
    from PIL import Image

    lvl = series.levels[index] if series.levels else series
    page = lvl.keyframe
    axes = lvl.axes.upper()
    width, height = lvl.shape[axes.index("X")], lvl.shape[axes.index("Y")]
    chunk = (page.tilewidth, page.tilelength) if page.is_tiled else (width, page.rowsperstrip)
    what = "TIFF tile" if page.is_tiled else "TIFF strip"
    check_image_pixels(
        path, min(chunk[0], width), min(chunk[1], height), max_pixels=max_pixels, what=what
    )
    factor = max(1, int(width // max(target_width, 1)))
    rows = max(chunk[1], 64 * 2**20 // (3 * width))  # ~64 MiB of RGB per strip
    strip_h = factor * max(1, rows // factor)
    z = zarr.open(series.aszarr(level=index), mode="r")
    out = []
    for y0 in range(0, height, strip_h):
        y1 = min(y0 + strip_h, height)
        sel = tuple(
            slice(y0, y1) if ax == "Y" else slice(None) if ax in "XSC" else 0 for ax in axes
        )
        kept = [ax for ax in axes if ax in "YXSC"]
        arr = np.asarray(z[sel])
        arr = np.transpose(
            arr,
            [kept.index("Y"), kept.index("X")] + [i for i, ax in enumerate(kept) if ax not in "YX"],
        )
        img = Image.fromarray(np.ascontiguousarray(to_rgb_uint8(arr, source=str(path))))
        out.append(np.asarray(img.reduce(factor) if factor > 1 else img))
    return np.concatenate(out, axis=0)


def thumbnails(
    path: str | os.PathLike, *, max_pixels: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Return squidpy-style ``images`` (hires ≤2000 px, lowres ≤600 px) and their scale factors.

    Parameters
    ----------
    path
        The level-0 image.
    max_pixels
        Pixel limit (see [`image_info`][stalign.io.image_info]).
    """
    hires, sf_h = load_thumbnail(path, HIRES_MAX_PX, max_pixels=max_pixels)
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
