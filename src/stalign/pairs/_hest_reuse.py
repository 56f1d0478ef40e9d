"""Reuse what HEST-1k already computed: ``patches/<id>.h5`` and ``tissue_seg/``.

When a ``hest`` sample's folder holds ``patches/<id>.h5`` at the requested µm/px and
at least the requested size, the shard's patches are centre crops of those (HEST-1k
ships 0.5 µm/px; a 256 px patch cropped to 224 px is HEST-Benchmark's geometry) and
the whole-slide image is never opened. The tissue fraction of each patch comes from
``tissue_seg/`` (GeoJSON contours or mask image), else from the saturation of the
patches themselves (Otsu over all of them). Any other geometry falls back to the
WSI. The shard's ``_SUCCESS`` records which was used (``patch_source``,
``tissue_source``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import _keys as K
from ._manifest import Sample
from ._params import PairsParams

logger = logging.getLogger(__name__)

#: drop reason of a spot without a patch in the HEST file (HEST leaves out spots off tissue)
NO_HEST_PATCH = "no_hest_patch"


@dataclass
class HestPlan:
    """Where a HEST sample's patches and tissue mask come from."""

    sample_id: str
    root: Path
    geometry: Any  # im.HestPatchGeometry
    info: dict[str, Any] = field(default_factory=dict)


def _hest_root(sample: Sample) -> tuple[Path, str]:
    path = Path(sample.path)
    if path.is_file():
        return path.parent.parent, path.stem
    return path, sample.sample_id


def plan_hest_reuse(sample: Sample, params: PairsParams) -> tuple[HestPlan | None, str]:
    """Decide whether the sample's HEST patches serve ``params``; say why not otherwise.

    Returns
    -------
    tuple[HestPlan | None, str]
        ``(plan, reason)``: a plan (reason ``""``) or ``None`` with the reason the WSI is used.
    """
    from .. import im

    if sample.platform != "hest":
        return None, "not a HEST sample"
    if sample.image:
        return None, "the manifest names its own image (HEST's patches are cut from wsis/)"
    root, sid = _hest_root(sample)
    h5 = root / "patches" / f"{sid}.h5"
    if not h5.is_file():
        return None, f"no {h5.relative_to(root)}"
    try:
        geometry = im.hest_patch_geometry(h5)
    except (OSError, ValueError) as e:  # gone since the check above, or not HEST's layout
        logger.warning("sample %s: %s; using the WSI", sample.sample_id, e)
        return None, str(e)
    why = geometry.serves(mpp=params.mpp, size_px=params.size_px)
    if why:
        logger.info("sample %s: HEST patches not reused (%s)", sample.sample_id, why)
        return None, why
    return HestPlan(sid, root, geometry), ""


def _slide_size(adata: Any, xy: np.ndarray, side0: float) -> tuple[int, int]:
    """Level-0 WSI size from HEST's metadata (``fullres_px_*``), else the spots' extent."""
    meta = adata.uns.get(K.SPATIAL, {}).get(adata.uns[K.STALIGN][K.LIBRARY_ID], {})
    hest = meta.get(K.METADATA, {}).get("hest", {})
    try:
        return int(hest["fullres_px_width"]), int(hest["fullres_px_height"])
    except (KeyError, TypeError, ValueError):
        hi = xy.max(axis=0) + side0
        return int(np.ceil(hi[0])), int(np.ceil(hi[1]))


