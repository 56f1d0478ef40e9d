"""Write a stalign AnnData as SpatialData, or its results into an existing SpatialData.

[`to_spatialdata`][stalign.io.to_spatialdata] writes the spots as circles, the table with
what stalign computed (``obsm['pathway_scores']``, ``obsm['X_<encoder>']``) and, when
given an opened image, the H&E (streamed chunk by chunk through its ``read_region``);
with ``sdata=`` it writes those into an existing table. It sits beside the reader,
`stalign.io.read_spatialdata`, and shares its µm coordinate system and store look-ups.
``io`` sits below ``im`` and never imports it: the caller passes the image, e.g.
``stalign.im.open_image(adata)``, and `stalign.im.to_spatialdata` is the form that
opens it itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .. import _keys as K
from .._lock import folder_lock
from ._core import PathLike
from ._spatialdata import MICRON_SYSTEM, _load, _pick  # shared with the reader

logger = logging.getLogger(__name__)

__all__ = ["STORE_LOCK", "to_spatialdata"]

_OBSM_WRITTEN = (K.PATHWAY_SCORES,)  # plus every obsm['X_<encoder>']

#: lock file inside a store, held while stalign writes into it (write-back, overwrite)
STORE_LOCK = ".stalign.lock"


def _plain_uns(d: dict) -> dict:
    """Drop ``None`` values (zarr attributes cannot hold them)."""
    return {k: v for k, v in d.items() if v is not None}


def _table(adata: ad.AnnData, region: str, instance_key: str) -> Any:
    from spatialdata.models import TableModel

    t = ad.AnnData(X=adata.X, obs=adata.obs.copy(), var=adata.var.copy(), layers=dict(adata.layers))
    for key, value in adata.obsm.items():
        t.obsm[key] = value
    t.obs["region"] = pd.Categorical([region] * t.n_obs)
    t.obs[instance_key] = np.arange(t.n_obs)
    t.uns[K.STALIGN] = _plain_uns(dict(adata.uns.get(K.STALIGN, {})))
    for key in (K.PATHWAY_SCORES,):
        if key in adata.uns:
            t.uns[key] = adata.uns[key]
    return TableModel.parse(t, region=region, region_key="region", instance_key=instance_key)


def _image_element(image: Any, system: str, mpp: float | None) -> Any:
    """Return the level 0 of an opened image as a lazy image element.

    ``image`` offers ``level_dimensions``, ``level_downsamples`` and ``read_region``
    (a `stalign.im.SlideImage`). A pyramid (factors of 2) is added only above 8192 px,
    so small images keep exactly the pixels the native reader resamples from.
    """
    import dask.array as da
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    width, height = (int(n) for n in image.level_dimensions[0])
    ds = float(image.level_downsamples[0])
    chunk = 1024

    def block(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"][1:]
        # read_region takes level-0 px and floors them back to level pixels: the
        # pixel centre (x0 + 0.5) * ds lands on x0 whatever the rounding of ds
        tile = image.read_region((x0 + 0.5) * ds, (y0 + 0.5) * ds, x1 - x0, y1 - y0, level=0)
        return np.moveaxis(tile, -1, 0)

    arr = da.map_blocks(
        block,
        dtype=np.uint8,
        chunks=(
            (3,),
            *(tuple(min(chunk, n - i) for i in range(0, n, chunk)) for n in (height, width)),
        ),
    )
    transforms = {system: Scale([ds, ds], axes=("x", "y"))}
    if mpp is not None:
        transforms[MICRON_SYSTEM] = Scale([mpp * ds, mpp * ds], axes=("x", "y"))
    n_scales = int(max(0, np.floor(np.log2(max(width, height) / 4096))))
    return Image2DModel.parse(
        arr,
        dims=("c", "y", "x"),
        transformations=transforms,
        scale_factors=[2] * min(n_scales, 4) or None,
        chunks=(3, chunk, chunk),
    )


def _circles(adata: ad.AnnData, system: str, mpp: float | None) -> Any:
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity, Scale

    if K.SPATIAL not in adata.obsm:
        msg = "adata has no obsm['spatial'] (level-0 px spot centres) to place the spots"
        raise ValueError(msg)
    lib = adata.uns.get(K.STALIGN, {}).get(K.LIBRARY_ID)
    sf = adata.uns.get(K.SPATIAL, {}).get(lib, {}).get(K.SCALEFACTORS, {})
    diameter = sf.get(K.SF_SPOT_DIAMETER)
    if diameter is None:
        logger.warning("spot diameter unknown: the spots are written as circles of 1 px")
        diameter = 2.0
    xy = np.asarray(adata.obsm[K.SPATIAL], dtype=float)[:, :2]
    transforms: dict[str, Any] = {system: Identity()}
    if mpp is not None:
        transforms[MICRON_SYSTEM] = Scale([mpp, mpp], axes=("x", "y"))
    return ShapesModel.parse(
        xy,
        geometry=0,
        radius=np.full(len(xy), float(diameter) / 2.0),
        index=np.arange(len(xy)),
        transformations=transforms,
    )


def _stalign_obsm(adata: ad.AnnData) -> list[str]:
    return [k for k in adata.obsm if k in _OBSM_WRITTEN or k.startswith(K.EMBEDDING_PREFIX)]


def _replace_table_on_disk(sdata: Any, name: str) -> None:
    """Rewrite one table of a stored SpatialData, swapping folders (never half-written).

    spatialdata refuses to overwrite an element of the store it was read from, so the
    table is written to a temporary store beside it and its folder moved into place.
    """
    import shutil
    import tempfile

    import spatialdata as sd

    root = Path(sdata.path)
    with (
        folder_lock(root / STORE_LOCK, command="to_spatialdata (write-back)", what=str(root)),
        tempfile.TemporaryDirectory(dir=root, prefix=".tmp-table-") as tmp,
    ):
        sd.SpatialData(tables={name: sdata.tables[name]}).write(Path(tmp) / "t.zarr")
        final = root / "tables" / name
        old = root / "tables" / f".old-{name}"
        os.replace(final, old)
        os.replace(Path(tmp) / "t.zarr" / "tables" / name, final)
        shutil.rmtree(old)
        sdata.write_consolidated_metadata()


def _update_table(sdata: Any, adata: ad.AnnData, table: str | None, source: Any) -> Any:
    """Write stalign's obsm entries of ``adata`` into the table, joined on obs names."""
    tname = _pick("table", list(sdata.tables), table, source)
    t = sdata.tables[tname]
    keys = _stalign_obsm(adata)
    if not keys:
        msg = "adata has nothing of stalign's to write back (no obsm pathway_scores / X_*)"
        raise ValueError(msg)
    pos = t.obs_names.get_indexer(adata.obs_names)
    if (pos < 0).all():
        msg = f"{source}: none of adata's obs names is in table {tname!r}"
        raise ValueError(msg)
    for key in keys:
        value = adata.obsm[key]
        if isinstance(value, pd.DataFrame):
            full = pd.DataFrame(np.nan, index=t.obs_names, columns=value.columns, dtype=np.float32)
            full.iloc[pos[pos >= 0]] = value.to_numpy()[pos >= 0]
        else:
            full = np.full((t.n_obs, np.shape(value)[1]), np.nan, np.float32)
            full[pos[pos >= 0]] = np.asarray(value)[pos >= 0]
        t.obsm[key] = full
    if sdata.path is not None:
        _replace_table_on_disk(sdata, tname)
    logger.info("wrote %s into table %r (%d of %d rows)", keys, tname, (pos >= 0).sum(), t.n_obs)
    return sdata


