"""SpatialData ↔ the stalign AnnData (scverse's container for images, shapes and tables).

`read_spatialdata` turns one table of a SpatialData object (or ``.zarr`` store)
into the AnnData every reader returns: spot centres from the table's shapes element
mapped into the pixels of the chosen H&E image through the elements'
transformations, µm/px from a micrometre coordinate system (or the spot size), and
the image kept lazy (``uns['stalign']['image_path']`` = the image element's OME-Zarr
folder, read chunk by chunk).

The writer, `stalign.io.to_spatialdata` (``_spatialdata_writer.py``), shares
`MICRON_SYSTEM` and the store/element look-ups here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .. import _keys as K

logger = logging.getLogger(__name__)

__all__ = ["MICRON_SYSTEM", "read_spatialdata"]

#: coordinate system in µm that `stalign.io.to_spatialdata` writes (and the reader
#: looks for)
MICRON_SYSTEM = "um"
_MICRON_NAMES = ("um", "µm", "micron", "microns", "micrometer", "micrometre", "micrometers")


def _load(sdata: Any) -> tuple[Any, Path | None]:
    import spatialdata as sd

    if isinstance(sdata, str | os.PathLike):
        path = Path(sdata).expanduser()
        if not path.exists():
            msg = f"SpatialData store not found: expected a .zarr folder at '{path}'"
            raise FileNotFoundError(msg)
        try:
            return sd.read_zarr(path), path.resolve()
        except Exception as e:  # spatialdata/zarr raise many types for a bad store
            msg = f"{path}: cannot read it as a SpatialData zarr store ({type(e).__name__}: {e})"
            raise ValueError(msg) from e
    if not isinstance(sdata, sd.SpatialData):
        msg = f"expected a SpatialData object or a .zarr path, got {type(sdata).__name__}"
        raise TypeError(msg)
    return sdata, (Path(sdata.path).resolve() if sdata.path is not None else None)


def _pick(kind: str, names: list[str], wanted: str | None, source: Any) -> str | None:
    if wanted is not None:
        if wanted not in names:
            msg = f"{source}: no {kind} named {wanted!r}; found {names}"
            raise ValueError(msg)
        return wanted
    if len(names) > 1:
        msg = f"{source}: it holds {len(names)} {kind}s {names}; choose one with {kind}=..."
        raise ValueError(msg)
    return names[0] if names else None


def _affine(element: Any, system: str, source: Any) -> np.ndarray:
    """3×3 affine (x, y) of ``element`` → ``system``."""
    from spatialdata.transformations import get_transformation

    found = get_transformation(element, get_all=True)
    if system not in found:
        msg = f"{source}: an element has no transformation to coordinate system {system!r}"
        raise ValueError(msg)
    return np.asarray(found[system].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")))


def _scale_only(m: np.ndarray, what: str, source: Any) -> tuple[float, np.ndarray]:
    """Isotropic scale and translation of an affine, refusing rotation/shear."""
    sx, sy = float(m[0, 0]), float(m[1, 1])
    if abs(m[0, 1]) > 1e-9 or abs(m[1, 0]) > 1e-9 or abs(sx - sy) > 1e-6 * max(abs(sx), 1e-12):
        msg = (
            f"{source}: the {what} maps to the coordinate system with rotation, shear or "
            f"unequal x/y scale ({m[:2, :2].tolist()}); only scale + translation is supported"
        )
        raise ValueError(msg)
    return sx, m[:2, 2].copy()


def _spots(sdata: Any, table: ad.AnnData, source: Any) -> tuple[Any, str | None, str | None]:
    attrs = table.uns.get("spatialdata_attrs", {}) or {}
    region = attrs.get("region")
    region = [region] if isinstance(region, str) else list(region or [])
    if len(region) > 1:
        msg = f"{source}: the table annotates several regions {region}; one is supported"
        raise ValueError(msg)
    if not region or region[0] not in sdata.shapes:
        return None, None, attrs.get("instance_key")
    return sdata.shapes[region[0]], region[0], attrs.get("instance_key")


def _centres(shapes: Any, table: ad.AnnData, instance_key: str | None, source: Any):
    """Centres (shape units) and diameters of the table's spots, in table order."""
    ids = table.obs[instance_key].to_numpy() if instance_key else table.obs_names.to_numpy()
    missing = ~pd.Index(ids).isin(shapes.index)
    if missing.any():
        msg = (
            f"{source}: {int(missing.sum())} table rows have no shape (instance ids e.g. "
            f"{list(ids[missing][:5])})"
        )
        raise ValueError(msg)
    geo = shapes.loc[ids]
    if "radius" in geo.columns:
        xy = np.column_stack([geo.geometry.x, geo.geometry.y])
        diameter = 2.0 * geo["radius"].to_numpy(float)
    else:  # polygons (cells, bins): centroid and the diameter of a disc of equal area
        cen = geo.geometry.centroid
        xy = np.column_stack([cen.x, cen.y])
        diameter = 2.0 * np.sqrt(geo.geometry.area.to_numpy(float) / np.pi)
    return xy, diameter


