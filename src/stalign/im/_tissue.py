"""Tissue detection.

Two rules decide how much of a patch is tissue:

* **slide-level mask** ([`tissue_mask`][stalign.im.tissue_mask], the default): tissue is segmented
  once per slide on a low-resolution thumbnail (saturation with a hysteresis
  threshold, morphological closing, hole filling, small-object removal, as in
  CLAM/HEST), and a patch's tissue fraction is its coverage by that mask
  (`TissueMask.coverage`). Fat and pale stroma *inside* the tissue
  outline count as tissue; glass, pen marks and debris do not.
* **per-pixel saturation** (`tissue_threshold` + `tissue_fraction`):
  the fraction of coloured pixels in the patch. White fat-cell interiors and
  pale stroma count as background under this rule.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ._slide import SlideImage, _check_positive

logger = logging.getLogger(__name__)

#: saturation threshold floor (0–255): below it nothing counts as stain even when
#: Otsu splits a nearly uniform background
_MIN_THRESHOLD = 8.0
#: minimum saturation (0–255) of certain tissue above the glass level
_MIN_CONTRAST = 12.0
#: pixels whose brightest channel is below this (0–255) are ink, folds or padding
_DARK_VALUE = 50.0
#: the mask is computed from a thumbnail up to this many times finer (block-reduced)
_FINE_FACTOR = 8
#: longest side (px) of that finer thumbnail, bounding memory on gigapixel slides
_MAX_FINE_SIDE = 6144
#: saturation (0–255) above which a green-dominant pixel is taken for marker ink
_PEN_SATURATION = 40.0

__all__ = [
    "TissueMask",
    "saturation",
    "tissue_fraction",
    "tissue_mask",
    "tissue_mask_settings",
    "tissue_threshold",
]


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of uint8 RGB pixels, scaled to ``0–255`` (float32).

    ``(max - min) / max`` per pixel; black pixels (zero padding) have saturation 0.
    """
    rgb = np.asarray(rgb)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = np.maximum(np.maximum(r, g), b).astype(np.float32)
    mn = np.minimum(np.minimum(r, g), b).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(mx > 0, (mx - mn) / mx, 0.0)
    return (s * 255.0).astype(np.float32)


def tissue_threshold(image: SlideImage, *, thumbnail_size: int = 1024) -> float:
    """Otsu threshold of HSV saturation (0–255) on a low-resolution thumbnail.

    Computed once per slide and then applied to every patch with
    [`tissue_fraction`][stalign.im.tissue_fraction] (the per-pixel rule, ``tissue_qc="pixels"``).

    Parameters
    ----------
    image
        The slide.
    thumbnail_size
        Longest side of the thumbnail used (px).

    Returns
    -------
    float
        Saturation threshold in ``[0, 255]``; pixels above it are tissue.
    """
    thumb = image.get_thumbnail(thumbnail_size)
    return _otsu_saturation(saturation(thumb), str(image.source))


def _otsu_saturation(s: np.ndarray, source: str) -> float:
    from skimage.filters import threshold_otsu

    flat = s.ravel()
    if float(flat.max()) - float(flat.min()) < 1.0:
        logger.warning(
            "%s: the thumbnail has uniform saturation; tissue detection is unreliable", source
        )
        return max(float(flat.max()), _MIN_THRESHOLD)
    return max(float(threshold_otsu(flat, nbins=256)), _MIN_THRESHOLD)


