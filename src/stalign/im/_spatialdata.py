"""`to_spatialdata` with the H&E opened for you: `stalign.io.to_spatialdata` plus `open_image`.

The writer itself is [`stalign.io.to_spatialdata`][stalign.io.to_spatialdata], beside the
reader; it takes the H&E as an opened image because ``io`` sits below ``im``. This form
opens the AnnData's image with [`open_image`][stalign.im.open_image] and closes it after
writing a store.
"""

from __future__ import annotations

import os
from typing import Any

import anndata as ad

from ..io import to_spatialdata as _write
from ._slide import SlideImage, open_image

__all__ = ["to_spatialdata"]


def to_spatialdata(
    adata: ad.AnnData,
    *,
    sdata: Any = None,
    path: str | os.PathLike | None = None,
    table: str | None = None,
    image: bool | SlideImage = True,
    coordinate_system: str = "global",
    overwrite: bool = False,
) -> Any:
    """Write a stalign AnnData as SpatialData (with its H&E), or its results into an existing one.

    [`stalign.io.to_spatialdata`][stalign.io.to_spatialdata], whose parameters these are,
    with ``image=True`` meaning "open the AnnData's H&E" with `open_image`.

    Parameters
    ----------
    adata
        An AnnData in the reader layout, possibly with ``obsm['pathway_scores']`` /
        ``obsm['X_<encoder>']``.
    image
        ``True``: include the H&E, opened with `open_image` (closed after writing to
        ``path``; without ``path`` the returned object reads it on demand). An opened
        `SlideImage`: include that one (the caller closes it). ``False``: no image.
        With ``sdata=`` (write-back into an existing store) no image is written.

    Returns
    -------
    spatialdata.SpatialData
        ``images['he']``, ``shapes['spots']``, ``tables[table]``; see
        [`stalign.io.to_spatialdata`][stalign.io.to_spatialdata].
    """
    kwargs = dict(
        sdata=sdata,
        path=path,
        table=table,
        coordinate_system=coordinate_system,
        overwrite=overwrite,
    )
    if sdata is not None:  # write-back: the table only
        return _write(adata, **kwargs)
    if image is not True:
        return _write(adata, image=image or None, **kwargs)
    slide = open_image(adata)
    try:
        out = _write(adata, image=slide, **kwargs)
    except BaseException:
        slide.close()
        raise
    if path is not None:
        slide.close()  # the store is written; the object returned reads the store
    return out