def _pick_system(elements: list, wanted: str | None, source: Any) -> str:
    from spatialdata.transformations import Identity, get_transformation

    if wanted is not None or not elements:
        return wanted or "global"
    found = [get_transformation(e, get_all=True) for e in elements]
    common = sorted(set.intersection(*(set(f) for f in found)))
    if not common:
        msg = f"{source}: the image and the spots share no coordinate system ({found})"
        raise ValueError(msg)
    if "global" in common:
        return "global"
    identity = [c for c in common if isinstance(found[-1][c], Identity)]
    return (identity or common)[0]


def _micron_scale(element: Any, unit_system: str) -> float | None:
    """µm per unit of ``unit_system`` from a micrometre coordinate system, if any."""
    from spatialdata.transformations import get_transformation

    found = get_transformation(element, get_all=True)
    micron = next((s for s in found if s.lower() in _MICRON_NAMES), None)
    if micron is None or unit_system not in found:
        return None
    to_um = found[micron].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    to_sys = found[unit_system].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    return float(to_um[0, 0] / to_sys[0, 0])


#: images with a scale into the coordinate system and at most this many pixels are
#: down-scaled stand-ins (Visium hires/lowres): kept in memory, like the native readers
_STAND_IN_MAX_PX = 4096 * 4096


def _n_pixels(image: Any) -> int:
    arr = image["scale0"].image if hasattr(image, "children") else image
    return int(arr.sizes["y"] * arr.sizes["x"])


def _is_placeholder(image: Any) -> bool:
    """Whether a small image has a single colour (Space Ranger's black hires stand-in)."""
    if _n_pixels(image) > _STAND_IN_MAX_PX:
        return False
    rgb = _image_array(image)[..., :3]
    return bool(rgb.min() == rgb.max())


def _default_image(sdata: Any, source: Any) -> str | None:
    """Return the image with the most pixels, skipping single-colour placeholders."""
    names = sorted(sdata.images, key=lambda n: -_n_pixels(sdata.images[n]))
    usable = [n for n in names if not _is_placeholder(sdata.images[n])]
    if len(names) > 1:
        logger.info("%s: images %s; using %r (pass image=... to choose)", source, names, usable[:1])
    if names and not usable:
        msg = f"{source}: every image {names} is a single colour (placeholder)"
        raise ValueError(msg)
    return usable[0] if usable else None


def _image_array(image: Any) -> np.ndarray:
    """Finest scale of an image element as an ``(h, w, c)`` array (computed)."""
    arr = image["scale0"].image if hasattr(image, "children") else image
    arr = np.asarray(arr.transpose("y", "x", "c").data if "c" in arr.dims else arr.data)
    return arr