def to_spatialdata(
    adata: ad.AnnData,
    *,
    sdata: Any = None,
    path: PathLike | None = None,
    table: str | None = None,
    image: Any = None,
    coordinate_system: str = "global",
    overwrite: bool = False,
) -> Any:
    """Write a stalign AnnData as SpatialData, or its results into an existing one.

    Parameters
    ----------
    adata
        An AnnData in the reader layout (any reader, or
        [`stalign.io.read_spatialdata`][stalign.io.read_spatialdata]),
        possibly with ``obsm['pathway_scores']`` / ``obsm['X_<encoder>']``.
    sdata
        An existing SpatialData (object or ``.zarr`` path): only stalign's ``obsm``
        entries of ``adata`` (``pathway_scores``, ``X_*``) are written into its
        ``table`` (rows joined on obs names; rows ``adata`` lacks are NaN), and
        saved to its store when it has one.
    path
        Without ``sdata``: also write the new object to this ``.zarr`` store.
    table
        Table name (new object: ``'table'``; existing: default its only table).
    image
        The H&E as an opened image, read chunk by chunk while writing:
        ``stalign.im.open_image(adata)`` (a `stalign.im.SlideImage`; anything with
        ``level_dimensions``, ``level_downsamples`` and ``read_region`` will do). The
        caller closes it, after writing to ``path`` or when done with the returned
        object, which reads it on demand. ``None`` (or ``False``): spots and table only.
        [`stalign.im.to_spatialdata`][stalign.im.to_spatialdata] opens and closes it
        for you.
    coordinate_system
        Name of the level-0 pixel coordinate system; a ``'um'`` system (µm) is added
        when the µm/px is known.
    overwrite
        Replace an existing store at ``path``.

    Returns
    -------
    spatialdata.SpatialData
        New object: ``images['he']`` (multiscale; with ``image``), ``shapes['spots']``
        (circles of the spot diameter at ``obsm['spatial']``), ``tables[table]``
        (counts, obs, var, every ``obsm`` incl. ``pathway_scores`` and embeddings,
        ``uns['stalign']``).

    Raises
    ------
    ValueError
        Nothing to write back (``sdata=`` without stalign results), no common obs
        names, or ``path`` exists without ``overwrite``.
    TypeError
        ``image=True``: ``io`` cannot open the H&E itself (it sits below ``im``); pass
        the opened image or call `stalign.im.to_spatialdata`.
    """
    import spatialdata as sd

    if image is True:
        msg = (
            "image=True: stalign.io.to_spatialdata takes the opened H&E, "
            "image=stalign.im.open_image(adata); stalign.im.to_spatialdata opens it itself"
        )
        raise TypeError(msg)
    if sdata is not None:
        obj, store = _load(sdata)
        return _update_table(obj, adata, table, store or "SpatialData object")
    meta = adata.uns.get(K.STALIGN, {})
    mpp = meta.get(K.MPP)
    elements: dict[str, Any] = {
        "shapes": {"spots": _circles(adata, coordinate_system, mpp)},
        "tables": {table or "table": _table(adata, "spots", "spot_id")},
    }
    if path is not None and Path(path).exists() and not overwrite:
        msg = f"{path} exists; pass overwrite=True to replace it"
        raise ValueError(msg)
    if image is not None and image is not False:
        elements["images"] = {"he": _image_element(image, coordinate_system, mpp)}
    out = sd.SpatialData(**elements)
    if path is None:
        return out  # its image reads the slide on demand: the slide stays open
    _write_store(out, Path(path))
    return sd.read_zarr(path)


