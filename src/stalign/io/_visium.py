"""10x Visium and Visium HD Space Ranger output.

Visium (``outs/``)::

    filtered_feature_bc_matrix.h5 | filtered_feature_bc_matrix/ (mtx, gz or not)
    spatial/tissue_positions.parquet | tissue_positions.csv (2.x, header)
            | tissue_positions_list.csv (1.x, no header)
    spatial/scalefactors_json.json, tissue_hires_image.png, tissue_lowres_image.png

Visium HD (``outs/binned_outputs/square_{002,008,016}um/``) has the same layout per bin
size; its ``scalefactors_json.json`` also carries ``microns_per_pixel`` and
``bin_size_um``.

Positions are ``pxl_col_in_fullres``/``pxl_row_in_fullres``: level-0 pixels of the
full-resolution image given to Space Ranger. µm/px is ``55 µm / spot_diameter_fullres``
for Visium (spots are 55 µm wide) and ``microns_per_pixel`` for Visium HD.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .. import _keys as K
from ._core import (
    PathLike,
    absolute,
    as_path,
    assemble,
    check_coordinates,
    join_positions,
    make_var,
    read_json_object,
    read_table,
)
from ._image import image_info, thumbnails
from ._mpp import reconcile_mpp
from ._tenx import read_matrix

logger = logging.getLogger(__name__)

#: Visium spot diameter, µm.
VISIUM_SPOT_DIAMETER_UM = 55.0

_POSITION_COLUMNS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]
_POSITION_FILES = ("tissue_positions.parquet", "tissue_positions.csv", "tissue_positions_list.csv")
_COUNT_FILES = (
    "filtered_feature_bc_matrix.h5",
    "filtered_feature_bc_matrix",
    "raw_feature_bc_matrix.h5",
    "raw_feature_bc_matrix",
)
_REQUIRED_SCALEFACTORS = ("spot_diameter_fullres", "tissue_hires_scalef", "tissue_lowres_scalef")


def find_counts(folder: Path) -> Path:
    """Return the feature-barcode matrix of a Space Ranger folder (filtered first)."""
    for name in _COUNT_FILES:
        cand = folder / name
        if cand.exists():
            if name.startswith("raw"):
                logger.warning(
                    "%s: no filtered matrix; reading %s (all barcodes, use obs['in_tissue'])",
                    folder,
                    name,
                )
            return cand
    msg = f"{folder}: no feature-barcode matrix found; looked for {', '.join(_COUNT_FILES)}"
    raise FileNotFoundError(msg)


def read_positions(path: Path) -> pd.DataFrame:
    """Read a Space Ranger positions file (parquet, 2.x csv with header, 1.x without).

    Returns
    -------
    pd.DataFrame
        DataFrame indexed by barcode with ``in_tissue``, ``array_row``, ``array_col``,
        ``pxl_row_in_fullres``, ``pxl_col_in_fullres``.
    """
    if path.suffix.lower() == ".parquet":
        tab = read_table(path, what="tissue positions")
    else:
        what = "tissue positions CSV"
        first = read_table(path, what=what, header=None, nrows=1, dtype=str)
        has_header = str(first.iloc[0, 0]).strip().lower() == "barcode"
        tab = read_table(path, what=what, header=0 if has_header else None)
        if not has_header:
            if tab.shape[1] != len(_POSITION_COLUMNS):
                msg = (
                    f"{path}: expected {len(_POSITION_COLUMNS)} columns "
                    f"({', '.join(_POSITION_COLUMNS)}), found {tab.shape[1]}"
                )
                raise ValueError(msg)
            tab.columns = _POSITION_COLUMNS
    missing = [c for c in _POSITION_COLUMNS if c not in tab.columns]
    if missing:
        msg = (
            f"{path}: expected columns {_POSITION_COLUMNS}, missing {missing} "
            f"(found {list(tab.columns)})"
        )
        raise ValueError(msg)
    for c in _POSITION_COLUMNS[1:]:
        if not pd.api.types.is_numeric_dtype(tab[c]):
            msg = f"{path}: expected numeric column '{c}', found dtype {tab[c].dtype}"
            raise ValueError(msg)
    tab = tab.set_index(tab["barcode"].astype(str))
    return tab.drop(columns="barcode")


def read_scalefactors(path: Path, *, required: tuple[str, ...] = _REQUIRED_SCALEFACTORS) -> dict:
    """Read ``scalefactors_json.json``, checking the required keys are positive numbers."""
    if not path.is_file():
        msg = f"scale factors not found: expected '{path}' (Space Ranger spatial/ folder)"
        raise FileNotFoundError(msg)
    sf = read_json_object(path, what="JSON scale factors", fields="scale factors")
    missing = [k for k in required if k not in sf]
    if missing:
        msg = f"{path}: expected keys {list(required)}, missing {missing} (found {sorted(sf)})"
        raise ValueError(msg)
    for k in required:
        v = sf[k]
        if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v) or v <= 0:
            msg = f"{path}: expected '{k}' to be a positive number, found {v!r}"
            raise ValueError(msg)
    return sf


def _png_images(spatial_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """Load ``tissue_{hires,lowres}_image.png``; skip constant (placeholder) images."""
    from ._image import load_thumbnail

    images: dict[str, np.ndarray] = {}
    sizes: dict[str, tuple] = {}
    for res in ("hires", "lowres"):
        p = spatial_dir / f"tissue_{res}_image.png"
        if not p.is_file():
            continue
        info = image_info(p)
        arr, _ = load_thumbnail(p, max(info.width, info.height))
        if arr.min() == arr.max():
            logger.warning("%s: the image is a single colour (placeholder); not used", p)
            continue
        images[res] = arr
        sizes[res] = (info.width, info.height)
    return images, sizes


def _library_id(folder: Path) -> str:
    """Return the sample folder's name as given (a symbolic link keeps its own name)."""
    folder = absolute(folder)
    return folder.parent.name if folder.name == "outs" else folder.name


