"""An OME-Zarr multiscale image (e.g. a SpatialData ``images/<name>`` element), lazily.

Each scale is a zarr array with axes ``c, y, x`` (or ``y, x``); it is read window by
window through :class:`~stalign.im._levels.ZarrLevel`, never as a whole.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._levels import Level, ZarrLevel


def is_ome_zarr_image(path: Path) -> bool:
    """Whether ``path`` is a zarr group whose attributes describe a multiscale image."""
    return path.is_dir() and bool(_multiscales(path))


def _multiscales(path: Path) -> list[dict]:
    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        meta = path / name
        if meta.is_file():
            try:
                attrs = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                return []
            attrs = attrs.get(key, {}) if key else attrs
            attrs = attrs.get("ome", attrs)
            return list(attrs.get("multiscales") or [])
    return []


def ome_zarr_levels(path: Path) -> tuple[list[Level], list[float]]:
    """Open the scales of an OME-Zarr image as levels; return them and their downsamples.

    Raises
    ------
    ValueError
        ``path`` is not a multiscale image, or a scale lacks ``y``/``x`` axes.
    """
    import zarr

    scales = _multiscales(path)
    if not scales:
        msg = f"{path}: expected an OME-Zarr multiscale image (attributes 'multiscales')"
        raise ValueError(msg)
    first = scales[0]
    axes = "".join(
        (a["name"] if isinstance(a, dict) else str(a))[0].upper() for a in first.get("axes", [])
    )
    levels: list[Level] = []
    for ds in first.get("datasets", []):
        arr = zarr.open_array(str(path / ds["path"]), mode="r")
        levels.append(ZarrLevel(arr, axes or "CYX"[-arr.ndim :], source=f"{path}/{ds['path']}"))
    if not levels:
        msg = f"{path}: the OME-Zarr image lists no datasets"
        raise ValueError(msg)
    w0 = levels[0].width
    return levels, [w0 / lv.width for lv in levels]