def _write_store(sdata: Any, path: Path) -> None:
    """Write to a hidden sibling, then swap it in: an old store survives a crash.

    An existing store is locked from inside (the lock its write-backs take) for the
    whole write, so two writers of one store are refused rather than interleaved;
    of two writers creating the same new store, the second one's swap fails with a
    clear error and leaves the first one's store as it is.
    """
    replace = path.is_dir()  # decided before writing: a store created meanwhile is kept
    lock = (
        folder_lock(path / STORE_LOCK, command="to_spatialdata", what=str(path))
        if replace
        else contextlib.nullcontext()
    )
    with lock:
        _swap_in(sdata, path, replace=replace)


def _swap_in(sdata: Any, path: Path, *, replace: bool) -> None:
    """Write ``sdata`` beside ``path`` under a temporary name and rename it into place.

    ``replace``: ``path`` is an existing store to swap out; otherwise ``path`` must
    still be free (or an empty folder) when the rename happens.
    """
    import shutil

    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        sdata.write(tmp)
        if replace:
            old = path.with_name(f".old-{path.name}.{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            try:
                os.replace(tmp, path)
            except OSError as e:  # another process created the store meanwhile
                msg = f"{path} was created by another process while this one wrote it; left as is"
                raise FileExistsError(msg) from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