def _check_positions_in_frame(xy, pos_path: Path, image, info, sizes, sf) -> None:
    """Check that the positions lie inside the full-resolution image.

    Without one, inside the level-0 frame the PNGs bound (their size / scale factor).
    """
    if info is not None:
        check_coordinates(
            xy, image_size=(info.width, info.height), source=pos_path, image_source=image
        )
        return
    for res, (w, h) in sizes.items():
        s = sf[f"tissue_{res}_scalef"]
        check_coordinates(
            xy,
            image_size=(w / s, h / s),
            source=pos_path,
            image_source=pos_path.parent / f"tissue_{res}_image.png",
            tolerance_px=1.0 / s,
        )


def _mpp_estimates(
    sf: dict, *, hd: bool, spot_diameter_um: float | None
) -> tuple[float, dict[str, float | None]]:
    """``(spot or bin diameter in µm, µm/px estimates from the scale factors)``."""
    estimates: dict[str, float | None] = {}
    if hd:
        bin_um = float(sf.get("bin_size_um", spot_diameter_um or np.nan))
        spot_diameter_um = bin_um if spot_diameter_um is None else spot_diameter_um
        estimates["scalefactors"] = float(sf["microns_per_pixel"])
        # bin geometry is a second estimate: bin_size_um / spot_diameter_fullres
        estimates["spot_pitch"] = bin_um / float(sf["spot_diameter_fullres"])
    else:
        spot_diameter_um = spot_diameter_um or VISIUM_SPOT_DIAMETER_UM
        estimates["scalefactors"] = spot_diameter_um / float(sf["spot_diameter_fullres"])
    return spot_diameter_um, estimates


