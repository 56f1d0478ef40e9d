"""An OME-Zarr multiscale image (e.g. a SpatialData ``images/<name>`` element), lazily.

Each scale is a zarr array with axes ``c, y, x`` (or ``y, x``); it is read chunk by
chunk, never as a whole, and decoded chunks are kept in a byte-bounded LRU cache so
neighbouring patches share them (as `TiledTiffLevel` does
for TIFF tiles).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ._levels import Level, ZarrLevel, to_rgb_uint8


class CachedZarrLevel(Level):
    """A ``(c, y, x)`` zarr array read by whole chunks, decoded chunks cached (LRU).

    Parameters
    ----------
    zarray
        The array (axes ``c, y, x``).
    source
        Name used in messages.
    cache_bytes
        Upper bound of the cache.
    """

    def __init__(self, zarray: Any, *, source: str, cache_bytes: int = 192 * 2**20) -> None:
        self._z = zarray
        self._source = source
        _, self.height, self.width = (int(n) for n in zarray.shape)
        _, self._ch, self._cw = (int(n) for n in zarray.chunks)
        per_chunk = max(1, self._ch * self._cw * int(zarray.shape[0]) * zarray.dtype.itemsize)
        self._capacity = max(4, cache_bytes // per_chunk)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _chunk(self, cy: int, cx: int) -> np.ndarray:
        with self._lock:
            hit = self._cache.get((cy, cx))
            if hit is not None:
                self._cache.move_to_end((cy, cx))
                return hit
        y0, x0 = cy * self._ch, cx * self._cw
        block = np.asarray(self._z[:, y0 : y0 + self._ch, x0 : x0 + self._cw])
        block = to_rgb_uint8(np.moveaxis(block, 0, -1), source=self._source)
        with self._lock:
            self._cache[(cy, cx)] = block
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return block

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Assemble the window from (cached) chunks."""
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for cy in range(y0 // self._ch, (y1 - 1) // self._ch + 1):
            for cx in range(x0 // self._cw, (x1 - 1) // self._cw + 1):
                block = self._chunk(cy, cx)
                gy0, gx0 = cy * self._ch, cx * self._cw
                sy0, sy1 = max(y0, gy0), min(y1, gy0 + block.shape[0])
                sx0, sx1 = max(x0, gx0), min(x1, gx0 + block.shape[1])
                out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = block[
                    sy0 - gy0 : sy1 - gy0, sx0 - gx0 : sx1 - gx0
                ]
        return out


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
        name = f"{path}/{ds['path']}"
        if (axes or "CYX"[-arr.ndim :]) == "CYX" and arr.shape[0] in (1, 3, 4):
            levels.append(CachedZarrLevel(arr, source=name))
        else:
            levels.append(ZarrLevel(arr, axes or "CYX"[-arr.ndim :], source=name))
    if not levels:
        msg = f"{path}: the OME-Zarr image lists no datasets"
        raise ValueError(msg)
    w0 = levels[0].width
    return levels, [w0 / lv.width for lv in levels]