def read_spatialdata(
    sdata: Any,
    *,
    table: str | None = None,
    image: str | None = None,
    coordinate_system: str | None = None,
    library_id: str | None = None,
    mpp: float | None = None,
    spot_diameter_um: float | None = None,
    require_counts: bool = False,
) -> ad.AnnData:
    """Read one table of a SpatialData object (or ``.zarr`` store) as a stalign AnnData.

    Parameters
    ----------
    sdata
        A `spatialdata.SpatialData` or the path of its ``.zarr`` store.
    table
        Table name; default the only table (an error lists the names when there
        are several).
    image
        Image name; default the one with the most pixels that is not a
        single-colour placeholder (spatialdata-io's Visium: the full-resolution
        image if present, else ``hires``, else ``lowres``). Without any image the
        spots are read in the coordinate system's units.
    coordinate_system
        Where the image and the table's shapes meet; default ``'global'`` when both
        have it, else the shared system in which the shapes are untransformed
        (spatialdata-io's Visium: the dataset id, in full-resolution pixels).
    library_id
        Key in ``uns['spatial']``; default the table name.
    mpp
        µm per pixel of the image; default from a micrometre coordinate system
        (``'um'``, as `to_spatialdata` writes), else ``spot_diameter_um`` over
        the spots' diameter in image px.
    spot_diameter_um
        Physical spot diameter (e.g. 55 for Visium); default the table's
        ``uns['stalign']['spot_diameter_um']`` when stalign wrote it.
    require_counts
        Raise when neither ``layers['counts']`` nor ``X`` holds integer counts.

    Returns
    -------
    ad.AnnData
        AnnData in the reader layout: ``X`` (+ ``layers['counts']``), ``var['gene_ids']``,
        ``var['gene_symbols']``, ``obsm['spatial']`` (the spots' centres in level-0 px:
        the image's own pixels when it maps 1:1 or is large; coordinate-system units
        when a small image is scaled into them, as Visium's hires/lowres images are —
        then the image is kept in ``images['hires']`` with its scale factor; without
        image: coordinate-system units),
        ``uns['spatial'][library_id]`` (``scalefactors['spot_diameter_fullres']``) and
        ``uns['stalign']`` (``platform='spatialdata'``, ``image_path`` = the image's
        OME-Zarr folder for a stored object — read lazily — ``mpp``, ``mpp_source``).
        An image of an in-memory object is computed and kept as ``images['hires']``
        (use a stored object for whole-slide images).

    Raises
    ------
    FileNotFoundError
        No store at the path.
    ValueError
        Ambiguous or unknown element names, a table row without its shape, an image
        that is rotated/sheared in the coordinate system, or non-count data with
        ``require_counts``.
    """
    from ._h5ad import _from_anndata

    sdata, path = _load(sdata)
    source = path or "SpatialData object"
    tname = _pick("table", list(sdata.tables), table, source)
    if tname is None:
        msg = f"{source}: expected a table (AnnData) of spots or cells, found none"
        raise ValueError(msg)
    src = sdata.tables[tname]
    iname = (
        _pick("image", list(sdata.images), image, source)
        if image is not None
        else _default_image(sdata, source)
    )
    shapes, region, instance_key = _spots(sdata, src, source)
    prev = dict(src.uns.get(K.STALIGN, {}) or {})
    coordinate_system = _pick_system(
        [e for e in (sdata.images.get(iname) if iname else None, shapes) if e is not None],
        coordinate_system,
        source,
    )
    if spot_diameter_um is None and prev.get(K.SPOT_DIAMETER_UM):
        spot_diameter_um = float(prev[K.SPOT_DIAMETER_UM])

    to_px, estimates = np.eye(3), {"user": mpp}
    image_path, images, sf = None, {}, {}
    if iname is not None:
        element = sdata.images[iname]
        scale, shift = _scale_only(_affine(element, coordinate_system, source), "image", source)
        folder = path / "images" / iname if path is not None else None
        um = _micron_scale(element, coordinate_system)  # µm per coordinate-system unit
        stand_in = abs(scale - 1.0) > 1e-9 and _n_pixels(element) <= _STAND_IN_MAX_PX
        if folder is not None and folder.is_dir() and not stand_in:
            # level 0 = the image's own pixels, read lazily from its OME-Zarr folder
            image_path = folder
            to_px = np.array([[1, 0, -shift[0]], [0, 1, -shift[1]], [0, 0, 1]]) / np.array(
                [[scale], [scale], [1]]
            )
            estimates["spatialdata_um"] = None if um is None else um * scale
        else:
            # a small or in-memory image: kept as 'hires' with its scale factor, level 0 =
            # coordinate-system units (Visium lowres/hires: full-resolution pixels)
            images["hires"], sf[K.SF_HIRES] = _image_array(element), 1.0 / scale
            to_px = np.array([[1, 0, -shift[0]], [0, 1, -shift[1]], [0, 0, 1]])
            estimates["spatialdata_um"] = um
    if shapes is not None:
        xy_shape, diameter = _centres(shapes, src, instance_key, source)
        m = to_px @ _affine(shapes, coordinate_system, source)
        xy = xy_shape @ m[:2, :2].T + m[:2, 2]
        sf[K.SF_SPOT_DIAMETER] = float(np.median(diameter)) * abs(float(m[0, 0]))
    elif K.SPATIAL in src.obsm:
        xy = np.asarray(src.obsm[K.SPATIAL], dtype=float)[:, :2] @ to_px[:2, :2].T + to_px[:2, 2]
    else:
        msg = f"{source}: table {tname!r} has neither a shapes region nor obsm['spatial']"
        raise ValueError(msg)

    lib = library_id or tname
    table_in = ad.AnnData(X=src.X, obs=src.obs.copy(), var=src.var.copy(), layers=dict(src.layers))
    table_in.obsm[K.SPATIAL] = xy
    table_in.uns[K.SPATIAL] = {lib: {K.IMAGES: images, K.SCALEFACTORS: sf}}
    adata = _from_anndata(
        table_in,
        source=Path(str(source)),
        platform="spatialdata",
        image=None,
        mpp_estimates=estimates,
        library_id=lib,
        spot_diameter_um=spot_diameter_um,
        load_images=True,
        require_counts=require_counts,
        metadata={
            "spatialdata_path": None if path is None else str(path),
            "table": tname,
            "image": iname,
            "region": region,
            "coordinate_system": coordinate_system,
        },
    )
    adata.uns[K.STALIGN][K.IMAGE_PATH] = None if image_path is None else str(image_path)
    return adata
