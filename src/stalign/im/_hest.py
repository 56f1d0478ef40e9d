"""Patch files in the HEST-1k layout (``.h5`` with ``img``, ``coords``, ``barcode``)."""

from __future__ import annotations

import os
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
    import h5py

    path = Path(path)
    if not path.is_file():
        msg = f"HEST patch file not found: {path}"
        raise FileNotFoundError(msg)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        msg = f"{path}: not a readable HDF5 file ({e})"
        raise ValueError(msg) from e
    with f:
        missing = [k for k in ("img", "coords", "barcode") if k not in f]
        if missing:
            msg = (
                f"{path}: expected HEST datasets 'img', 'coords', 'barcode'; missing "
                f"{missing} (found {sorted(f.keys())})"
            )
            raise ValueError(msg)
        img = f["img"][()]
        coords = f["coords"][()]
        raw = np.asarray(f["barcode"][()]).reshape(-1)
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    barcode = np.array([b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in raw])
    return HestPatches(img=img, coords=coords, barcode=barcode, attrs=attrs)
