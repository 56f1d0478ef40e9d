"""Patch geometry and antialiased resampling (PIL does the filtering).

Coordinate convention (the one scanpy/squidpy plots use): the centre of pixel
``i`` sits at coordinate ``i``, so level-0 pixel ``i`` covers ``[i - 0.5, i + 0.5)``.
Pillow's ``box`` uses edges (pixel ``i`` covers ``[i, i + 1)``), hence the ``+ 0.5``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: filter support (in source px per unit scale) of Lanczos-3; window padding uses it
_LANCZOS_SUPPORT = 3.0
#: a patch whose scale is within this of 1 is cropped without resampling
_UNIT_SCALE_TOL = 1e-3


@dataclass(frozen=True)
class Window:
    """Where one patch comes from in one pyramid level.

    Attributes
    ----------
    box
        ``(x0, y0, x1, y1)`` patch edges in level pixels (Pillow edge convention).
    read
        ``(x0, y0, x1, y1)`` integer window to read (half-open, level px, may leave
        the level), padded for the filter support.
    scale
        Source level pixels per output pixel (> 1: shrinking).
    """

    box: tuple[float, float, float, float]
    read: tuple[int, int, int, int]
    scale: float


def patch_window(
    cx: float, cy: float, *, size_px: int, mpp: float, level_mpp: float, level_ds: float
) -> Window:
    """Return the `Window` of a ``size_px`` patch at ``mpp`` µm/px centred on ``(cx, cy)``.

    Parameters
    ----------
    cx, cy
        Patch centre in level-0 pixels.
    size_px
        Output patch side (px).
    mpp
        Output resolution (µm/px).
    level_mpp, level_ds
        Resolution (µm/px) and downsample (level-0 px per level px) of the source level.
    """
    scale = mpp / level_mpp
    half = size_px * scale / 2.0
    # level-0 centre -> level continuous coords (pixel centres at integers) -> edges
    ex = (cx + 0.5) / level_ds
    ey = (cy + 0.5) / level_ds
    box = (ex - half, ey - half, ex + half, ey + half)
    if abs(scale - 1.0) < _UNIT_SCALE_TOL:
        x0, y0 = math.floor(box[0] + 0.5), math.floor(box[1] + 0.5)  # nearest pixel grid
        return Window(box, (x0, y0, x0 + size_px, y0 + size_px), 1.0)
    pad = math.ceil(_LANCZOS_SUPPORT * max(scale, 1.0)) + 1
    read = (
        math.floor(box[0]) - pad,
        math.floor(box[1]) - pad,
        math.ceil(box[2]) + pad,
        math.ceil(box[3]) + pad,
    )
    return Window(box, read, scale)


def resample(window_px: np.ndarray, win: Window, size_px: int) -> np.ndarray:
    """Resample the pixels read for ``win`` into a ``(size_px, size_px, 3)`` patch.

    Shrinking uses Lanczos-3 with its support widened by the scale (Pillow's
    antialiasing convolution, so a pattern finer than the output grid averages out);
    enlarging uses Lanczos-3 interpolation. Unit scale is a plain crop.
    """
    if win.scale == 1.0:
        return np.ascontiguousarray(window_px[:size_px, :size_px])
    rx0, ry0 = win.read[0], win.read[1]
    box = (win.box[0] - rx0, win.box[1] - ry0, win.box[2] - rx0, win.box[3] - ry0)
    img = Image.fromarray(np.ascontiguousarray(window_px))
    out = img.resize((size_px, size_px), Image.Resampling.LANCZOS, box=box)
    return np.asarray(out)


def outside_mask(win: Window, size_px: int, level_w: int, level_h: int) -> np.ndarray | None:
    """Boolean ``(size_px, size_px)`` mask of output pixels whose centre leaves the level.

    Returns ``None`` when the whole patch lies inside.
    """
    x0, y0, x1, y1 = win.box
    if x0 >= 0 and y0 >= 0 and x1 <= level_w and y1 <= level_h:
        return None
    step = (x1 - x0) / size_px
    centres = (np.arange(size_px) + 0.5) * step
    out_x = (x0 + centres < 0) | (x0 + centres >= level_w)
    out_y = (y0 + centres < 0) | (y0 + centres >= level_h)
    return out_y[:, None] | out_x[None, :]
