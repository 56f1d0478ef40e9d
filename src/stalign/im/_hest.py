"""Patch files in the HEST-1k layout (``.h5`` with ``img``, ``coords``, ``barcode``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._utils import atomic_path


@dataclass
class HestPatches:
    """Content of a HEST patch file.

    Attributes
    ----------
    img
        ``(n, H, W, 3)`` uint8 patches.
    coords
        ``(n, 2)`` level-0 pixel coordinates ``(x, y)`` (HEST: the patch's top-left
        corner in the full-resolution image).
    barcode
        ``(n,)`` barcodes (str).
    attrs
        File attributes (e.g. ``mpp``, ``patch_size``), if any.
    """

    img: np.ndarray
    coords: np.ndarray
    barcode: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.barcode)


def write_hest_patches(
    path: str | os.PathLike,
    patches: np.ndarray,
    coords: np.ndarray,
    barcodes: Any,
    *,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write patches in the HEST-1k ``.h5`` layout, atomically.

    Datasets: ``img`` ``(n, H, W, 3)`` uint8 (chunked one patch per chunk),
    ``coords`` ``(n, 2)`` int64, ``barcode`` ``(n, 1)`` bytes — what HEST's
    ``H5PatchDataset`` reads.

    Parameters
    ----------
    path
        Output ``.h5`` file; written to a temporary file and moved into place.
    patches
        ``(n, H, W, 3)`` uint8 patches.
    coords
        ``(n, 2)`` level-0 ``(x, y)`` px. HEST stores the patch's top-left corner
        (centre − half the patch's level-0 size); pass that for HEST tools.
    barcodes
        ``n`` barcodes (ASCII/UTF-8 strings).
    attrs
        Extra file attributes, e.g. ``{'mpp': 0.5, 'patch_size': 224}`` (scalars
        or strings).

    Returns
    -------
    Path
        ``path``.
    """
    import h5py

    patches = np.asarray(patches)
    coords = np.asarray(coords)
    barcodes = np.asarray([str(b) for b in barcodes])
    n = len(barcodes)
    if patches.ndim != 4 or patches.shape[-1] != 3 or patches.dtype != np.uint8:
        msg = f"patches must be uint8 of shape (n, H, W, 3), got {patches.dtype} {patches.shape}"
        raise ValueError(msg)
    if patches.shape[0] != n or coords.shape != (n, 2):
        msg = (
            f"{n} barcodes need {n} patches and coords of shape ({n}, 2); got "
            f"{patches.shape[0]} patches and coords {coords.shape}"
        )
        raise ValueError(msg)
    if len(set(barcodes.tolist())) != n:
        msg = f"barcodes must be unique; {n - len(set(barcodes.tolist()))} are duplicated"
        raise ValueError(msg)
    encoded = np.array([b.encode("utf-8") for b in barcodes], dtype=bytes).reshape(n, 1)
    path = Path(path)
    with atomic_path(path, suffix=".h5.tmp") as tmp, h5py.File(tmp, "w") as f:
        chunks = (1, *patches.shape[1:]) if n else None
        f.create_dataset("img", data=patches, chunks=chunks)
        f.create_dataset("coords", data=np.rint(coords).astype(np.int64))
        f.create_dataset("barcode", data=encoded)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path


#: the datasets of a HEST patch file
_HEST_DATASETS = ("img", "coords", "barcode")


@contextlib.contextmanager
def _open_hest_file(path: Path) -> Iterator[Any]:
    """Open a HEST patch ``.h5`` for reading once it is known to hold its datasets.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file
    for one that is not HDF5 or lacks ``img`` / ``coords`` / ``barcode``.
    """
    import h5py

    if not path.is_file():
        msg = f"HEST patch file not found: {path}"
        raise FileNotFoundError(msg)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        msg = f"{path}: not a readable HDF5 file ({e})"
        raise ValueError(msg) from e
    with f:
        missing = [k for k in _HEST_DATASETS if k not in f]
        if missing:
            msg = (
                f"{path}: expected HEST datasets 'img', 'coords', 'barcode'; missing "
                f"{missing} (found {sorted(f.keys())})"
            )
            raise ValueError(msg)
        yield f


def read_hest_patches(path: str | os.PathLike) -> HestPatches:
    """Read a HEST-layout patch ``.h5`` file (also files written by HEST itself).

    Parameters
    ----------
    path
        The ``.h5`` file.

    Returns
    -------
    HestPatches
        ``img``, ``coords``, ``barcode`` (str) and file ``attrs``.
    """
    path = Path(path)
    with _open_hest_file(path) as f:
        img = f["img"][()]
        coords = f["coords"][()]
        raw = np.asarray(f["barcode"][()]).reshape(-1)
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    barcode = np.array([b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in raw])
    return HestPatches(img=img, coords=coords, barcode=barcode, attrs=attrs)


# --------------------------------------------------------------------------- HEST-1k reuse
#: µm/px of the patches HEST-1k ships in ``patches/<id>.h5`` (their files do not record it)
HEST_PATCH_MPP = 0.5