def _read_spaceranger(
    folder: Path,
    *,
    platform: str,
    counts_file: PathLike | None,
    image: PathLike | None,
    mpp: float | None,
    library_id: str | None,
    load_images: bool,
    missing_positions: str,
    spot_diameter_um: float | None,
    hd: bool,
) -> ad.AnnData:
    spatial_dir = folder / "spatial"
    counts_path = as_path(counts_file, what="counts") if counts_file else find_counts(folder)
    pos_path = next((spatial_dir / n for n in _POSITION_FILES if (spatial_dir / n).is_file()), None)
    if pos_path is None:
        msg = f"{spatial_dir}: no tissue positions found; looked for {', '.join(_POSITION_FILES)}"
        raise FileNotFoundError(msg)
    sf_path = spatial_dir / "scalefactors_json.json"
    required = (*_REQUIRED_SCALEFACTORS, "microns_per_pixel") if hd else _REQUIRED_SCALEFACTORS
    sf = read_scalefactors(sf_path, required=required)

    mat = read_matrix(counts_path)
    pos = read_positions(pos_path)
    pos, keep = join_positions(
        mat.barcodes,
        pos,
        counts_source=counts_path,
        positions_source=pos_path,
        missing=missing_positions,
    )
    X = mat.X[np.flatnonzero(keep)]
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)

    check_coordinates(xy, image_size=None, source=pos_path)  # finite, not all identical
    images, sizes = _png_images(spatial_dir) if load_images else ({}, {})
    info = image_info(image) if image is not None else None
    _check_positions_in_frame(xy, pos_path, image, info, sizes, sf)
    spot_diameter_um, estimates = _mpp_estimates(sf, hd=hd, spot_diameter_um=spot_diameter_um)
    estimates = {"user": mpp, **estimates}
    if info is not None:
        estimates["tiff_metadata"] = info.mpp
    mpp_value, mpp_source = reconcile_mpp(estimates, context=str(folder))

    obs = pd.DataFrame(index=pos.index)
    obs[K.IN_TISSUE] = pos["in_tissue"].to_numpy().astype(int) == 1
    obs[K.ARRAY_ROW] = pos["array_row"].to_numpy().astype(int)
    obs[K.ARRAY_COL] = pos["array_col"].to_numpy().astype(int)

    scalefactors = {k: float(v) for k, v in sf.items() if isinstance(v, int | float)}
    metadata = {
        "counts_path": str(absolute(counts_path)),
        "positions_path": str(absolute(pos_path)),
        "scalefactors_path": str(absolute(sf_path)),
        "n_dropped_without_position": int((~keep).sum()),
    }
    if info is not None:
        metadata["image_width"], metadata["image_height"] = info.width, info.height
    if info is not None and load_images and not images:
        images, scalefactors_img = thumbnails(image)  # type: ignore[arg-type]
        scalefactors.update(scalefactors_img)
    return assemble(
        X=X,
        obs_names=pos.index,
        var=make_var(mat.gene_ids, mat.gene_symbols, source=counts_path),
        spatial=xy,
        library_id=library_id or _library_id(folder),
        platform=platform,
        image_path=image,
        mpp=mpp_value,
        mpp_source=mpp_source,
        spot_diameter_um=spot_diameter_um,
        counts_source=counts_path,
        obs=obs,
        images=images,
        scalefactors=scalefactors,
        metadata=metadata,
    )


def read_visium(
    path: PathLike,
    *,
    counts_file: PathLike | None = None,
    image: PathLike | None = None,
    mpp: float | None = None,
    library_id: str | None = None,
    load_images: bool = True,
    missing_positions: str = "raise",
) -> ad.AnnData:
    """Read 10x Visium Space Ranger output (the ``outs/`` folder).

    Parameters
    ----------
    path
        Space Ranger ``outs/`` folder (holding the matrix and ``spatial/``).
    counts_file
        Matrix to read; default ``filtered_feature_bc_matrix.h5``, then the
        ``filtered_feature_bc_matrix/`` mtx folder, then the raw ones.
    image
        Full-resolution H&E given to Space Ranger (TIFF/JPEG), optional. Positions are
        in its level-0 pixels; it is checked to contain them.
    mpp
        µm per level-0 pixel, if known; otherwise ``55 µm / spot_diameter_fullres``.
        Estimates that differ by >10 % emit [`MppMismatchWarning`][stalign.io.MppMismatchWarning].
    library_id
        Key in ``uns['spatial']``; default the sample folder name.
    load_images
        Load ``tissue_hires_image.png``/``tissue_lowres_image.png`` into
        ``uns['spatial'][library_id]['images']`` (uint8, single-colour placeholders
        skipped); with ``image`` and no PNGs, thumbnails of ``image`` are made.
    missing_positions
        ``"raise"`` (default) or ``"drop"`` barcodes of the matrix absent from the
        positions file.

    Returns
    -------
    ad.AnnData
        AnnData (barcodes × genes) with ``X`` and ``layers['counts']`` (raw counts, CSR
        float32), ``var['gene_ids']``, ``var['gene_symbols']``, ``obs['in_tissue']``,
        ``obs['array_row']``, ``obs['array_col']``, ``obsm['spatial']`` (level-0 px of the
        full-resolution image, x = ``pxl_col_in_fullres``), ``uns['spatial'][library_id]``
        (``images``, ``scalefactors`` from the JSON, ``metadata``) and ``uns['stalign']``
        (``platform='visium'``, ``image_path`` (``None`` without ``image``), ``mpp``,
        ``mpp_source``, ``spot_diameter_um=55``).

    Raises
    ------
    FileNotFoundError
        Missing matrix, positions or ``scalefactors_json.json``.
    ValueError
        Malformed scale factors or positions, barcodes without positions, duplicated
        barcodes, non-integer/negative counts, positions outside the image.
    """
    folder = as_path(path, what="Space Ranger output folder")
    return _read_spaceranger(
        folder,
        platform="visium",
        counts_file=counts_file,
        image=image,
        mpp=mpp,
        library_id=library_id,
        load_images=load_images,
        missing_positions=missing_positions,
        spot_diameter_um=None,
        hd=False,
    )


