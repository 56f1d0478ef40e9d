"""Spot → patch extraction with tissue QC."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _keys as K
from ._slide import SlideImage, _check_positive, _check_size, open_image
from ._tissue import TissueMask, tissue_fraction
from ._tissue import tissue_mask as _slide_tissue_mask
from ._tissue import tissue_threshold as _otsu_threshold

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

logger = logging.getLogger(__name__)

#: how a patch's tissue fraction is measured (see `extract_patches`)
TISSUE_QC_MODES = ("mask", "pixels")


@dataclass
class PatchBatch:
    """One batch of patches from [`iter_patches`][stalign.im.iter_patches].

    Attributes
    ----------
    start
        With ``order='obs'``: position of the first patch in ``obs_names`` order (the
        batch covers ``start:start + len(batch)``); ``-1`` with ``order='spatial'``.
    index
        ``(b,)`` positions of the patches in ``obs_names`` (or ``coords``) order.
    barcodes
        ``(b,)`` barcodes (str).
    images
        ``(b, size_px, size_px, 3)`` uint8.
    coords
        ``(b, 2)`` level-0 ``(x, y)`` patch centres (px).
    topleft
        ``(b, 2)`` level-0 ``(x, y)`` of each patch's top-left corner (px), the
        HEST ``coords`` convention.
    in_image
        ``(b,)`` bool: the whole patch lies inside the image.
    tissue_fraction
        ``(b,)`` float32 in ``[0, 1]``: coverage of the patch by the slide's tissue
        mask (``tissue_qc="mask"``) or its fraction of saturated pixels
        (``tissue_qc="pixels"``).
    """

    start: int
    index: np.ndarray
    barcodes: np.ndarray
    images: np.ndarray
    coords: np.ndarray
    topleft: np.ndarray
    in_image: np.ndarray
    tissue_fraction: np.ndarray

    def __len__(self) -> int:
        return len(self.barcodes)


def _spot_coords(adata: AnnData, spatial_key: str) -> np.ndarray:
    if spatial_key not in adata.obsm:
        msg = (
            f"adata.obsm[{spatial_key!r}] is missing; expected (n_obs, 2) level-0 "
            f"(x, y) pixel coordinates (found obsm keys {list(adata.obsm.keys())})"
        )
        raise ValueError(msg)
    coords = np.asarray(adata.obsm[spatial_key], dtype=float)
    if coords.ndim != 2 or coords.shape[1] < 2:
        msg = f"adata.obsm[{spatial_key!r}] must have shape (n_obs, 2), got {coords.shape}"
        raise ValueError(msg)
    return coords[:, :2]


def _check_in_bounds(coords: np.ndarray, image: SlideImage) -> None:
    if not np.isfinite(coords).all():
        bad = int((~np.isfinite(coords)).any(axis=1).sum())
        msg = f"{bad} spot coordinates are NaN or infinite"
        raise ValueError(msg)
    x, y = coords[:, 0], coords[:, 1]
    outside = (x < -0.5) | (y < -0.5) | (x >= image.width - 0.5) | (y >= image.height - 0.5)
    if outside.all() and len(coords):
        msg = (
            f"all {len(coords)} spot centres lie outside the {image.width}×{image.height} "
            f"px image {image.source} (x in [{x.min():.1f}, {x.max():.1f}], y in "
            f"[{y.min():.1f}, {y.max():.1f}]); are the coordinates in level-0 pixels "
            "of this image?"
        )
        raise ValueError(msg)
    if outside.any():
        logger.warning(
            "%d of %d spot centres lie outside the image; their patches are zero-filled "
            "and flagged patch_in_image=False",
            int(outside.sum()),
            len(coords),
        )


def iter_patches(
    adata: AnnData | None = None,
    *,
    image: Any = None,
    coords: np.ndarray | None = None,
    barcodes: Any = None,
    mpp: float = 0.5,
    size_px: int = 224,
    batch_size: int = 256,
    tissue_qc: str | None = "mask",
    tissue_mask: TissueMask | None = None,
    saturation_threshold: float | None = None,
    spatial_key: str = K.SPATIAL,
    order: str = "obs",
    progress: bool = True,
) -> Iterator[PatchBatch]:
    """Yield patches centred on spots in batches (memory bounded by ``batch_size``).

    Give either ``adata`` (coordinates from ``obsm[spatial_key]``, barcodes from
    ``obs_names``, image from ``uns['stalign']`` unless ``image`` is given) or
    ``image`` + ``coords`` (+ ``barcodes``).

    Parameters
    ----------
    adata
        Spots; ``obsm[spatial_key]`` holds level-0 ``(x, y)`` pixel centres.
    image
        Anything [`open_image`][stalign.im.open_image] accepts; defaults to the AnnData's image.
    coords
        ``(n, 2)`` level-0 pixel centres when ``adata`` is not given.
    barcodes
        ``n`` names when ``adata`` is not given (default ``'0'``, ``'1'``, ...).
    mpp
        Patch resolution (µm/px).
    size_px
        Patch side (px); a patch covers ``size_px * mpp`` µm.
    batch_size
        Patches per batch.
    tissue_qc
        How ``PatchBatch.tissue_fraction`` is measured: ``"mask"`` (default) —
        coverage of the patch window by the slide-level tissue mask
        (`stalign.im.tissue_mask`, computed once); ``"pixels"`` — fraction
        of pixels whose saturation exceeds ``saturation_threshold``; ``None`` —
        not measured (``tissue_fraction`` is NaN; for callers that only need the
        pixels, e.g. [`stalign.tl.embed`][stalign.tl.embed], so no slide mask is computed).
    tissue_mask
        A precomputed mask of this slide (``tissue_qc="mask"``).
    saturation_threshold
        Pixel saturation threshold (0–255) for ``tissue_qc="pixels"``; default:
        Otsu on the slide thumbnail (`stalign.im.tissue_threshold`), computed once.
    spatial_key
        ``obsm`` key of the spot centres.
    order
        ``'obs'``: batches follow ``obs_names`` (or ``coords``) order. ``'spatial'``:
        spots are visited band by band across the slide (serpentine), so decoded
        tiles are reused from the cache — much faster on large slides whose spots
        are not stored in spatial order; place results with ``PatchBatch.index``.
    progress
        Show a tqdm progress bar.

    Yields
    ------
    PatchBatch
        One batch of at most ``batch_size`` patches.
    """
    from .._utils import progress_bar as tqdm

    size_px = _check_size(size_px)
    mpp = _check_positive(mpp, "mpp")
    batch_size = _check_size(batch_size, "batch_size")
    if order not in ("obs", "spatial"):
        msg = f"order must be 'obs' or 'spatial', got {order!r}"
        raise ValueError(msg)
    _check_tissue_qc(tissue_qc, saturation_threshold, allow_none=True)
    if adata is not None:
        coords = _spot_coords(adata, spatial_key)
        barcodes = np.asarray(adata.obs_names.astype(str))
        src = adata if image is None else image
    else:
        if image is None or coords is None:
            msg = "iter_patches needs either adata, or both image= and coords="
            raise ValueError(msg)
        coords = np.asarray(coords, dtype=float)
        if coords.ndim != 2 or coords.shape[1] != 2:
            msg = f"coords must have shape (n, 2) (level-0 x, y px), got {coords.shape}"
            raise ValueError(msg)
        if barcodes is None:
            barcodes = np.arange(len(coords)).astype(str)
        barcodes = np.asarray([str(b) for b in barcodes])
        if len(barcodes) != len(coords):
            msg = f"got {len(barcodes)} barcodes for {len(coords)} coords"
            raise ValueError(msg)
        src = image
    owns = not isinstance(src, SlideImage)
    slide = open_image(src)
    try:
        if slide.mpp is None:
            msg = (
                f"{slide.source}: the image resolution (µm/px) is unknown; pass "
                "open_image(path, mpp=...) as image="
            )
            raise ValueError(msg)
        _check_in_bounds(coords, slide)
        measure = _tissue_measure(slide, tissue_qc, tissue_mask, saturation_threshold)
        half0 = size_px * mpp / slide.mpp / 2.0  # half patch side in level-0 px
        n = len(coords)
        perm = _spatial_order(coords, 2 * half0) if order == "spatial" else None
        with tqdm(total=n, desc="patches", unit="patch", disable=not progress) as bar:
            for start in range(0, n, batch_size):
                idx = np.arange(start, min(start + batch_size, n))
                if perm is not None:
                    idx = perm[idx]
                c = coords[idx]
                imgs, inside = slide.read_patches(c, size_px=size_px, mpp=mpp)
                yield PatchBatch(
                    start=start if perm is None else -1,
                    index=idx,
                    barcodes=barcodes[idx],
                    images=imgs,
                    coords=c,
                    topleft=c - half0,
                    in_image=inside,
                    tissue_fraction=measure(c, 2 * half0, imgs),
                )
                bar.update(len(c))
    finally:
        if owns:
            slide.close()


def _check_tissue_qc(
    tissue_qc: str | None, saturation_threshold: float | None, *, allow_none: bool = False
) -> None:
    if not (allow_none and tissue_qc is None) and tissue_qc not in TISSUE_QC_MODES:
        msg = f"tissue_qc must be one of {TISSUE_QC_MODES}, got {tissue_qc!r}"
        raise ValueError(msg)
    if tissue_qc == "mask" and saturation_threshold is not None:
        msg = (
            "saturation_threshold applies to the per-pixel rule only; pass "
            "tissue_qc='pixels' with it (the default tissue_qc='mask' uses the slide's "
            "tissue mask)"
        )
        raise ValueError(msg)


def _tissue_measure(
    slide: SlideImage,
    tissue_qc: str | None,
    mask: TissueMask | None,
    saturation_threshold: float | None,
) -> Callable[[np.ndarray, float, np.ndarray], np.ndarray]:
    """``f(centres, window0_px, patches) -> tissue fraction`` for one slide, set up once."""
    if tissue_qc is None:  # not measured: no mask, no threshold
        return lambda centres, _window0, _imgs: np.full(len(centres), np.nan, np.float32)
    if tissue_qc == "mask":
        tmask = _slide_tissue_mask(slide) if mask is None else mask
        if (tmask.width, tmask.height) != (slide.width, slide.height):
            msg = (
                f"tissue_mask was made for a {tmask.width}×{tmask.height} px slide, "
                f"not this {slide.width}×{slide.height} px one ({slide.source})"
            )
            raise ValueError(msg)
        return lambda centres, window0, _imgs: tmask.coverage(centres, window0)
    thr = _otsu_threshold(slide) if saturation_threshold is None else float(saturation_threshold)
    return lambda _centres, _window0, imgs: _tissue_fraction_parallel(slide, imgs, thr)


def _tissue_fraction_parallel(slide: SlideImage, imgs: np.ndarray, thr: float) -> np.ndarray:
    """`tissue_fraction` over chunks of a batch on the slide's thread pool."""
    if len(imgs) < 16:
        return tissue_fraction(imgs, thr)
    chunks = np.array_split(np.arange(len(imgs)), 4)
    parts = slide._pool().map(lambda ix: tissue_fraction(imgs[ix[0] : ix[-1] + 1], thr), chunks)
    return np.concatenate(list(parts))


