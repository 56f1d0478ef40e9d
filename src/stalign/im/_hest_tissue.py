"""HEST-1k tissue segmentation (``tissue_seg/``) as a mask for the patch QC.

HEST ships, per sample, ``<id>_contours.geojson`` (tissue polygons in level-0 px of
the WSI; holes as interior rings, or — older files — as features classified
``hole``) and ``<id>_mask.jpg`` (a down-scaled greyscale mask, white = tissue).
``<id>_mask.pkl`` is never read: unpickling a downloaded file can run any code.
Either file becomes the same [`TissueMask`][stalign.im.TissueMask] that
[`tissue_mask`][stalign.im.tissue_mask] segments from a slide, so a patch's tissue fraction
is [`coverage`][stalign.im.TissueMask.coverage] whichever made the mask.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from ._tissue import TissueMask

logger = logging.getLogger(__name__)

#: longest side (px) of the raster the contours are drawn into
_RASTER_MAX_PX = 4096


def _rings(geometry: dict) -> list[list[list[list[float]]]]:
    """Polygons (each a list of rings) of a GeoJSON Polygon / MultiPolygon geometry."""
    kind = geometry.get("type")
    coords = geometry.get("coordinates") or []
    if kind == "Polygon":
        return [coords]
    if kind == "MultiPolygon":
        return list(coords)
    return []


def _is_hole(feature: dict) -> bool:
    props = feature.get("properties") or {}
    return "hole" in json.dumps(props).lower()


def _hest_mask(
    mask: np.ndarray, path: Path, kind: str, width: int, height: int, mpp: float | None
) -> TissueMask:
    """Wrap a raster covering the whole ``width`` × ``height`` px slide as a `TissueMask`."""
    h, w = mask.shape
    scale = (width / w, height / h)  # level-0 px per mask px along (x, y)
    return TissueMask(
        mask=mask,
        scale=scale,
        width=width,
        height=height,
        mpp=None if mpp is None else float(mpp * math.sqrt(scale[0] * scale[1])),
        params={"source": str(path), "kind": kind},
    )


def _contours_mask(path: Path, width: int, height: int, mpp: float | None) -> TissueMask:
    from PIL import Image, ImageDraw

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = f"{path}: expected GeoJSON tissue contours, cannot parse it ({e})"
        raise ValueError(msg) from e
    features = data.get("features") if isinstance(data, dict) else None
    if not isinstance(features, list):
        msg = f"{path}: expected a GeoJSON FeatureCollection with 'features'"
        raise ValueError(msg)
    scale = min(1.0, _RASTER_MAX_PX / max(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    sx, sy = w / width, h / height  # raster px per level-0 px, exactly, per axis
    img = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(img)
    n_polygons = 0
    # tissue first, then the holes of older files (their own features) on top
    for holes_pass in (False, True):
        for feat in features:
            if _is_hole(feat) != holes_pass:
                continue
            for polygon in _rings(feat.get("geometry") or {}):
                for k, ring in enumerate(polygon):
                    pts = [(float(x) * sx, float(y) * sy) for x, y, *_ in ring]
                    if len(pts) >= 3:
                        fill = 0 if (holes_pass or k > 0) else 1
                        draw.polygon(pts, fill=fill)
                        n_polygons += not holes_pass and k == 0
    if n_polygons == 0:
        msg = f"{path}: expected tissue polygons, found none among {len(features)} features"
        raise ValueError(msg)
    return _hest_mask(np.asarray(img, dtype=bool), path, "hest_contours", width, height, mpp)


def _image_mask(path: Path, width: int, height: int, mpp: float | None) -> TissueMask:
    from PIL import Image

    with Image.open(path) as im:
        grey = np.asarray(im.convert("L"))
    h, w = grey.shape
    scale_x, scale_y = w / width, h / height
    if abs(scale_x - scale_y) > 0.02 * max(scale_x, scale_y):
        msg = (
            f"{path}: a {w}×{h} px mask cannot be a scaled copy of the {width}×{height} px "
            "slide (different aspect ratio)"
        )
        raise ValueError(msg)
    return _hest_mask(grey > 127, path, "hest_mask_image", width, height, mpp)


def read_hest_tissue(
    tissue_seg: str | os.PathLike,
    sample_id: str,
    *,
    width: int,
    height: int,
    mpp: float | None = None,
) -> TissueMask | None:
    """Read a HEST sample's tissue segmentation, or ``None`` when it has none.

    ``<id>_contours.geojson`` is preferred, then ``<id>_mask.jpg`` / ``.png``; the
    ``.pkl`` contours are never loaded.

    Parameters
    ----------
    tissue_seg
        HEST's ``tissue_seg/`` folder.
    sample_id
        The sample id.
    width, height
        Level-0 size of the slide (px), e.g. HEST's ``fullres_px_width`` /
        ``fullres_px_height``.
    mpp
        Level-0 µm/px of the slide, if known (sets
        [`TissueMask.mpp`][stalign.im.TissueMask.mpp] and so its area in mm²).

    Returns
    -------
    TissueMask or None
        The mask over the whole slide (``params['source']`` is the file read,
        ``params['kind']`` ``"hest_contours"`` or ``"hest_mask_image"``); a
        patch's tissue fraction is ``mask.coverage(centres, side_px)``.

    Raises
    ------
    ValueError
        A file exists but is not a usable mask / GeoJSON.
    """
    folder = Path(tissue_seg)
    if not folder.is_dir():
        return None
    contours = sorted(folder.glob(f"*{sample_id}_contours.geojson"))
    if contours:
        return _contours_mask(contours[0], width, height, mpp)
    for ext in ("jpg", "jpeg", "png"):
        masks = sorted(folder.glob(f"*{sample_id}_mask.{ext}"))
        if masks:
            return _image_mask(masks[0], width, height, mpp)
    return None