class HestPatchSource:
    """Batches of HEST patches in obs order, with tissue QC, and a mosaic thumbnail."""

    def __init__(self, plan: HestPlan, adata: Any, params: PairsParams, mpp0: float) -> None:
        from .. import im

        self.plan = plan
        self.params = params
        self.barcodes = np.asarray(adata.obs_names.astype(str))
        self.xy = np.asarray(adata.obsm[K.SPATIAL], dtype=np.float64)[:, :2]
        self.side0 = params.size_px * params.mpp / mpp0  # kept patch side, level-0 px
        im.check_hest_coords(plan.geometry, self.barcodes, self.xy, mpp0=mpp0)
        self.width, self.height = _slide_size(adata, self.xy, self.side0)
        self.tissue = im.read_hest_tissue(
            plan.root / "tissue_seg",
            plan.sample_id,
            width=self.width,
            height=self.height,
            mpp=mpp0,
        )
        self.reader = im.HestPatchReader(plan.geometry, params.size_px)
        self.rows = self.reader.rows(self.barcodes)
        self._otsu: float | None = None
        self._mosaic: np.ndarray | None = None
        self._scale = 1.0
        plan.info = {
            "patch_source": "hest_patches",
            "hest_patches": str(plan.geometry.path),
            "hest_patch_geometry": {
                "size_px": plan.geometry.size_px,
                "mpp": plan.geometry.mpp,
                "mpp_source": plan.geometry.mpp_source,
                "centre_crop_px": params.size_px,
            },
            "tissue_source": (
                f"hest_tissue_seg:{Path(self.tissue.params['source']).name}"
                if self.tissue is not None
                else "patch_saturation_otsu"
            ),
            "n_without_hest_patch": int((self.rows < 0).sum()),
        }

    @property
    def info(self) -> dict[str, Any]:
        """What was reused (recorded in the shard's ``_SUCCESS``)."""
        return self.plan.info

    def missing(self) -> np.ndarray:
        """Bool per spot (obs order): no patch in the HEST file."""
        return self.rows < 0

    def _saturation_threshold(self) -> float:
        """Otsu on the saturation of a sample of the patches (the slide is not read)."""
        from skimage.filters import threshold_otsu

        from ..im import saturation

        have = np.flatnonzero(self.rows >= 0)
        pick = have[np.linspace(0, len(have) - 1, min(len(have), 256)).astype(int)]
        s = saturation(self.reader.read(self.rows[pick])[:, ::4, ::4]).ravel()
        if float(s.max()) - float(s.min()) < 1.0:
            return max(float(s.max()), 8.0)
        return max(float(threshold_otsu(s, nbins=256)), 8.0)

    def batches(self, batch_size: int = 256) -> Iterator[Any]:
        """Yield [`stalign.im.PatchBatch`][stalign.im.PatchBatch] in obs order."""
        from ..im import PatchBatch, tissue_fraction

        n = len(self.barcodes)
        half = self.side0 / 2.0
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(start + batch_size, n))
            rows = self.rows[idx]
            images = self.reader.read(rows)
            topleft = self.xy[idx] - half
            inside = (
                (topleft[:, 0] >= 0)
                & (topleft[:, 1] >= 0)
                & (topleft[:, 0] + self.side0 <= self.width)
                & (topleft[:, 1] + self.side0 <= self.height)
            )
            if self.tissue is not None:
                frac = self.tissue.coverage(self.xy[idx], self.side0)  # centres
            else:
                if self._otsu is None:
                    self._otsu = self._saturation_threshold()
                frac = tissue_fraction(images, self._otsu)
                frac[rows < 0] = 0.0
            self._paste(images, topleft, rows >= 0)
            yield PatchBatch(
                start=start,
                index=idx,
                barcodes=self.barcodes[idx],
                images=images,
                coords=self.xy[idx],
                topleft=topleft,
                in_image=inside | (rows >= 0),
                tissue_fraction=frac.astype(np.float32),
            )

    def _paste(self, images: np.ndarray, topleft: np.ndarray, have: np.ndarray) -> None:
        """Paint the patches, down-scaled, onto the mosaic thumbnail."""
        from PIL import Image

        if self._mosaic is None:
            self._scale = max(1.0, max(self.width, self.height) / self.params.thumbnail_px)
            tw = max(1, round(self.width / self._scale))
            th = max(1, round(self.height / self._scale))
            self._mosaic = np.full((th, tw, 3), 255, np.uint8)
        side = max(1, round(self.side0 / self._scale))
        th, tw = self._mosaic.shape[:2]
        for img, (x, y) in zip(images[have], topleft[have], strict=True):
            x0, y0 = round(x / self._scale), round(y / self._scale)
            small = np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BOX))
            sx0, sy0 = max(x0, 0), max(y0, 0)
            sx1, sy1 = min(x0 + side, tw), min(y0 + side, th)
            if sx1 > sx0 and sy1 > sy0:
                self._mosaic[sy0:sy1, sx0:sx1] = small[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]

    def thumbnail(self) -> tuple[np.ndarray, dict[str, float]]:
        """Return the mosaic of the patches (no WSI read) and its level-0 transform."""
        if self._mosaic is None:
            self._paste(np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0, 2)), np.zeros(0, bool))
        assert self._mosaic is not None
        return self._mosaic, {"scale": self._scale, "width": self.width, "height": self.height}

    def close(self) -> None:
        """Close the patch file."""
        self.reader.close()