def _spatial_order(coords: np.ndarray, band: float) -> np.ndarray:
    """Serpentine order: bands of height ``band`` (level-0 px), alternating x direction."""
    row = np.floor((coords[:, 1] - coords[:, 1].min()) / max(band, 1.0)).astype(np.int64)
    x = np.where(row % 2 == 0, coords[:, 0], -coords[:, 0])
    return np.lexsort((x, row))


def extract_patches(
    adata: AnnData,
    *,
    mpp: float = 0.5,
    size_px: int = 224,
    tissue_qc: str = "mask",
    tissue_threshold: float = 0.5,
    min_mask_coverage: float = 0.1,
    use_in_tissue: bool = True,
    image: Any = None,
    batch_size: int = 256,
    saturation_threshold: float | None = None,
    spatial_key: str = K.SPATIAL,
    progress: bool = True,
    copy: bool = False,
) -> np.ndarray | tuple[np.ndarray, AnnData]:
    """Extract one patch per spot at a target resolution, with tissue QC.

    Each patch is centred on the spot (``obsm[spatial_key]``, level-0 px), read
    from the best pyramid level and resampled with antialiasing. Patches whose
    window leaves the image are zero-padded and flagged, never shifted.

    Tissue QC (``tissue_qc="mask"``, the default): the slide's tissue is segmented
    once ([`stalign.im.tissue_mask`][stalign.im.tissue_mask]) and a patch's tissue fraction is its
    coverage by that mask, so fat and pale stroma inside the tissue count as
    tissue. Where the platform calls spots in or out of tissue
    (``obs['in_tissue']``: legacy ST ``selected``, Visium ``in_tissue``) that call
    is trusted and the image only removes patches that are really off tissue
    (coverage below ``min_mask_coverage``); elsewhere a patch needs a coverage of
    ``tissue_threshold``. ``tissue_qc="pixels"`` is the older rule: the fraction
    of saturated pixels in the patch must reach ``tissue_threshold`` (white fat
    cells and pale stroma count as background; the platform call is not used).

    Parameters
    ----------
    adata
        Spots with ``obsm['spatial']`` and ``uns['stalign']`` (image path, mpp).
    mpp
        Patch resolution (µm/px). HEST default 0.5.
    size_px
        Patch side (px). HEST default 224 (112 µm at 0.5 µm/px).
    tissue_qc
        ``"mask"`` (slide-level tissue mask) or ``"pixels"`` (per-pixel saturation).
    tissue_threshold
        Minimum tissue fraction for ``patch_in_tissue`` when no platform call is
        used (and always with ``tissue_qc="pixels"``).
    min_mask_coverage
        With ``tissue_qc="mask"`` and a trusted platform call: minimum mask
        coverage of a patch the platform calls in tissue.
    use_in_tissue
        Trust ``obs['in_tissue']`` where present (``tissue_qc="mask"`` only).
    image
        Anything [`open_image`][stalign.im.open_image] accepts; defaults to the AnnData's image.
    batch_size
        Patches read per batch.
    saturation_threshold
        ``tissue_qc="pixels"``: saturation level (0–255) above which a pixel is
        tissue; default: Otsu on the slide thumbnail.
    spatial_key
        ``obsm`` key of the spot centres.
    progress
        Show a tqdm progress bar.
    copy
        Leave ``adata`` unchanged: write the keys below into a copy and return
        ``(patches, copy)`` (scanpy's ``copy=``; the patches come first as usual).

    Returns
    -------
    np.ndarray
        ``(n_obs, size_px, size_px, 3)`` uint8 in ``obs_names`` order (with ``copy=True``
        the tuple ``(patches, adata copy)``). Also writes

        * ``adata.obs['patch_in_image']`` (bool): the whole patch is inside the image;
        * ``adata.obs['tissue_fraction']`` (float): mask coverage of the patch
          (``"mask"``) or its fraction of tissue pixels (``"pixels"``);
        * ``adata.obs['patch_in_tissue']`` (bool): in the image and on tissue by the
          rule above;
        * ``adata.uns['patches']``: ``{'mpp', 'size_px', 'image_mpp', 'tissue_qc',
          'tissue_threshold', 'min_mask_coverage', 'in_tissue_call'}`` plus
          ``'tissue_mask'`` (the mask's parameters and thresholds, ``"mask"``) or
          ``'saturation_threshold'`` (``"pixels"``).
    """
    for name, value in (
        ("tissue_threshold", tissue_threshold),
        ("min_mask_coverage", min_mask_coverage),
    ):
        if not 0.0 <= float(value) <= 1.0:
            msg = f"{name} must be a fraction in [0, 1], got {value!r}"
            raise ValueError(msg)
    _check_tissue_qc(tissue_qc, saturation_threshold)
    size_px = _check_size(size_px)
    adata = adata.copy() if copy else adata
    src = adata if image is None else image
    owns = not isinstance(src, SlideImage)
    slide = open_image(src)
    try:
        tmask, thr = None, None
        if tissue_qc == "mask":
            tmask = _slide_tissue_mask(slide)
        else:
            thr = (
                _otsu_threshold(slide)
                if saturation_threshold is None
                else float(saturation_threshold)
            )
        n = adata.n_obs
        out = np.empty((n, size_px, size_px, 3), np.uint8)
        inside = np.zeros(n, bool)
        frac = np.zeros(n, np.float32)
        for b in iter_patches(
            adata,
            image=slide,
            mpp=mpp,
            size_px=size_px,
            batch_size=batch_size,
            tissue_qc=tissue_qc,
            tissue_mask=tmask,
            saturation_threshold=thr,
            spatial_key=spatial_key,
            order="spatial",
            progress=progress,
        ):
            out[b.index], inside[b.index], frac[b.index] = b.images, b.in_image, b.tissue_fraction
        image_mpp = slide.mpp
    finally:
        if owns:
            slide.close()
    call = _in_tissue_call(adata) if (tissue_qc == "mask" and use_in_tissue) else None
    on_tissue = (
        frac >= float(tissue_threshold) if call is None else call & (frac >= min_mask_coverage)
    )
    adata.obs[K.PATCH_IN_IMAGE] = inside
    adata.obs[K.TISSUE_FRACTION] = frac
    adata.obs[K.PATCH_IN_TISSUE] = inside & on_tissue
    params: dict[str, Any] = {
        "mpp": float(mpp),
        "size_px": int(size_px),
        "image_mpp": float(image_mpp),
        "tissue_qc": tissue_qc,
        "tissue_threshold": float(tissue_threshold),
        "min_mask_coverage": float(min_mask_coverage),
        "in_tissue_call": call is not None,
    }
    if tmask is not None:
        params["tissue_mask"] = {k: v for k, v in tmask.params.items() if v is not None}
    else:
        params["saturation_threshold"] = float(thr)
    adata.uns[K.PATCHES] = params
    logger.info(
        "%d patches: %d inside the image, %d on tissue",
        n,
        int(inside.sum()),
        int(adata.obs[K.PATCH_IN_TISSUE].sum()),
    )
    return (out, adata) if copy else out


def _in_tissue_call(adata: AnnData) -> np.ndarray | None:
    """Return the platform's under-tissue call (``obs['in_tissue']``) as bool, or ``None``."""
    if K.IN_TISSUE not in adata.obs:
        return None
    return adata.obs[K.IN_TISSUE].to_numpy(bool)