@dataclass(frozen=True)
class HestPatchGeometry:
    """Geometry of a HEST patch file, read from its header (no pixels decoded).

    Attributes
    ----------
    path
        The ``.h5`` file.
    n
        Number of patches.
    size_px
        Patch side (px).
    mpp
        µm/px of the patches: the file's ``mpp`` attribute (``img`` or file), else
        [`HEST_PATCH_MPP`][stalign.im.HEST_PATCH_MPP].
    mpp_source
        ``'file'`` or ``'hest_default'``.
    """

    path: Path
    n: int
    size_px: int
    mpp: float
    mpp_source: str

    def serves(self, *, mpp: float, size_px: int, rtol: float = 0.01) -> str | None:
        """Return why these patches cannot give ``size_px`` px at ``mpp`` µm/px, or None."""
        if abs(self.mpp - mpp) > rtol * mpp:
            return f"patches are {self.mpp:g} µm/px ({self.mpp_source}), {mpp:g} requested"
        if self.size_px < size_px:
            return f"patches are {self.size_px} px, {size_px} px requested"
        return None


def hest_patch_geometry(path: str | os.PathLike) -> HestPatchGeometry:
    """Read the geometry of a HEST ``patches/<id>.h5`` from its header.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a HEST patch file (``img`` of shape ``(n, H, H, 3)`` uint8 is expected).
    """
    path = Path(path)
    with _open_hest_file(path) as f:
        img = f["img"]
        if img.ndim != 4 or img.shape[1] != img.shape[2] or img.shape[3] != 3:
            msg = f"{path}: expected 'img' of shape (n, H, H, 3), found {img.shape}"
            raise ValueError(msg)
        attrs = {**dict(f.attrs), **dict(img.attrs)}
    mpp = attrs.get("mpp", attrs.get("pixel_size"))
    if mpp is not None and np.isfinite(float(mpp)) and float(mpp) > 0:
        return HestPatchGeometry(path, int(img.shape[0]), int(img.shape[1]), float(mpp), "file")
    return HestPatchGeometry(
        path, int(img.shape[0]), int(img.shape[1]), HEST_PATCH_MPP, "hest_default"
    )


def check_hest_coords(
    geometry: HestPatchGeometry,
    barcodes: np.ndarray,
    centres: np.ndarray,
    *,
    mpp0: float,
    tolerance: float = 0.05,
) -> None:
    """Check that a HEST patch file's top-left ``coords`` belong to these spot centres.

    HEST stores ``centre - side0 // 2`` with ``side0`` the patch side in level-0 px.

    Parameters
    ----------
    geometry
        The patch file.
    barcodes, centres
        Spots (obs order) and their level-0 ``(x, y)`` centres (px).
    mpp0
        µm per level-0 px of the slide the coordinates refer to.
    tolerance
        Largest allowed median offset, as a fraction of the patch side.

    Raises
    ------
    ValueError
        No barcode in common, or the patch centres are off the spots (the file was
        cut from another image or at another geometry).
    """
    import h5py

    with h5py.File(geometry.path, "r") as f:
        coords = np.asarray(f["coords"][()], dtype=float)
        raw = np.asarray(f["barcode"][()]).reshape(-1)
    names = [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in raw]
    row = {b: i for i, b in enumerate(names)}
    pos = {b: i for i, b in enumerate(barcodes)}
    common = [b for b in names if b in pos]
    if not common:
        msg = (
            f"{geometry.path}: none of its {len(names)} barcodes is a spot of the sample "
            f"(e.g. {names[:3]} vs {list(barcodes[:3])})"
        )
        raise ValueError(msg)
    side0 = geometry.size_px * geometry.mpp / mpp0
    got = coords[[row[b] for b in common]] + side0 // 2
    want = centres[[pos[b] for b in common]]
    offset = float(np.median(np.hypot(*(got - want).T)))
    if offset > max(2.0, tolerance * side0):
        msg = (
            f"{geometry.path}: patch centres lie a median {offset:.1f} level-0 px from the "
            f"spots (patch side {side0:.0f} px); the file does not match this sample's "
            "coordinates or µm/px"
        )
        raise ValueError(msg)


class HestPatchReader:
    """Centre-cropped patches of a HEST ``patches/<id>.h5``, looked up by barcode.

    Parameters
    ----------
    geometry
        From [`hest_patch_geometry`][stalign.im.hest_patch_geometry].
    size_px
        Side of the patches handed out (≤ the file's); the centre is kept.
    """

    def __init__(self, geometry: HestPatchGeometry, size_px: int) -> None:
        import h5py

        self.geometry = geometry
        self.size_px = int(size_px)
        self._f = h5py.File(geometry.path, "r")
        raw = np.asarray(self._f["barcode"][()]).reshape(-1)
        names = [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in raw]
        self._row = {b: i for i, b in enumerate(names)}
        self._offset = (geometry.size_px - self.size_px) // 2

    def rows(self, barcodes: np.ndarray) -> np.ndarray:
        """Row of each barcode in the file, ``-1`` where it has no patch."""
        return np.array([self._row.get(str(b), -1) for b in barcodes], dtype=np.int64)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), size_px, size_px, 3)`` uint8; zeros where ``rows == -1``."""
        s, o = self.size_px, self._offset
        out = np.zeros((len(rows), s, s, 3), np.uint8)
        have = np.flatnonzero(rows >= 0)
        if len(have):
            order = np.argsort(rows[have])  # h5py reads increasing, unique indices
            sorted_rows = rows[have][order]
            uniq, inverse = np.unique(sorted_rows, return_inverse=True)
            block = self._f["img"][uniq, o : o + s, o : o + s, :]
            out[have[order]] = block[inverse]
        return out

    def close(self) -> None:
        """Close the file."""
        self._f.close()

    def __enter__(self) -> HestPatchReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
