"""The lazy H&E image: `SlideImage` and `open_image`."""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _keys as K
from ..io import (
    check_decode_memory,
    is_tiff,
    open_pil,
    pil_to_rgb_uint8,
    reconcile_mpp,
    tiff_mpp,
    to_rgb_uint8,
)
from ._levels import ArrayLevel, Level, OpenSlideLevel, TiledTiffLevel, ZarrLevel
from ._resample import Window, outside_mask, patch_window, resample

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

logger = logging.getLogger(__name__)

_OPENSLIDE_SUFFIXES = (".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
#: a level's mpp may exceed the target by this relative amount and still count as "≤"
_MPP_TOL = 0.01
#: above this size (px) a plain image, decoded whole into memory, gets a warning
_LARGE_PLAIN_IMAGE_PX = 400_000_000


def _n_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class SlideImage:
    """A lazily read H&E image with a pyramid of levels.

    Coordinates passed to every method are **level-0 pixels** ``(x, y)``
    (x = column, y = row). Nothing reads a whole level into memory: regions are
    assembled from the tiles they touch (decoded tiles are cached, bounded in bytes).

    Use [`open_image`][stalign.im.open_image] to create one.

    Attributes
    ----------
    width, height
        Level-0 size (px).
    mpp
        µm per level-0 pixel, or ``None`` when unknown.
    mpp_source
        Where ``mpp`` came from (``'user'``, ``'ome'``, ``'aperio'``,
        ``'tiff_resolution'``, ``'openslide'``, ``'anndata'``) or ``None``.
    level_downsamples
        Level-0 pixels per pixel of each level (level 0 may exceed 1 when the image
        is a down-scaled stand-in, e.g. a Visium ``hires`` image).
    source
        Path or description of the image.
    """

    def __init__(
        self,
        levels: Sequence[Level],
        *,
        width: int,
        height: int,
        downsamples: Sequence[float],
        mpp: float | None,
        mpp_source: str | None,
        source: str,
        closers: Sequence[Any] = (),
    ) -> None:
        if not levels:
            msg = f"{source}: the image has no readable levels"
            raise ValueError(msg)
        self._levels = list(levels)
        self.width = int(width)
        self.height = int(height)
        self.level_downsamples = tuple(float(d) for d in downsamples)
        self.mpp = None if mpp is None else float(mpp)
        self.mpp_source = mpp_source
        self.source = source
        self._closers = list(closers)
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    # -- description ---------------------------------------------------------------
    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self._levels)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of each level (px)."""
        return tuple((lv.width, lv.height) for lv in self._levels)

    @property
    def level_mpps(self) -> tuple[float, ...] | None:
        """µm/px of each level, or ``None`` when `mpp` is unknown."""
        if self.mpp is None:
            return None
        return tuple(self.mpp * d for d in self.level_downsamples)

    def __repr__(self) -> str:
        mpp = "unknown" if self.mpp is None else f"{self.mpp:.4g} µm/px ({self.mpp_source})"
        return (
            f"SlideImage({self.source!r}, {self.width}×{self.height} px, mpp={mpp}, "
            f"levels={self.level_count})"
        )

    # -- lifecycle -----------------------------------------------------------------
    def close(self) -> None:
        """Close files and stop the decoding threads."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for lv in self._levels:
            lv.close()
        for c in self._closers:
            c.close()
        self._closers = []

    def __enter__(self) -> SlideImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pool(self) -> Executor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=_n_workers(), thread_name_prefix="stalign-im"
                )
            return self._executor

    # -- level choice --------------------------------------------------------------
    def _require_mpp(self, what: str) -> float:
        if self.mpp is None:
            msg = (
                f"{self.source}: {what} needs the image resolution (µm/px) but none is "
                "known; pass open_image(..., mpp=<µm per level-0 px>)"
            )
            raise ValueError(msg)
        return self.mpp

    def best_level(self, mpp: float) -> int:
        """Return the coarsest level whose µm/px is ≤ ``mpp`` (level 0 if none is).

        Parameters
        ----------
        mpp
            Target resolution (µm/px).
        """
        mpp0 = self._require_mpp("best_level")
        _check_positive(mpp, "mpp")
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if mpp0 * ds <= mpp * (1 + _MPP_TOL) and ds >= self.level_downsamples[best]:
                best = i
        return best

    # -- reading -------------------------------------------------------------------
    def _read_level(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Read a level-pixel window, zero outside the level (never shifted)."""
        lv = self._levels[level]
        out_h, out_w = y1 - y0, x1 - x0
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x1, lv.width), min(y1, lv.height)
        if cx0 == x0 and cy0 == y0 and cx1 == x1 and cy1 == y1:
            return lv.read(x0, y0, x1, y1)
        out = np.zeros((out_h, out_w, 3), np.uint8)
        if cx1 > cx0 and cy1 > cy0:
            out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = lv.read(cx0, cy0, cx1, cy1)
        return out

    def _read_for_resampling(self, level: int, win: Window) -> np.ndarray:
        """Read ``win.read``, repeating the edge outside the level.

        The filter then sees no black fringe; those output pixels are zeroed afterwards.
        """
        lv = self._levels[level]
        x0, y0, x1, y1 = win.read
        cx0, cy0 = min(max(x0, 0), lv.width - 1), min(max(y0, 0), lv.height - 1)
        cx1, cy1 = max(min(x1, lv.width), cx0 + 1), max(min(y1, lv.height), cy0 + 1)
        if (cx0, cy0, cx1, cy1) == (x0, y0, x1, y1):
            return lv.read(x0, y0, x1, y1)
        inner = lv.read(cx0, cy0, cx1, cy1)
        pads = ((cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1), (0, 0))
        return np.pad(inner, [(max(a, 0), max(b, 0)) for a, b in pads], mode="edge")

    def read_region(
        self, x: float, y: float, width: int, height: int, level: int = 0
    ) -> np.ndarray:
        """Read a rectangle of one level (OpenSlide semantics).

        Parameters
        ----------
        x, y
            Top-left corner in **level-0** pixels.
        width, height
            Size of the region in pixels **of ``level``**.
        level
            Pyramid level index.

        Returns
        -------
        np.ndarray
            ``(height, width, 3)`` uint8 array; parts outside the image are zero.
        """
        if not 0 <= level < self.level_count:
            msg = f"level must be in [0, {self.level_count - 1}], got {level}"
            raise ValueError(msg)
        width, height = int(width), int(height)
        if width <= 0 or height <= 0:
            msg = f"width and height must be positive (px), got {width}×{height}"
            raise ValueError(msg)
        ds = self.level_downsamples[level]
        x0, y0 = math.floor(x / ds), math.floor(y / ds)
        return np.array(self._read_level(level, x0, y0, x0 + width, y0 + height))

    def _patch_plan(self, level: int, cx: float, cy: float, size_px: int, mpp: float) -> Window:
        mpp0 = self._require_mpp("read_patch")
        ds = self.level_downsamples[level]
        return patch_window(cx, cy, size_px=size_px, mpp=mpp, level_mpp=mpp0 * ds, level_ds=ds)

    def _make_patch(self, level: int, win: Window, size_px: int) -> tuple[np.ndarray, bool]:
        lv = self._levels[level]
        patch = resample(self._read_for_resampling(level, win), win, size_px)
        mask = outside_mask(win, size_px, lv.width, lv.height)
        if mask is None:
            return patch, True
        patch = patch.copy()
        patch[mask] = 0
        return patch, False

    def read_patch(
        self, cx: float, cy: float, *, size_px: int = 224, mpp: float = 0.5
    ) -> np.ndarray:
        """Read a square patch centred on a level-0 point at a target resolution.

        The source is the coarsest level whose µm/px is ≤ ``mpp``; only the window
        the patch needs is read, then resampled with antialiasing (Lanczos) to
        ``size_px``. Output pixels outside the image are zero (never shifted); use
        [`read_patches`][stalign.im.SlideImage.read_patches] to also get the in-image flag.

        Parameters
        ----------
        cx, cy
            Patch centre in level-0 pixels.
        size_px
            Patch side (px).
        mpp
            Patch resolution (µm/px); the patch covers ``size_px * mpp`` µm.

        Returns
        -------
        np.ndarray
            ``(size_px, size_px, 3)`` uint8 array.
        """
        patches, _ = self.read_patches(np.array([[cx, cy]], float), size_px=size_px, mpp=mpp)
        return patches[0]

    def read_patches(
        self,
        centres: np.ndarray,
        *,
        size_px: int = 224,
        mpp: float = 0.5,
        out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read many patches; tiles are decoded in parallel and shared between patches.

        Parameters
        ----------
        centres
            ``(n, 2)`` level-0 ``(x, y)`` patch centres (px).
        size_px
            Patch side (px).
        mpp
            Patch resolution (µm/px).
        out
            Optional ``(n, size_px, size_px, 3)`` uint8 array to fill.

        Returns
        -------
        patches
            ``(n, size_px, size_px, 3)`` uint8.
        in_image
            ``(n,)`` bool, whether the whole patch lies inside the image.
        """
        centres = np.asarray(centres, dtype=float)
        if centres.ndim != 2 or centres.shape[1] != 2:
            msg = f"centres must have shape (n, 2) (level-0 x, y px), got {centres.shape}"
            raise ValueError(msg)
        if not np.isfinite(centres).all():
            msg = "centres contain NaN or infinite coordinates"
            raise ValueError(msg)
        size_px = _check_size(size_px)
        _check_positive(mpp, "mpp")
        n = len(centres)
        if out is None:
            out = np.empty((n, size_px, size_px, 3), np.uint8)
        elif out.shape != (n, size_px, size_px, 3) or out.dtype != np.uint8:
            want = (n, size_px, size_px, 3)
            msg = f"out must be uint8 of shape {want}, got {out.dtype} {out.shape}"
            raise ValueError(msg)
        in_image = np.zeros(n, bool)
        if n == 0:
            return out, in_image
        level = self.best_level(mpp)
        plans = [self._patch_plan(level, cx, cy, size_px, mpp) for cx, cy in centres]
        lv = self._levels[level]
        pool = self._pool()
        clipped = []
        for w in plans:
            x0, y0, x1, y1 = w.read
            x0, y0 = max(x0, 0), max(y0, 0)
            x1, y1 = min(x1, lv.width), min(y1, lv.height)
            if x1 > x0 and y1 > y0:
                clipped.append((x0, y0, x1, y1))
        lv.prefetch(clipped, pool)

        def work(i: int) -> None:
            out[i], in_image[i] = self._make_patch(level, plans[i], size_px)

        if n == 1:
            work(0)
        else:
            list(pool.map(work, range(n)))
        return out, in_image

    def get_thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """Return a down-scaled copy of the whole image, longest side ≤ ``max_size``.

        Reads the smallest level that is still at least ``max_size`` wide or high,
        in horizontal strips reduced by an integer box filter, so memory stays
        bounded even for a slide without small levels. The thumbnail's level-0
        scale is ``width / thumb.shape[1]``.

        Parameters
        ----------
        max_size
            Longest side of the thumbnail (px).
        """
        from PIL import Image

        max_size = _check_size(max_size, "max_size")
        dims = self.level_dimensions
        order = sorted(range(self.level_count), key=lambda i: max(dims[i]))
        level = next((i for i in order if max(dims[i]) >= max_size), order[-1])
        lv = self._levels[level]
        factor = max(1, math.ceil(max(lv.width, lv.height) / max_size))
        strip_h = factor * max(1, 1024 // factor)
        strips = []
        for y0 in range(0, lv.height, strip_h):
            y1 = min(y0 + strip_h, lv.height)
            strip = np.ascontiguousarray(lv.read(0, y0, lv.width, y1))
            img = Image.fromarray(strip)
            strips.append(np.asarray(img.reduce(factor) if factor > 1 else img))
        return np.concatenate(strips, axis=0)


# ----------------------------------------------------------------------------------
# validation helpers
def _check_positive(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        msg = f"{name} must be a positive number (µm/px), got {value!r}"
        raise ValueError(msg) from e
    if not math.isfinite(v) or v <= 0:
        msg = f"{name} must be a positive number (µm/px), got {value!r}"
        raise ValueError(msg)
    return v


def _check_size(value: int, name: str = "size_px") -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        msg = f"{name} must be a positive integer (px), got {value!r}"
        raise ValueError(msg)
    return int(value)


# ----------------------------------------------------------------------------------
# resolution from metadata: one rule for readers and images (stalign.io.tiff_mpp)
def _reconcile_mpp(
    user: float | None, found: float | None, found_source: str | None, source: str
) -> tuple[float | None, str | None]:
    """Return ``(µm/px, source)`` of an image: the user's value if given, else its own.

    The one rule of `stalign.io.reconcile_mpp` (the readers use it too): the
    user's value wins and a `MppMismatchWarning` is emitted when the
    image's own value differs by more than 10 %.
    """
    estimates: dict[str, float | None] = {
        "user": None if user is None else _check_positive(user, "mpp")
    }
    if found is not None and math.isfinite(found) and found > 0:
        estimates[found_source or "image_metadata"] = found
    mpp, mpp_source = reconcile_mpp(estimates, context=source)
    return (mpp, mpp_source) if mpp is not None else (None, None)


# ----------------------------------------------------------------------------------
# openers
def _open_tiff(path: Path, mpp: float | None) -> SlideImage:
    import tifffile
    import zarr

    try:
        tf = tifffile.TiffFile(path)
        series = tf.series[0]
    except (tifffile.TiffFileError, IndexError, ValueError) as e:
        msg = f"{path}: not a readable TIFF image ({e})"
        raise ValueError(msg) from e
    try:
        page0 = series.levels[0].keyframe
        found, found_src = tiff_mpp(tf, page0)
        file_lock = threading.Lock()
        fh = open(path, "rb")  # closed by SlideImage.close
        levels: list[Level] = []
        for i, lvl in enumerate(series.levels):
            page = lvl.keyframe
            if len(lvl.pages) == 1 and TiledTiffLevel.supports(page):
                levels.append(TiledTiffLevel(page, fh, file_lock))
            else:
                z = zarr.open(series.aszarr(level=i), mode="r")
                levels.append(ZarrLevel(z, lvl.axes, source=f"{path} level {i}"))
    except Exception:
        tf.close()
        raise
    w0, h0 = levels[0].width, levels[0].height
    ds = [w0 / lv.width for lv in levels]
    mpp_val, mpp_src = _reconcile_mpp(mpp, found, found_src, str(path))
    return SlideImage(
        levels,
        width=w0,
        height=h0,
        downsamples=ds,
        mpp=mpp_val,
        mpp_source=mpp_src,
        source=str(path),
        closers=[fh, tf],
    )


def _open_ome_zarr(path: Path, mpp: float | None) -> SlideImage:
    from ._ome_zarr import ome_zarr_levels

    levels, ds = ome_zarr_levels(path)
    mpp_val = None if mpp is None else _check_positive(mpp, "mpp")
    return SlideImage(
        levels,
        width=levels[0].width,
        height=levels[0].height,
        downsamples=ds,
        mpp=mpp_val,
        mpp_source="user" if mpp_val is not None else None,
        source=str(path),
    )


def _open_pil(path: Path, mpp: float | None, max_pixels: int | None) -> SlideImage:
    """Decode a plain image (JPEG/PNG/...) into memory under stalign's pixel limit."""
    try:
        with open_pil(path, max_pixels=max_pixels) as img:
            if img.width * img.height > _LARGE_PLAIN_IMAGE_PX:
                logger.warning(
                    "%s is a %d×%d plain image and is loaded into memory; convert it to "
                    "a tiled pyramidal TIFF for lazy reading",
                    path,
                    img.width,
                    img.height,
                )
            check_decode_memory(path, img)  # from the header, before anything is decoded
            arr = pil_to_rgb_uint8(img, source=str(path))  # 16-bit scaled, not clipped
    except (OSError, SyntaxError) as e:
        msg = f"{path}: not a readable image file ({e}); expected JPEG/PNG/TIFF"
        raise ValueError(msg) from e
    return from_array(arr, mpp=mpp, source=str(path))


def _open_openslide(path: Path, mpp: float | None) -> SlideImage:
    try:
        import openslide
    except ImportError as e:
        msg = (
            f"{path}: reading this format needs OpenSlide; install the optional extra "
            "with `pip install 'stalign[openslide]'`"
        )
        raise ImportError(msg) from e
    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideError as e:
        msg = f"{path}: OpenSlide cannot read this file ({e})"
        raise ValueError(msg) from e
    found = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
    found_f = float(found) if found else None
    mpp_val, mpp_src = _reconcile_mpp(mpp, found_f, "openslide" if found_f else None, str(path))
    levels = [OpenSlideLevel(slide, i) for i in range(slide.level_count)]
    return SlideImage(
        levels,
        width=levels[0].width,
        height=levels[0].height,
        downsamples=[float(d) for d in slide.level_downsamples],
        mpp=mpp_val,
        mpp_source=mpp_src,
        source=str(path),
        closers=[slide],
    )


def from_array(
    arr: np.ndarray,
    *,
    mpp: float | None = None,
    downsample: float = 1.0,
    source: str = "array",
    mpp_source: str | None = None,
) -> SlideImage:
    """Wrap an in-memory ``(h, w, 3)`` image as a single-level `SlideImage`.

    Parameters
    ----------
    arr
        The image.
    mpp
        µm per **level-0** pixel.
    downsample
        Level-0 pixels per pixel of ``arr`` (``1 / scalefactor`` for a Visium
        hires/lowres image), so level-0 coordinates still apply.
    source
        Description used in messages.
    mpp_source
        How ``mpp`` was obtained.
    """
    level = ArrayLevel(arr, source=source)
    if mpp is not None:
        mpp = _check_positive(mpp, "mpp")
    return SlideImage(
        [level],
        width=round(level.width * downsample),
        height=round(level.height * downsample),
        downsamples=[downsample],
        mpp=mpp,
        mpp_source=mpp_source or ("user" if mpp is not None else None),
        source=source,
    )


def _open_anndata(adata: AnnData, mpp: float | None, max_pixels: int | None) -> SlideImage:
    meta = adata.uns.get(K.STALIGN)
    if not isinstance(meta, dict):
        msg = (
            f"AnnData has no uns[{K.STALIGN!r}] (image_path, mpp); read it with "
            "stalign.io or pass the image explicitly"
        )
        raise ValueError(msg)
    found = meta.get(K.MPP)
    found_src = meta.get(K.MPP_SOURCE) or "anndata"
    path = meta.get(K.IMAGE_PATH)
    if path:
        img = open_image(path, max_pixels=max_pixels)
        # the user's value, else the AnnData's (platform geometry), else the image's own:
        # stalign.io.reconcile_mpp's rule (unknown sources rank in insertion order)
        estimates: dict[str, float] = {}
        if mpp is not None:
            estimates["user"] = _check_positive(mpp, "mpp")
        if found is not None:  # a reader's "user" source does not override this call's
            estimates.setdefault(found_src, float(found))
        if img.mpp is not None:
            estimates.setdefault(img.mpp_source or "image_metadata", img.mpp)
        ref, ref_src = reconcile_mpp(estimates, context=str(path))
        if ref is not None:
            img.mpp, img.mpp_source = float(ref), ref_src
        return img
    lib = meta.get(K.LIBRARY_ID)
    spatial = adata.uns.get(K.SPATIAL, {})
    if lib not in spatial:
        msg = (
            f"AnnData has no image: uns[{K.STALIGN!r}][{K.IMAGE_PATH!r}] is None and "
            f"uns[{K.SPATIAL!r}] has no library {lib!r}"
        )
        raise ValueError(msg)
    entry = spatial[lib]
    images = entry.get(K.IMAGES, {}) or {}
    sfs = entry.get(K.SCALEFACTORS, {}) or {}
    for name, sf_key in (("hires", K.SF_HIRES), ("lowres", K.SF_LOWRES)):
        if name in images and images[name] is not None and sf_key in sfs:
            sf = float(sfs[sf_key])
            if not sf > 0:
                msg = f"uns['spatial'][{lib!r}]['scalefactors'][{sf_key!r}] must be > 0, got {sf}"
                raise ValueError(msg)
            arr = np.asarray(images[name])
            if arr.dtype != np.uint8 and np.issubdtype(arr.dtype, np.floating):
                arr = np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8)
            ref = mpp if mpp is not None else found
            return from_array(
                arr,
                mpp=ref,
                downsample=1.0 / sf,
                source=f"uns['spatial'][{lib!r}]['images'][{name!r}]",
                mpp_source=("user" if mpp is not None else found_src) if ref else None,
            )
    msg = (
        f"AnnData library {lib!r} has no usable image: expected images 'hires' or "
        f"'lowres' with their scale factor, found images {sorted(images)} and "
        f"scalefactors {sorted(sfs)}"
    )
    raise ValueError(msg)


def open_image(
    source: Any, *, mpp: float | None = None, max_pixels: int | None = None
) -> SlideImage:
    """Open an H&E image lazily.

    Parameters
    ----------
    source
        * a path: pyramidal/tiled TIFF, OME-TIFF or SVS (tifffile; tiles decoded on
          demand), an OME-Zarr multiscale image folder (e.g. a SpatialData
          ``<store>.zarr/images/<name>``; chunks read on demand), JPEG/PNG (loaded
          into memory), or an OpenSlide format
          (``.ndpi``, ``.mrxs``, ... — needs ``pip install 'stalign[openslide]'``);
        * an ``(h, w, 3)`` uint8 ``np.ndarray``;
        * an AnnData read by [`stalign.io`][stalign.io] (uses ``uns['stalign']['image_path']``
          and ``['mpp']``; without an image path, the in-memory ``hires``/``lowres``
          image of ``uns['spatial'][library_id]`` scaled so that
          ``obsm['spatial']`` still applies);
        * a [`SlideImage`][stalign.im.SlideImage] (returned as is).
    mpp
        µm per level-0 pixel. Overrides what the file or AnnData says (a warning
        is logged when they differ by more than 10 %).
    max_pixels
        Largest plain (JPEG/PNG) image, in px, decoded into memory; default the
        ``STALIGN_MAX_IMAGE_PIXELS`` environment variable or
        [`stalign.io.MAX_IMAGE_PIXELS`][stalign.io.MAX_IMAGE_PIXELS] (1 Gpx). PIL's process-wide
        ``Image.MAX_IMAGE_PIXELS`` is neither used nor changed. Tiled TIFFs are read
        lazily and are not limited.

    Returns
    -------
    SlideImage
        Read it with `SlideImage.read_region` / `SlideImage.read_patch`;
        close it (or use ``with``) to release the file.

    Raises
    ------
    stalign.io.ImageTooLargeError
        When a plain image declares more pixels than ``max_pixels`` (from its header,
        before anything is decoded).
    """
    if isinstance(source, SlideImage):
        if mpp is not None:
            source.mpp, source.mpp_source = _check_positive(mpp, "mpp"), "user"
        return source
    if isinstance(source, np.ndarray):
        return from_array(to_rgb_uint8(source, source="array"), mpp=mpp)
    if hasattr(source, "obs") and hasattr(source, "uns"):
        return _open_anndata(source, mpp, max_pixels)
    if not isinstance(source, str | os.PathLike):
        msg = (
            "open_image expects a path, an (h, w, 3) array, an AnnData or a SlideImage, "
            f"got {type(source).__name__}"
        )
        raise TypeError(msg)
    path = Path(source)
    if path.is_dir():  # an OME-Zarr image, e.g. <store>.zarr/images/<name> of SpatialData
        return _open_ome_zarr(path, mpp)
    if not path.is_file():
        msg = f"image file not found: {path}"
        raise FileNotFoundError(msg)
    if path.suffix.lower() in _OPENSLIDE_SUFFIXES:
        return _open_openslide(path, mpp)
    # TIFF or not is read from the file's first bytes: a JPEG saved as .TIF opens
    if is_tiff(path):
        return _open_tiff(path, mpp)
    return _open_pil(path, mpp, max_pixels)
