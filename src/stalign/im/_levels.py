"""Pixel sources for one pyramid level: in-memory array, tiled TIFF, zarr, OpenSlide.

Every level reader answers ``read(x0, y0, x1, y1)`` for a window that lies inside the
level (level pixels, half-open) with an ``(y1 - y0, x1 - x0, 3)`` uint8 array.
Clipping, zero padding and resampling live in [`stalign.im._slide`][stalign.im].
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Executor
from typing import Any

import numpy as np

from ..io import to_rgb_uint8  # the one RGB conversion of stalign

__all__ = ["ArrayLevel", "Level", "OpenSlideLevel", "TiledTiffLevel", "ZarrLevel", "to_rgb_uint8"]


class Level:
    """One pyramid level (base class): ``width``/``height`` in level pixels."""

    width: int
    height: int

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Return the in-bounds window ``[y0:y1, x0:x1]`` as ``(h, w, 3)`` uint8."""
        raise NotImplementedError

    def prefetch(self, windows: Iterable[tuple[int, int, int, int]], executor: Executor) -> None:
        """Decode what ``windows`` need in parallel (no-op where nothing is cached)."""

    def close(self) -> None:
        """Release file handles (no-op by default)."""


class ArrayLevel(Level):
    """A level held in memory (small JPEG/PNG images, AnnData hires/lowres images)."""

    def __init__(self, arr: np.ndarray, *, source: str = "array") -> None:
        self.array = to_rgb_uint8(arr, source=source)
        self.height, self.width = self.array.shape[:2]

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Return a view of the window (callers copy when they keep it)."""
        return self.array[y0:y1, x0:x1]


class TiledTiffLevel(Level):
    """A tiled, chunky (RGB-interleaved) uint8 TIFF page read tile by tile.

    Tiles are read with one short locked ``seek``/``read`` each and decoded with
    tifffile's own decoder (imagecodecs; releases the GIL), then kept in an LRU cache
    bounded in bytes, so neighbouring patches share decoded tiles.
    """

    def __init__(
        self,
        page: Any,
        fh: Any,
        file_lock: threading.Lock,
        *,
        cache_bytes: int = 192 * 2**20,
    ) -> None:
        self._page = page
        self._fh = fh
        self._file_lock = file_lock
        self.width = int(page.imagewidth)
        self.height = int(page.imagelength)
        self.tile_h = int(page.tilelength)
        self.tile_w = int(page.tilewidth)
        self.n_tx = -(-self.width // self.tile_w)
        self.n_ty = -(-self.height // self.tile_h)
        self._offsets = page.dataoffsets
        self._counts = page.databytecounts
        self._decode = page.decode
        self._jpegtables = page.jpegtables
        self._spp = int(page.samplesperpixel)
        tile_bytes = self.tile_h * self.tile_w * 3
        self._capacity = max(16, cache_bytes // tile_bytes)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    @staticmethod
    def supports(page: Any) -> bool:
        """Whether ``page`` can be read by this fast path."""
        return bool(
            page.is_tiled
            and page.tiledepth == 1
            and page.planarconfig == 1  # contiguous samples
            and page.dtype == np.uint8
            and page.samplesperpixel in (3, 4)
        )

    def _tile_ids(self, x0: int, y0: int, x1: int, y1: int) -> list[int]:
        tx0, tx1 = x0 // self.tile_w, (x1 - 1) // self.tile_w
        ty0, ty1 = y0 // self.tile_h, (y1 - 1) // self.tile_h
        return [ty * self.n_tx + tx for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)]

    def _decode_tile(self, index: int) -> np.ndarray:
        count = int(self._counts[index])
        if count == 0:  # empty tile: TIFF readers fill with zeros
            return np.zeros((self.tile_h, self.tile_w, 3), np.uint8)
        with self._file_lock:
            self._fh.seek(int(self._offsets[index]))
            data = self._fh.read(count)
        tile, _, _ = self._decode(data, index, jpegtables=self._jpegtables)
        tile = tile.reshape(self.tile_h, self.tile_w, self._spp)
        if self._spp != 3:
            tile = np.ascontiguousarray(tile[..., :3])
        return tile

    def _get(self, index: int) -> np.ndarray:
        with self._cache_lock:
            tile = self._cache.get(index)
            if tile is not None:
                self._cache.move_to_end(index)
                return tile
        tile = self._decode_tile(index)
        self._put(index, tile)
        return tile

    def _put(self, index: int, tile: np.ndarray) -> None:
        with self._cache_lock:
            self._cache[index] = tile
            self._cache.move_to_end(index)
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)

    def prefetch(self, windows: Iterable[tuple[int, int, int, int]], executor: Executor) -> None:
        """Decode the missing tiles of ``windows`` on ``executor`` and cache them."""
        needed: dict[int, None] = {}
        for w in windows:
            for t in self._tile_ids(*w):
                needed[t] = None
        with self._cache_lock:
            missing = [t for t in needed if t not in self._cache]
        # never prefetch more than the cache can keep (the rest is decoded on demand)
        missing = missing[: self._capacity // 2]
        for index, tile in zip(missing, executor.map(self._decode_tile, missing), strict=True):
            self._put(index, tile)

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Assemble the window from (cached) tiles."""
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        tw, th = self.tile_w, self.tile_h
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                tile = self._get(ty * self.n_tx + tx)
                gx0, gy0 = tx * tw, ty * th
                sx0, sx1 = max(x0, gx0), min(x1, gx0 + tw)
                sy0, sy1 = max(y0, gy0), min(y1, gy0 + th)
                out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = tile[
                    sy0 - gy0 : sy1 - gy0, sx0 - gx0 : sx1 - gx0
                ]
        return out


