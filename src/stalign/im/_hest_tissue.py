"""HEST-1k tissue segmentation (``tissue_seg/``) as a mask for the patch QC.

HEST ships, per sample, ``<id>_contours.geojson`` (tissue polygons in level-0 px of
the WSI; holes as interior rings, or — older files — as features classified
``hole``) and ``<id>_mask.jpg`` (a down-scaled greyscale mask, white = tissue).
``<id>_mask.pkl`` is never read: unpickling a downloaded file can run any code.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: longest side (px) of the raster the contours are drawn into
_RASTER_MAX_PX = 4096


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue raster over the whole slide.

    Attributes
    ----------
    mask
        ``(h, w)`` bool, True = tissue.
    scale
        Raster px per level-0 px (≤ 1).
    source
        File it was made from.
    """

    mask: np.ndarray
    scale: float
    source: str

    @cached_property
    def _integral(self) -> np.ndarray:
        """Summed-area table of the mask (computed once)."""
        h, w = self.mask.shape
        integral = np.zeros((h + 1, w + 1), np.int64)
        integral[1:, 1:] = self.mask.cumsum(0).cumsum(1)
        return integral

    def fraction(self, topleft: np.ndarray, side0: float) -> np.ndarray:
        """Tissue fraction of square windows (outside the slide counts as background).

        Parameters
        ----------
        topleft
            ``(n, 2)`` level-0 ``(x, y)`` of each window's top-left corner (px).
        side0
            Window side in level-0 px.

        Returns
        -------
        ``(n,)`` float32 in ``[0, 1]``.
        """
        h, w = self.mask.shape
        integral = self._integral
        tl = np.asarray(topleft, dtype=float) * self.scale
        side = max(side0 * self.scale, 1.0)
        x0 = np.clip(np.floor(tl[:, 0]).astype(np.int64), 0, w)
        y0 = np.clip(np.floor(tl[:, 1]).astype(np.int64), 0, h)
        x1 = np.clip(np.floor(tl[:, 0] + side).astype(np.int64), 0, w)
        y1 = np.clip(np.floor(tl[:, 1] + side).astype(np.int64), 0, h)
        inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        area = max(1, round(side)) ** 2
        return np.clip(inside / area, 0.0, 1.0).astype(np.float32)


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


def _contours_mask(path: Path, width: int, height: int) -> TissueMask:
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
                    pts = [(float(x) * scale, float(y) * scale) for x, y, *_ in ring]
                    if len(pts) >= 3:
                        fill = 0 if (holes_pass or k > 0) else 1
                        draw.polygon(pts, fill=fill)
                        n_polygons += not holes_pass and k == 0
    if n_polygons == 0:
        msg = f"{path}: expected tissue polygons, found none among {len(features)} features"
        raise ValueError(msg)
    return TissueMask(np.asarray(img, dtype=bool), scale, str(path))


def _image_mask(path: Path, width: int, height: int) -> TissueMask:
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
    return TissueMask(grey > 127, float(scale_x), str(path))


def read_hest_tissue(
    tissue_seg: str | os.PathLike, sample_id: str, *, width: int, height: int
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
        return _contours_mask(contours[0], width, height)
    for ext in ("jpg", "jpeg", "png"):
        masks = sorted(folder.glob(f"*{sample_id}_mask.{ext}"))
        if masks:
            return _image_mask(masks[0], width, height)
    return None
