"""AnnData files: any ``.h5ad`` with ``obsm['spatial']``, and HEST-1k samples.

HEST-1k layout (one sample ``<id>``)::

    st/<id>.h5ad           counts, obsm['spatial'] in level-0 px of the WSI
    wsis/<id>.tif          pyramidal H&E
    metadata/<id>.json     pixel_size_um_estimated, st_technology, spot_diameter, ...

A generic ``.h5ad`` need not hold counts (e.g. squidpy's log-normalised example):
then ``X`` is kept as it is, ``layers['counts']`` is not written,
``uns['stalign']['x_is_counts']`` is ``False`` and a warning says so — downstream code
that needs counts can check the flag (or call with ``require_counts=True`` to fail).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .. import _keys as K
from ._core import (
    PathLike,
    absolute,
    as_path,
    assemble,
    check_coordinates,
    find_file,
    make_var,
    read_json_object,
)
from ._image import image_info, thumbnails, to_rgb_uint8
from ._mpp import reconcile_mpp

logger = logging.getLogger(__name__)

_WSI_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".svs", ".btf")
_SPOT_DIAMETER_BY_TECH = {"visium": 55.0, "visium hd": 8.0, "spatial transcriptomics": 100.0}


def _is_integer_matrix(X: Any) -> bool:
    data = X.data if sp.issparse(X) else np.asarray(X)
    data = np.asarray(data)
    if data.size == 0:
        return True
    return bool(np.all(np.isfinite(data)) and data.min() >= 0 and np.all(data == np.round(data)))


def _to_uint8(img: np.ndarray, *, source: str) -> np.ndarray:
    """Return an ``uns['spatial']`` image as uint8 RGB (floats in [0, 1] or [0, 255])."""
    img = np.asarray(img)
    if img.dtype.kind == "f" and float(np.nanmax(img, initial=0.0)) > 1.0:
        img = img / 255.0
    return to_rgb_uint8(img, source=source)


def _from_anndata(
    src: ad.AnnData,
    *,
    source: Path,
    platform: str,
    image: PathLike | None,
    mpp_estimates: dict[str, float | None],
    library_id: str | None,
    spot_diameter_um: float | None,
    load_images: bool,
    require_counts: bool,
    metadata: dict[str, Any],
) -> ad.AnnData:
    if K.SPATIAL not in src.obsm:
        msg = (
            f"{source}: expected spot coordinates in obsm['spatial'], "
            f"found obsm keys {list(src.obsm)}"
        )
        raise ValueError(msg)
    xy = np.asarray(src.obsm[K.SPATIAL], dtype=float)[:, :2]
    # counts: layers['counts'] if present, else X when it holds integers
    if K.COUNTS_LAYER in src.layers:
        X, is_counts = src.layers[K.COUNTS_LAYER], True
    elif _is_integer_matrix(src.X):
        X, is_counts = src.X, True
    else:
        if require_counts:
            msg = (
                f"{source}: expected raw integer counts in X or layers['counts'], found "
                "non-integer values in X (normalised data?)"
            )
            raise ValueError(msg)
        X, is_counts = src.X, False
        logger.warning(
            "%s: X holds non-integer values (normalised?), not raw counts; kept as is, "
            "without layers['counts'] (uns['stalign']['x_is_counts'] = False)",
            source,
        )
    ids = src.var["gene_ids"] if "gene_ids" in src.var else src.var_names
    symbols = src.var[K.GENE_SYMBOLS] if K.GENE_SYMBOLS in src.var else src.var_names
    var = make_var(np.asarray(ids, dtype=str), np.asarray(symbols, dtype=object), source=source)

    lib_in = next(iter(src.uns.get(K.SPATIAL, {}) or {}), None)
    spatial_in = src.uns[K.SPATIAL][lib_in] if lib_in is not None else {}
    scalefactors = {
        k: float(v)
        for k, v in dict(spatial_in.get(K.SCALEFACTORS, {})).items()
        if isinstance(v, int | float | np.number)
    }
    images = {
        k: _to_uint8(v, source=f"{source}: uns['spatial'][{lib_in!r}]['images'][{k!r}]")
        for k, v in dict(spatial_in.get(K.IMAGES, {})).items()
    }

    check_coordinates(xy, image_size=None, source=source)  # finite, not all identical
    info = image_info(image) if image is not None else None
    if info is not None:
        check_coordinates(
            xy, image_size=(info.width, info.height), source=source, image_source=image
        )
        mpp_estimates = {**mpp_estimates, "tiff_metadata": info.mpp}
        if load_images:
            # the file's own thumbnails may belong to another frame (e.g. a crop of the
            # original image): derive them from the image the coordinates refer to
            images, sf_img = thumbnails(image)
            scalefactors.update(sf_img)
    if spot_diameter_um is not None and K.SF_SPOT_DIAMETER in scalefactors:
        mpp_estimates.setdefault(
            "scalefactors", spot_diameter_um / scalefactors[K.SF_SPOT_DIAMETER]
        )
    mpp_value, mpp_source = reconcile_mpp(mpp_estimates, context=str(source))
    if mpp_value is None:
        logger.warning("%s: µm/px unknown; pass mpp=... (µm per level-0 px)", source)
    obs = src.obs.copy()
    return assemble(
        X=X,
        obs_names=src.obs_names,
        var=var,
        spatial=xy,
        library_id=library_id or lib_in or source.stem,
        platform=platform,
        image_path=image,
        mpp=mpp_value,
        mpp_source=mpp_source,
        spot_diameter_um=spot_diameter_um,
        counts_source=source,
        obs=obs,
        images=images if load_images else {},
        scalefactors=scalefactors,
        metadata=metadata,
        is_counts=is_counts,
        extra_uns={K.X_IS_COUNTS: is_counts},
    )


def _load_h5ad(path: Path) -> ad.AnnData:
    try:
        return ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as e:
        msg = f"{path}: cannot read it as an .h5ad AnnData file ({type(e).__name__}: {e})"
        raise ValueError(msg) from e


def read_h5ad(
    path: PathLike,
    *,
    image: PathLike | None = None,
    mpp: float | None = None,
    spot_diameter_um: float | None = None,
    library_id: str | None = None,
    load_images: bool = True,
    require_counts: bool = False,
) -> ad.AnnData:
    """Read any ``.h5ad`` whose ``obsm['spatial']`` holds level-0 pixels of its H&E image.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    image
        H&E image that ``obsm['spatial']`` refers to; default
        ``uns['stalign']['image_path']`` of the file when it exists.
    mpp
        µm per level-0 px; default ``uns['stalign']['mpp']`` of the file, else
        ``spot_diameter_um / spot_diameter_fullres`` when both are known, else the TIFF
        resolution tags. Estimates differing by >10 % warn.
    spot_diameter_um
        Physical spot diameter (e.g. 55 for Visium), used for the µm/px estimate.
    library_id
        Key in ``uns['spatial']``; default the file's own library id or the file stem.
    load_images
        Keep the file's ``uns['spatial']`` images (converted to uint8) or, when absent,
        make thumbnails of ``image``.
    require_counts
        Raise instead of warning when neither ``layers['counts']`` nor ``X`` holds
        integer counts.

    Returns
    -------
    ad.AnnData
        AnnData in the reader layout: ``X`` (and ``layers['counts']`` when counts were
        found: from ``layers['counts']`` first, else from an integer ``X``), ``obs`` as in the
        file, ``var['gene_ids']``, ``var['gene_symbols']``, ``obsm['spatial']``,
        ``uns['spatial'][library_id]`` (file images/scale factors kept) and
        ``uns['stalign']`` (``platform='h5ad'``, ``image_path``, ``mpp``, ``mpp_source``,
        ``spot_diameter_um``, ``x_is_counts``). Other ``obsm``/``obsp``/``uns`` entries of
        the file are not carried over.

    Raises
    ------
    FileNotFoundError
        Missing file or image.
    ValueError
        No ``obsm['spatial']``, unreadable file, duplicated obs names, negative counts
        in ``layers['counts']``, coordinates outside ``image``, or non-count ``X`` with
        ``require_counts=True``.
    """
    path = as_path(path, what=".h5ad file")
    src = _load_h5ad(path)
    prev = dict(src.uns.get(K.STALIGN, {}) or {})
    if image is None and prev.get(K.IMAGE_PATH):
        image = prev[K.IMAGE_PATH]
    estimates: dict[str, float | None] = {"user": mpp}
    if mpp is None and prev.get(K.MPP):
        estimates[str(prev.get(K.MPP_SOURCE) or "file")] = float(prev[K.MPP])
    if spot_diameter_um is None and prev.get(K.SPOT_DIAMETER_UM):
        spot_diameter_um = float(prev[K.SPOT_DIAMETER_UM])
    return _from_anndata(
        src,
        source=path,
        platform=str(prev.get(K.PLATFORM) or "h5ad"),
        image=image,
        mpp_estimates=estimates,
        library_id=library_id,
        spot_diameter_um=spot_diameter_um,
        load_images=load_images,
        require_counts=require_counts,
        metadata={"h5ad_path": str(absolute(path))},
    )


def find_hest_files(path: PathLike, sample_id: str | None = None) -> dict[str, Any]:
    """Locate ``st/<id>.h5ad``, ``wsis/<id>.tif`` and ``metadata/<id>.json`` of a HEST sample.

    Parameters
    ----------
    path
        HEST root (with ``st/``, ``wsis/``, ``metadata/``) or the sample's ``.h5ad``.
    sample_id
        Sample id; needed when the root holds several samples.

    Notes
    -----
    File names are matched ignoring case (``wsis/<id>.TIF``) and taken from the path
    given: a symbolic link ``st/<id>.h5ad`` finds ``wsis/`` beside the link, not
    beside its target.
    """
    path = absolute(as_path(path, what="HEST sample"))
    if path.is_file():
        root, sample_id = path.parent.parent, sample_id or path.stem
        h5ad: Path | None = path
    else:
        root = path
        if sample_id is None:
            ids = sorted(
                Path(e.name).stem
                for e in (os.scandir(root / "st") if (root / "st").is_dir() else [])
                if e.name.lower().endswith(".h5ad") and e.is_file()
            )
            if len(ids) != 1:
                msg = (
                    f"{root}: expected a HEST folder with st/<id>.h5ad; found "
                    f"{len(ids)} samples {ids[:10]}: pass sample_id=..."
                )
                raise ValueError(msg)
            sample_id = ids[0]
        h5ad = find_file(root / "st", [f"{sample_id}.h5ad"])
    wsi = find_file(root / "wsis", [f"{sample_id}{s}" for s in _WSI_SUFFIXES])
    meta = find_file(root / "metadata", [f"{sample_id}.json"])
    return {
        "h5ad": h5ad if h5ad is not None and h5ad.is_file() else None,
        "wsi": wsi,
        "metadata": meta,
        "sample_id": str(sample_id),
    }


def read_hest(
    path: PathLike,
    sample_id: str | None = None,
    *,
    mpp: float | None = None,
    library_id: str | None = None,
    load_images: bool = True,
    use_wsi: bool = True,
) -> ad.AnnData:
    """Read one HEST-1k sample (``st/<id>.h5ad`` + ``wsis/<id>.tif`` + ``metadata/<id>.json``).

    Parameters
    ----------
    path
        HEST root folder or the sample's ``st/<id>.h5ad``.
    sample_id
        Sample id (``TENX95``, …); needed when the root holds several samples.
    mpp
        µm per level-0 px of the WSI; default ``pixel_size_um_estimated`` from the
        metadata JSON (cross-checked with ``pixel_size_um_embedded`` and the TIFF tags).
    library_id
        Key in ``uns['spatial']``; default the sample id.
    load_images
        Store ``hires``/``lowres`` thumbnails of the WSI (read from a small pyramid level).
    use_wsi
        ``False``: neither require nor open ``wsis/<id>.tif`` (for a folder whose
        ``patches/`` are reused); ``image_path`` still names the WSI when it exists,
        unchecked, and µm/px comes from the metadata alone.

    Returns
    -------
    ad.AnnData
        AnnData in the reader layout (see [`read_h5ad`][stalign.io.read_h5ad]) with
        ``uns['stalign']``
        ``platform='hest'``, ``image_path`` = the WSI, ``mpp_source='hest_metadata'`` (or
        ``'user'``), ``spot_diameter_um`` from the metadata (``spot_diameter``, else by
        ``st_technology``), and the metadata JSON in ``uns['spatial'][id]['metadata']``.

    Raises
    ------
    FileNotFoundError
        Missing h5ad, WSI or metadata JSON.
    ValueError
        Unparsable metadata, a missing ``pixel_size_um_estimated``, no count matrix, or
        spots outside the WSI.
    """
    found = find_hest_files(path, sample_id)
    sid = str(found["sample_id"])
    for key, what in (
        ("h5ad", f"st/{sid}.h5ad"),
        ("wsi", f"wsis/{sid}.tif"),
        ("metadata", f"metadata/{sid}.json"),
    ):
        if found[key] is None and (use_wsi or key != "wsi"):
            msg = f"HEST sample {sid!r} under '{path}': expected {what}, not found"
            raise FileNotFoundError(msg)
    meta_path: Path = found["metadata"]  # type: ignore[assignment]
    meta = read_json_object(meta_path, what="HEST metadata JSON", fields="metadata fields")
    if "pixel_size_um_estimated" not in meta:
        msg = f"{meta_path}: expected key 'pixel_size_um_estimated' (µm/px), found {sorted(meta)}"
        raise ValueError(msg)
    estimates: dict[str, float | None] = {
        "user": mpp,
        "hest_metadata": _number(meta, "pixel_size_um_estimated", meta_path),
        "embedded": _number(meta, "pixel_size_um_embedded", meta_path, required=False),
    }
    diameter = _number(meta, "spot_diameter", meta_path, required=False)
    if diameter is None:
        tech = str(meta.get("st_technology", "")).strip().lower()
        diameter = _SPOT_DIAMETER_BY_TECH.get(tech)
    h5ad_path: Path = found["h5ad"]  # type: ignore[assignment]
    src = _load_h5ad(h5ad_path)
    clean_meta = {k: v for k, v in meta.items() if isinstance(v, str | int | float | bool)}
    adata = _from_anndata(
        src,
        source=h5ad_path,
        platform="hest",
        image=found["wsi"] if use_wsi else None,
        mpp_estimates=estimates,
        library_id=library_id or sid,
        spot_diameter_um=diameter,
        load_images=load_images and use_wsi,
        require_counts=True,
        metadata={"hest": clean_meta, "metadata_path": str(absolute(meta_path))},
    )
    if not use_wsi and found["wsi"] is not None:
        adata.uns[K.STALIGN][K.IMAGE_PATH] = str(Path(found["wsi"]).resolve())
    return adata


def _number(meta: dict, key: str, path: Path, *, required: bool = True) -> float | None:
    v = meta.get(key)
    if v is None and not required:
        return None
    try:
        out = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        msg = f"{path}: expected '{key}' to be a number, found {v!r}"
        raise ValueError(msg) from e
    if not np.isfinite(out) or out <= 0:
        msg = f"{path}: expected '{key}' to be a positive number, found {v!r}"
        raise ValueError(msg)
    return out