class ZarrLevel(Level):
    """Any other TIFF layout (strips, planar, gray, 16 bit) through tifffile's zarr store."""

    def __init__(self, zarray: Any, axes: str, *, source: str) -> None:
        self._z = zarray
        self._source = source
        axes = axes.upper()
        if "Y" not in axes or "X" not in axes:
            msg = f"{source}: expected an image with Y and X axes, found axes {axes!r}"
            raise ValueError(msg)
        self._axes = axes
        shape = dict(zip(axes, zarray.shape, strict=True))
        self.height, self.width = int(shape["Y"]), int(shape["X"])

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Read the window through zarr and bring it to ``(h, w, 3)`` uint8."""
        index = []
        for ax, n in zip(self._axes, self._z.shape, strict=True):
            if ax == "Y":
                index.append(slice(y0, y1))
            elif ax == "X":
                index.append(slice(x0, x1))
            elif ax in "SC" and n in (1, 3, 4):
                index.append(slice(None))
            else:
                index.append(0)  # first plane of any other axis (Z, T, ...)
        arr = np.asarray(self._z[tuple(index)])
        kept = [ax for ax, i in zip(self._axes, index, strict=True) if isinstance(i, slice)]
        order = [kept.index("Y"), kept.index("X")] + [
            i for i, ax in enumerate(kept) if ax not in "YX"
        ]
        arr = np.transpose(arr, order)
        if arr.ndim == 4:  # both S and C kept: use the samples
            arr = arr[..., 0]
        return to_rgb_uint8(arr, source=self._source)


class OpenSlideLevel(Level):
    """One level of an OpenSlide-readable slide (``openslide-python`` optional extra)."""

    def __init__(self, slide: Any, level: int) -> None:
        self._slide = slide
        self._level = level
        self._ds = float(slide.level_downsamples[level])
        self.width, self.height = (int(v) for v in slide.level_dimensions[level])
        self._lock = threading.Lock()

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Read the window with ``OpenSlide.read_region`` (location in level-0 px)."""
        loc = (round(x0 * self._ds), round(y0 * self._ds))
        with self._lock:
            region = self._slide.read_region(loc, self._level, (x1 - x0, y1 - y0))
        return np.asarray(region.convert("RGB"))