def tissue_fraction(
    patches: np.ndarray, threshold: float, *, stride: int | None = None
) -> np.ndarray:
    """Fraction of tissue pixels (saturation > ``threshold``) in each patch.

    Parameters
    ----------
    patches
        ``(n, h, w, 3)`` or ``(h, w, 3)`` uint8 patches.
    threshold
        Saturation threshold (0–255), e.g. from [`tissue_threshold`][stalign.im.tissue_threshold].
    stride
        Evaluate every ``stride``-th pixel in each direction (speed; 1 = all).
        Default: ``max(1, side // 64)``, i.e. at least a 64×64 sample grid.

    Returns
    -------
    np.ndarray
        ``(n,)`` float32 in ``[0, 1]`` (a scalar array for a single patch).
    """
    patches = np.asarray(patches)
    if stride is None:
        stride = max(1, min(patches.shape[-3:-1]) // 64)
    sub = patches[..., ::stride, ::stride, :]
    r, g, b = sub[..., 0], sub[..., 1], sub[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    # saturation * 255 > threshold  <=>  (max - min) * 255 > threshold * max  (max > 0);
    # integer/float32 arithmetic on channel planes: ~20× faster than saturation()
    spread = (mx - mn).astype(np.float32)
    spread *= 255.0
    tissue = spread > np.float32(threshold) * mx
    return tissue.mean(axis=(-2, -1), dtype=np.float32)


@dataclass(frozen=True)
class TissueMask:
    """A slide-level tissue mask on a low-resolution grid.

    Made by [`tissue_mask`][stalign.im.tissue_mask] (segmented from the slide's thumbnail) or by
    [`read_hest_tissue`][stalign.im.read_hest_tissue] (HEST-1k's ``tissue_seg/`` contours or
    mask image); both give a patch's tissue fraction through `coverage`.

    Attributes
    ----------
    mask
        ``(h, w)`` bool, ``True`` on tissue; mask pixel ``(i, j)`` covers level-0
        pixels ``[j * scale[0], (j + 1) * scale[0])`` × ``[i * scale[1], (i + 1) * scale[1])``.
    scale
        Level-0 px per mask px along ``(x, y)``.
    width, height
        Level-0 size of the slide (px).
    mpp
        µm per mask pixel; ``None`` when the slide's µm/px is not known (a HEST
        mask read without ``mpp=``).
    params
        How the mask was made. From [`tissue_mask`][stalign.im.tissue_mask]: ``mask_mpp`` (µm/px),
        ``closing_um``, ``min_object_um2``, ``max_hole_um2``, ``hysteresis``, and
        the saturation thresholds found on this slide (``saturation_high``,
        ``saturation_low``, ``glass_saturation``, 0–255). From
        [`read_hest_tissue`][stalign.im.read_hest_tissue]: ``source`` (the file read) and
        ``kind`` (``"hest_contours"`` or ``"hest_mask_image"``).
    """

    mask: np.ndarray
    scale: tuple[float, float]
    width: int
    height: int
    mpp: float | None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def tissue_area_mm2(self) -> float:
        """Tissue area (mm²).

        Raises
        ------
        ValueError
            The mask's µm/px is unknown.
        """
        if self.mpp is None:
            msg = (
                f"tissue mask from {self.params.get('source', 'an unknown source')}: its "
                "µm/px is unknown, so its area in mm² is too; pass mpp= when reading it"
            )
            raise ValueError(msg)
        return float(self.mask.sum()) * self.mpp * self.mpp / 1e6

    def coverage(self, coords: np.ndarray, window_px: float) -> np.ndarray:
        """Fraction of each square window covered by the mask.

        Exact for the piecewise-constant mask (area-weighted at the window's
        fractional borders); the part of a window outside the image counts as
        not tissue.

        Parameters
        ----------
        coords
            ``(n, 2)`` level-0 ``(x, y)`` window centres (px).
        window_px
            Window side in level-0 px (a patch of ``size_px`` px at ``mpp`` µm/px on
            a slide of ``mpp0`` µm/px covers ``size_px * mpp / mpp0`` px).

        Returns
        -------
        np.ndarray
            ``(n,)`` float32 in ``[0, 1]``.
        """
        from scipy.ndimage import map_coordinates

        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        window_px = _check_positive(window_px, "window_px")
        h, w = self.mask.shape
        sat = self._summed_area
        half = window_px / 2.0
        x0 = np.clip((coords[:, 0] - half) / self.scale[0], 0, w)
        x1 = np.clip((coords[:, 0] + half) / self.scale[0], 0, w)
        y0 = np.clip((coords[:, 1] - half) / self.scale[1], 0, h)
        y1 = np.clip((coords[:, 1] + half) / self.scale[1], 0, h)

        # the SAT is bilinear inside each mask pixel, so linear interpolation is exact
        def area_to(y: np.ndarray, x: np.ndarray) -> np.ndarray:
            return map_coordinates(sat, [y, x], order=1, mode="nearest")

        inside = area_to(y1, x1) - area_to(y0, x1) - area_to(y1, x0) + area_to(y0, x0)
        window_area = (window_px / self.scale[0]) * (window_px / self.scale[1])
        frac = np.clip(inside / window_area, 0.0, 1.0)
        frac[~np.isfinite(coords).all(axis=1)] = 0.0
        return frac.astype(np.float32)

    @cached_property
    def _summed_area(self) -> np.ndarray:
        """``(h + 1, w + 1)`` summed-area table of the mask (computed once)."""
        h, w = self.mask.shape
        sat = np.zeros((h + 1, w + 1), np.float64)
        sat[1:, 1:] = self.mask.cumsum(0, dtype=np.float64).cumsum(1)
        return sat

    def resized(self, shape: tuple[int, int]) -> np.ndarray:
        """Return the mask's coverage on another ``(h, w)`` grid over the slide (float, 0–1).

        Used to draw the mask outline on a thumbnail of a different size.
        """
        from skimage.transform import resize

        return resize(self.mask.astype(np.float32), shape, order=1, anti_aliasing=True)


def tissue_mask_settings() -> dict[str, Any]:
    """Every setting `tissue_mask` runs with by default (µm, µm², 0–255 units).

    Its keyword defaults and the fixed thresholds of this module. A pairs store
    fingerprints them (``PairsParams.to_dict``), so shards masked under another rule
    are rebuilt rather than reused.
    """
    return {
        **(tissue_mask.__kwdefaults__ or {}),
        "min_threshold": _MIN_THRESHOLD,
        "min_contrast": _MIN_CONTRAST,
        "dark_value": _DARK_VALUE,
        "fine_factor": _FINE_FACTOR,
        "max_fine_side": _MAX_FINE_SIDE,
        "pen_saturation": _PEN_SATURATION,
    }


def tissue_mask(
    image: SlideImage,
    *,
    mask_mpp: float = 8.0,
    max_side: int = 4096,
    hysteresis: float = 0.25,
    max_growth_um: float = 100.0,
    closing_um: float = 50.0,
    max_hole_um2: float | None = 4e6,
    min_object_um2: float = 10_000.0,
) -> TissueMask:
    """Segment the tissue of a slide on a low-resolution thumbnail.

    The thumbnail is read from the lazy image's smallest sufficient pyramid level
    (`SlideImage.get_thumbnail`; level 0 of a pyramid is never loaded
    whole). Then:

    1. HSV saturation, read up to 8× finer than the mask and reduced per block
       by its ``k``-th largest value (so thin membranes survive), lightly
       smoothed (Gaussian, σ = 0.5 mask px);
    2. hysteresis threshold: pixels above the Otsu threshold (and at least 12
       saturation units above the glass), in pieces of at least
       ``min_object_um2`` after closing, are certain tissue; fainter pixels (above the
       glass level plus ``hysteresis`` of the way to Otsu) are added where they
       connect to certain tissue, up to ``max_growth_um`` from it. This keeps
       pale stroma and the membranes around fat cells at the tissue's edge but
       not faint smears spreading over the glass. Very dark pixels (ink,
       folds, black padding) and green marker ink are never tissue seeds;
    3. morphological closing with a disk of radius ``closing_um``;
    4. hole filling (holes up to ``max_hole_um2``: fat lobules, vessel lumens,
       tears);
    5. removal of tissue pieces smaller than ``min_object_um2`` (dust, debris).

    Parameters
    ----------
    image
        The slide; its level-0 µm/px must be known.
    mask_mpp
        Target resolution of the mask (µm/px). The thumbnail is never finer
        than the image itself.
    max_side
        Longest side of the thumbnail (px), bounding memory on large slides.
    hysteresis
        Position of the low threshold between the glass saturation level (0)
        and the Otsu threshold (1).
    max_growth_um
        How far (µm) faint pixels may extend the certain tissue.
    closing_um
        Radius of the closing disk (µm): gaps up to about twice this wide are
        closed.
    max_hole_um2
        Holes inside the tissue up to this area (µm²) are filled; ``None`` fills
        every hole. Larger enclosed regions (e.g. glass inside a ring of tissue)
        stay background.
    min_object_um2
        Tissue pieces smaller than this area (µm²) are removed.

    Returns
    -------
    TissueMask
        The mask, its geometry and the parameters used.

    Raises
    ------
    ValueError
        The image's µm/px is unknown, or a parameter is out of range.
    """
    if image.mpp is None:
        msg = (
            f"{image.source}: the image resolution (µm/px) is unknown; open it with "
            "open_image(path, mpp=...) to build a tissue mask"
        )
        raise ValueError(msg)
    opts = _mask_options(
        mask_mpp=mask_mpp,
        max_side=max_side,
        hysteresis=hysteresis,
        max_growth_um=max_growth_um,
        closing_um=closing_um,
        max_hole_um2=max_hole_um2,
        min_object_um2=min_object_um2,
    )
    longest0 = max(image.width, image.height)
    side = min(opts["max_side"], max(64, math.ceil(longest0 * image.mpp / opts["mask_mpp"])))
    s, ink, block = _stain_map(image, side)
    scale = (block[0] * image.width / block[2], block[1] * image.height / block[3])
    mpp = float(image.mpp * math.sqrt(scale[0] * scale[1]))
    mask, found = _segment(s, ink, mpp, opts)
    if not mask.any():
        logger.warning("%s: the tissue mask is empty (no stained tissue found)", image.source)
    params = {**opts, "mask_mpp": round(mpp, 6), **{k: round(v, 4) for k, v in found.items()}}
    return TissueMask(
        mask=mask, scale=scale, width=image.width, height=image.height, mpp=mpp, params=params
    )


def _mask_options(**opts: Any) -> dict[str, Any]:
    """Validate the parameters of `tissue_mask` (one clear error per bad value)."""
    out: dict[str, Any] = {"mask_mpp": _check_positive(opts["mask_mpp"], "mask_mpp")}
    if int(opts["max_side"]) != opts["max_side"] or int(opts["max_side"]) < 64:
        msg = f"max_side must be an integer of at least 64 px, got {opts['max_side']!r}"
        raise ValueError(msg)
    out["max_side"] = int(opts["max_side"])
    if not 0.0 <= float(opts["hysteresis"]) <= 1.0:
        msg = f"hysteresis must be in [0, 1], got {opts['hysteresis']!r}"
        raise ValueError(msg)
    out["hysteresis"] = float(opts["hysteresis"])
    for name in ("max_growth_um", "closing_um", "max_hole_um2", "min_object_um2"):
        value = opts[name]
        if value is None and name == "max_hole_um2":
            out[name] = None
            continue
        try:
            ok = float(value) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            msg = f"{name} must be a number >= 0, got {value!r}"
            raise ValueError(msg)
        out[name] = float(value)
    return out


def _ink_or_dark(rgb: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Pixels that are never tissue seeds: very dark, or saturated green marker ink.

    Green ink is a saturated pixel whose brightest channel is green (hue 60–180°);
    eosin and haematoxylin are pink to purple (red or blue brightest).
    """
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = np.maximum(np.maximum(r, g), b)
    green = (g >= r) & (g >= b) & (s > _PEN_SATURATION)
    return (value < _DARK_VALUE) | green


def _stain_map(image: SlideImage, side: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Saturation and ink maps on a grid of longest side about ``side`` px.

    Read at up to `_FINE_FACTOR` times finer than the grid (bounded by
    `_MAX_FINE_SIDE`) and reduced per block by the ``k``-th largest value of
    the ``k × k`` block: a one-pixel membrane crossing the block survives, where a
    box average (a plain thumbnail) would dilute it into the white of fat cells.

    Returns
    -------
    saturation, ink, (k_x, k_y, fine_width, fine_height)
        ``(h, w)`` float32 saturation (0–255) with ink set to 0, ``(h, w)`` bool ink,
        and the block geometry (mask px = ``k`` fine px; the fine thumbnail size).
    """
    fine = image.get_thumbnail(min(_MAX_FINE_SIDE, side * _FINE_FACTOR))
    fh, fw = fine.shape[:2]
    k = max(1, round(max(fh, fw) / side))
    fine = np.pad(fine, ((0, -fh % k), (0, -fw % k), (0, 0)), mode="edge")
    h, w = fine.shape[0] // k, fine.shape[1] // k
    sat = np.empty((h, w), np.float32)
    ink = np.empty((h, w), bool)
    step = max(1, 256 // k)  # mask rows per strip: bounded temporary memory
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        sat[r0:r1], ink[r0:r1] = _reduce_blocks(fine[r0 * k : r1 * k], k)
    return sat, ink, (k, k, fw, fh)


def _reduce_blocks(rgb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per ``k × k`` block: the ``k``-th largest saturation (ink as 0) and majority ink."""
    s = saturation(rgb)
    ink = _ink_or_dark(rgb, s)
    s[ink] = 0.0  # so that ink does not colour its surroundings
    if k == 1:
        return s, ink
    h, w = s.shape[0] // k, s.shape[1] // k
    blocks = s.reshape(h, k, w, k).transpose(0, 2, 1, 3).reshape(h, w, k * k)
    top = np.partition(blocks, k * k - k, axis=-1)[..., k * k - k]
    return top, ink.reshape(h, k, w, k).mean(axis=(1, 3)) >= 0.5


def _segment(
    s: np.ndarray, ink: np.ndarray, mpp: float, opts: dict[str, Any]
) -> tuple[np.ndarray, dict[str, float]]:
    """Run the segmentation steps of [`tissue_mask`][stalign.im.tissue_mask] on a saturation map.

    ``s`` (0–255, ink set to 0) and ``ink`` come from `_stain_map`; ``mpp`` is
    their µm/px; ``opts`` the validated [`tissue_mask`][stalign.im.tissue_mask] options.
    """
    from scipy import ndimage as ndi

    px_area = mpp * mpp
    s = ndi.gaussian_filter(s, sigma=0.5, mode="nearest")
    stain = s[~ink] if (~ink).any() else s.ravel()  # ink must not move the thresholds
    otsu = _otsu_saturation(stain, "thumbnail")
    below = stain[stain < otsu]
    glass = float(np.median(below)) if below.size else 0.0
    # on blank glass Otsu splits the noise: stain must stand out from the glass
    high = max(otsu, glass + _MIN_CONTRAST)
    low = glass + opts["hysteresis"] * (high - glass)
    # certain tissue: above Otsu, closed (sparse nuclei of pale tissue join up), in
    # pieces large enough not to be dust on the glass
    seeds = _close(s > high, opts["closing_um"] / mpp) & (s > low)
    seeds = _remove_small(seeds, opts["min_object_um2"] / px_area)
    mask = _grow(seeds, s > low, opts["max_growth_um"] / mpp)
    mask = _close(mask, opts["closing_um"] / mpp)
    max_hole = opts["max_hole_um2"]
    mask = _fill_holes(mask, None if max_hole is None else max_hole / px_area)
    mask = _remove_small(mask, opts["min_object_um2"] / px_area)
    return mask, {"saturation_high": high, "saturation_low": low, "glass_saturation": glass}


def _grow(seeds: np.ndarray, faint: np.ndarray, max_px: float) -> np.ndarray:
    """Faint pixels connected to a seed through faint pixels, at most ``max_px`` px from one."""
    from scipy import ndimage as ndi

    if not seeds.any():
        return seeds
    near = ndi.distance_transform_edt(~seeds) <= max_px
    labels, _ = ndi.label((faint & near) | seeds, structure=np.ones((3, 3), bool))
    touched = np.unique(labels[seeds])
    keep = np.zeros(labels.max() + 1, bool)
    keep[touched] = True
    keep[0] = False
    return keep[labels]


def _close(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Binary closing with a disk of ``radius_px`` (Euclidean distance transforms: O(n))."""
    from scipy import ndimage as ndi

    if radius_px < 0.5 or not mask.any():
        return mask
    pad = math.ceil(radius_px) + 1  # so that tissue touching the border is not eroded
    padded = np.pad(mask, pad, mode="edge")
    dilated = ndi.distance_transform_edt(~padded) <= radius_px
    closed = ndi.distance_transform_edt(dilated) > radius_px
    return closed[pad:-pad, pad:-pad] | mask


def _fill_holes(mask: np.ndarray, max_hole_px: float | None) -> np.ndarray:
    """Fill background regions enclosed by tissue (up to ``max_hole_px`` px in area)."""
    from scipy import ndimage as ndi

    filled = ndi.binary_fill_holes(mask)
    if max_hole_px is None:
        return filled
    holes, n = ndi.label(filled & ~mask)
    if n == 0:
        return mask
    sizes = np.bincount(holes.ravel())
    small = sizes <= max_hole_px
    small[0] = False
    return mask | small[holes]


def _remove_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Drop connected tissue pieces (8-connectivity) smaller than ``min_px`` px."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]
