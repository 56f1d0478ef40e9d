"""10x Xenium output: ``cell_feature_matrix.h5`` + ``cells.csv.gz``/``cells.parquet``.

Cell centroids are in µm. Without an H&E image, ``obsm['spatial']`` is in pixels of the
Xenium morphology image (0.2125 µm/px). With an H&E image and its 3×3 affine alignment
matrix (as exported by Xenium Explorer, ``*_he_imagealignment.csv``: H&E pixels →
morphology pixels), cells are placed on the H&E by the inverse transform. An alignment
matrix expressed in µm (H&E pixels → µm) is accepted with ``alignment_units='micron'``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from ._core import (
    PathLike,
    absolute,
    as_path,
    assemble,
    check_coordinates,
    join_positions,
    make_var,
    read_table,
)
from ._image import image_info, thumbnails
from ._mpp import reconcile_mpp
from ._tenx import read_matrix

logger = logging.getLogger(__name__)

#: µm per pixel of the Xenium morphology (DAPI) image.
XENIUM_MORPHOLOGY_MPP = 0.2125

_CELLS = ("cells.parquet", "cells.csv.gz", "cells.csv")
_MATRIX = ("cell_feature_matrix.h5", "cell_feature_matrix")


def _first(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for n in names:
        if (folder / n).exists():
            return folder / n
    msg = f"{folder}: no Xenium {what} found; looked for {', '.join(names)}"
    raise FileNotFoundError(msg)


def read_alignment_matrix(path: PathLike) -> np.ndarray:
    """Read a 3×3 affine matrix (CSV, comma/whitespace separated; optional header row)."""
    path = as_path(path, what="alignment matrix")
    try:
        text = path.read_text(encoding="utf-8")
        rows = [
            [float(v) for v in line.replace(",", " ").split()]
            for line in text.splitlines()
            if line.strip() and not line.strip()[0].isalpha()
        ]
        M = np.asarray(rows, dtype=float)
    except (ValueError, UnicodeDecodeError) as e:
        msg = f"{path}: expected a 3×3 numeric affine matrix, cannot parse it ({e})"
        raise ValueError(msg) from e
    if M.shape != (3, 3):
        msg = f"{path}: expected a 3×3 affine matrix, found shape {M.shape}"
        raise ValueError(msg)
    if not np.allclose(M[2], [0, 0, 1]) or abs(np.linalg.det(M[:2, :2])) < 1e-12:
        msg = f"{path}: expected an invertible affine matrix with last row [0, 0, 1], found {M[2]}"
        raise ValueError(msg)
    return M


def _alignment_matrix(image: PathLike | None, alignment) -> np.ndarray | None:
    """Return the 3×3 affine H&E alignment (an array or Xenium Explorer's CSV).

    None without an image; an image without its alignment is an error.
    """
    if image is None:
        return None
    if alignment is None:
        msg = (
            f"{image}: an H&E image needs its alignment matrix (alignment=..., the 3×3 "
            "'*_he_imagealignment.csv' from Xenium Explorer) to place the cells"
        )
        raise ValueError(msg)
    M = alignment if isinstance(alignment, np.ndarray) else read_alignment_matrix(alignment)
    M = np.asarray(M, dtype=float)
    if M.shape != (3, 3):
        msg = f"alignment: expected a 3×3 affine matrix, found shape {M.shape}"
        raise ValueError(msg)
    return M


def read_xenium(
    path: PathLike,
    *,
    image: PathLike | None = None,
    alignment: PathLike | np.ndarray | None = None,
    alignment_units: str = "pixel",
    mpp: float | None = None,
    library_id: str | None = None,
    load_images: bool = True,
    morphology_mpp: float = XENIUM_MORPHOLOGY_MPP,
) -> ad.AnnData:
    """Read 10x Xenium output (cells × genes) and place cells on an optional H&E image.

    Parameters
    ----------
    path
        Xenium output folder with ``cell_feature_matrix.h5`` (or the mtx folder) and
        ``cells.parquet`` / ``cells.csv.gz`` (``cell_id``, ``x_centroid``, ``y_centroid``
        in µm).
    image
        Post-Xenium H&E image (TIFF/JPEG/PNG), optional.
    alignment
        3×3 affine matrix (file or array) mapping H&E level-0 pixels to the Xenium frame;
        required with ``image``.
    alignment_units
        Units of the Xenium frame of ``alignment``: ``'pixel'`` (morphology image px,
        ``morphology_mpp`` µm each; Xenium Explorer's export) or ``'micron'``.
    mpp
        µm per level-0 px of ``image`` if known; otherwise from the alignment scale.
    library_id
        Key in ``uns['spatial']``; default the folder name.
    load_images
        Store thumbnails of ``image`` in ``uns['spatial'][library_id]['images']``.
    morphology_mpp
        µm per px of the morphology image (0.2125 for Xenium).

    Returns
    -------
    ad.AnnData
        AnnData (cells × genes; gene-expression features only) with ``X`` and
        ``layers['counts']``, ``var['gene_ids']``, ``var['gene_symbols']``, obs columns of
        the cells table (``transcript_counts``, ``cell_area`` µm², …), ``obsm['spatial']``
        (H&E level-0 px with ``image``; otherwise morphology px = centroid µm /
        ``morphology_mpp``), ``uns['spatial'][library_id]`` and ``uns['stalign']``
        (``platform='xenium'``, ``mpp`` and ``mpp_source`` = ``'xenium_alignment'``,
        ``'user'`` or ``'xenium_morphology'``, ``spot_diameter_um`` = median cell diameter
        from ``cell_area``).

    Raises
    ------
    FileNotFoundError
        Missing matrix, cells table, image or alignment file.
    ValueError
        Malformed tables or matrix, cells without centroids, ``image`` without
        ``alignment``, cells outside the image.
    """
    folder = as_path(path, what="Xenium output folder")
    if alignment_units not in ("pixel", "micron"):
        msg = f"alignment_units must be 'pixel' or 'micron', got {alignment_units!r}"
        raise ValueError(msg)
    M = _alignment_matrix(image, alignment)
    counts_path = _first(folder, _MATRIX, "cell-feature matrix")
    cells_path = _first(folder, _CELLS, "cells table")
    mat = read_matrix(counts_path)
    cells = read_table(cells_path, what="cells table")
    need = ["cell_id", "x_centroid", "y_centroid"]
    if [c for c in need if c not in cells.columns]:
        msg = f"{cells_path}: expected columns {need}, found {list(cells.columns)}"
        raise ValueError(msg)
    cells.index = pd.Index(cells.pop("cell_id").astype(str).to_numpy())
    cells, keep = join_positions(
        mat.barcodes, cells, counts_source=counts_path, positions_source=cells_path, missing="raise"
    )
    um = cells[["x_centroid", "y_centroid"]].to_numpy(float)
    check_coordinates(um, image_size=None, source=cells_path)  # finite, not all identical

    images: dict = {}
    scalefactors: dict = {}
    info = None
    if image is None:
        if alignment is not None:
            logger.warning("%s: alignment given without image; ignored", folder)
        xy = um / morphology_mpp
        if mpp is not None:
            logger.warning(
                "%s: mpp=%s ignored: without an H&E image the coordinates are morphology px "
                "(%s µm/px)",
                folder,
                mpp,
                morphology_mpp,
            )
        estimates = {"xenium_morphology": morphology_mpp}
    else:
        info = image_info(image)
        unit_um = morphology_mpp if alignment_units == "pixel" else 1.0
        frame = um / unit_um  # cells in the alignment's target frame
        inv = np.linalg.inv(M)  # type: ignore[arg-type]
        xy = (np.c_[frame, np.ones(len(frame))] @ inv.T)[:, :2]
        # µm per H&E pixel from the linear part (geometric mean of the two axes)
        estimates = {
            "user": mpp,
            "xenium_alignment": float(np.sqrt(abs(np.linalg.det(M[:2, :2])))) * unit_um,  # type: ignore[index]
            "tiff_metadata": info.mpp,
        }
        check_coordinates(
            xy, image_size=(info.width, info.height), source=cells_path, image_source=image
        )
        if load_images:
            images, scalefactors = thumbnails(image)
    mpp_value, mpp_source = reconcile_mpp(estimates, context=str(folder))
    if "cell_area" in cells.columns:
        diameter = float(np.median(2 * np.sqrt(cells["cell_area"].to_numpy(float) / np.pi)))
    else:
        diameter = None
    obs = cells.drop(columns=["x_centroid", "y_centroid"]).copy()
    obs["x_centroid_um"], obs["y_centroid_um"] = um[:, 0], um[:, 1]
    metadata = {
        "counts_path": str(absolute(counts_path)),
        "cells_path": str(absolute(cells_path)),
        "morphology_mpp": float(morphology_mpp),
        "alignment_units": alignment_units if image is not None else None,
    }
    return assemble(
        X=mat.X[np.flatnonzero(keep)],
        obs_names=cells.index,
        var=make_var(mat.gene_ids, mat.gene_symbols, source=counts_path),
        spatial=xy,
        library_id=library_id or absolute(folder).name,
        platform="xenium",
        image_path=image,
        mpp=mpp_value,
        mpp_source=mpp_source,
        spot_diameter_um=diameter,
        counts_source=counts_path,
        obs=obs,
        images=images,
        scalefactors=scalefactors,
        metadata=metadata,
    )