def find_hd_bin_dir(path: Path, bin_size: int) -> Path:
    """Return ``binned_outputs/square_{bin:03d}um`` under ``path`` (or ``path`` itself)."""
    if (path / "spatial").is_dir() and path.name.startswith("square_"):
        return path
    name = f"square_{bin_size:03d}um"
    for cand in (path / "binned_outputs" / name, path / name):
        if cand.is_dir():
            return cand
    have = (
        sorted(p.name for p in (path / "binned_outputs").glob("square_*"))
        if (path / "binned_outputs").is_dir()
        else []
    )
    msg = (
        f"{path}: expected a Visium HD folder with binned_outputs/{name}/ "
        f"(found bins: {have or 'none'})"
    )
    raise FileNotFoundError(msg)


def read_visium_hd(
    path: PathLike,
    *,
    bin_size: int = 8,
    counts_file: PathLike | None = None,
    image: PathLike | None = None,
    mpp: float | None = None,
    library_id: str | None = None,
    load_images: bool = True,
    missing_positions: str = "raise",
) -> ad.AnnData:
    """Read one bin size of Visium HD Space Ranger output.

    Parameters
    ----------
    path
        Space Ranger ``outs/`` folder (with ``binned_outputs/``) or one
        ``square_XXXum`` folder.
    bin_size
        Bin size in µm: 2, 8 or 16 (``square_002um`` …); ignored when ``path`` is a
        ``square_XXXum`` folder.
    counts_file, image, mpp, library_id, load_images, missing_positions
        As in `read_visium`. ``mpp`` defaults to ``microns_per_pixel`` from the
        scale factors (cross-checked against ``bin_size_um / spot_diameter_fullres``).

    Returns
    -------
    ad.AnnData
        AnnData (bins × genes) laid out as [`read_visium`][stalign.io.read_visium] returns it, with
        ``uns['stalign']['platform'] = 'visium_hd'``, ``spot_diameter_um`` = the bin size
        (µm), ``mpp_source = 'scalefactors'`` (or ``'user'``). The library id defaults to
        ``<sample>_square_XXXum``.

    Raises
    ------
    FileNotFoundError, ValueError
        As [`read_visium`][stalign.io.read_visium]; also when ``microns_per_pixel`` is absent.
    """
    root = as_path(path, what="Visium HD output folder")
    folder = find_hd_bin_dir(root, bin_size)
    if library_id is None:
        sample = absolute(folder).parent
        sample = sample.parent if sample.name == "binned_outputs" else sample
        library_id = f"{_library_id(sample)}_{folder.name}"
    return _read_spaceranger(
        folder,
        platform="visium_hd",
        counts_file=counts_file,
        image=image,
        mpp=mpp,
        library_id=library_id,
        load_images=load_images,
        missing_positions=missing_positions,
        spot_diameter_um=None,
        hd=True,
    )
