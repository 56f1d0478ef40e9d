"""``stalign.io.read``: detect the platform from the file layout and call its reader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad

from ._core import PathLike

PLATFORMS = ("visium", "visium_hd", "xenium", "legacy_st", "hest", "h5ad", "spatialdata")

_LOOKED_FOR = """\
  visium     a folder with spatial/ and filtered_ or raw_feature_bc_matrix(.h5)
  visium_hd  a folder with binned_outputs/square_XXXum/, or a square_XXXum/ folder
  xenium     a folder with cell_feature_matrix(.h5) and cells.parquet / cells.csv.gz
  hest       a folder with st/<id>.h5ad and wsis/, or st/<id>.h5ad beside ../wsis/
  spatialdata  a SpatialData .zarr store (a zarr group with tables/)
  h5ad       any other .h5ad file
  legacy_st  a counts table <name>.tsv[.gz] (or prefix <name>) + alignment_table_<name>.tsv"""


def detect_platform(path: PathLike) -> str:
    """Return the platform whose layout ``path`` has (one of [`PLATFORMS`][stalign.io.PLATFORMS]).

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist (and is not a legacy ST prefix).
    ValueError
        When no known layout matches; the message lists what was looked for.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "binned_outputs").is_dir() or (
            p.name.startswith("square_") and (p / "spatial").is_dir()
        ):
            return "visium_hd"
        if (p / "spatial").is_dir() and any(
            (p / f"{kind}_feature_bc_matrix{ext}").exists()
            for kind in ("filtered", "raw")
            for ext in ("", ".h5")
        ):
            return "visium"
        if any((p / n).exists() for n in ("cell_feature_matrix.h5", "cell_feature_matrix")) and any(
            (p / n).is_file() for n in ("cells.parquet", "cells.csv.gz", "cells.csv")
        ):
            return "xenium"
        if (p / "st").is_dir() and (p / "wsis").is_dir():
            return "hest"
        if (p / "tables").is_dir() and any((p / n).is_file() for n in ("zarr.json", ".zgroup")):
            return "spatialdata"
    elif p.is_file() and p.suffix.lower() == ".h5ad":
        if p.parent.name == "st" and (p.parent.parent / "wsis").is_dir():
            return "hest"
        return "h5ad"
    else:
        from ._legacy_st import find_legacy_st_files

        try:
            found = find_legacy_st_files(p)
        except FileNotFoundError:
            found = None
        if found is not None and found["positions"] is not None:
            return "legacy_st"
        if not p.exists() and found is None:
            msg = f"nothing to read at '{p}' (no such file, directory or legacy ST prefix)"
            raise FileNotFoundError(msg)
    msg = f"cannot tell the platform of '{p}'; looked for:\n{_LOOKED_FOR}\nor pass platform=..."
    raise ValueError(msg)


def _readers() -> dict[str, Callable[..., ad.AnnData]]:
    from ._h5ad import read_h5ad, read_hest
    from ._legacy_st import read_legacy_st
    from ._spatialdata import read_spatialdata
    from ._visium import read_visium, read_visium_hd
    from ._xenium import read_xenium

    return {
        "visium": read_visium,
        "visium_hd": read_visium_hd,
        "xenium": read_xenium,
        "legacy_st": read_legacy_st,
        "hest": read_hest,
        "h5ad": read_h5ad,
        "spatialdata": read_spatialdata,
    }


def read(path: PathLike, *, platform: str | None = None, **kwargs: Any) -> ad.AnnData:
    """Read spatial transcriptomics data of any supported platform into the reader layout.

    Parameters
    ----------
    path
        Space Ranger ``outs/`` folder (Visium, Visium HD), Xenium output folder, HEST root
        or sample ``.h5ad``, any ``.h5ad``, or a legacy ST counts table / section prefix.
    platform
        One of ``visium``, ``visium_hd``, ``xenium``, ``legacy_st``, ``hest``, ``h5ad``,
        ``spatialdata``;
        detected from the layout when ``None`` (see `detect_platform`).
    **kwargs
        Passed to the platform reader (``image=``, ``mpp=``, ``library_id=``, …).

    Returns
    -------
    ad.AnnData
        AnnData as documented by the platform reader: raw counts in ``X`` and
        ``layers['counts']``, ``var['gene_ids']``/``var['gene_symbols']``,
        ``obsm['spatial']`` (level-0 px of the H&E), ``uns['spatial'][library_id]`` and
        ``uns['stalign']``.

    Raises
    ------
    ValueError
        Unknown ``platform`` or undetectable layout (the message lists the layouts
        looked for), or any reader error.
    FileNotFoundError
        When ``path`` does not exist or a file the reader needs is missing.
    """
    if platform is None:
        platform = detect_platform(path)
    readers = _readers()
    if platform not in readers:
        msg = f"platform must be one of {list(readers)}, got {platform!r}"
        raise ValueError(msg)
    return readers[platform](path, **kwargs)
