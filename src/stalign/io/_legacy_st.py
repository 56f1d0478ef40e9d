"""Legacy Spatial Transcriptomics (Ståhl et al. 2016; ST Spot Detector / STUtility tables).

Inputs of one section (names as in ``data/examples/mob``)::

    MOB1.tsv.gz                counts, spots × genes, spot ids "XxY" (or genes × spots)
    alignment_table_MOB1.tsv   x, y (array), pixel_x, pixel_y (H&E px), selected (under tissue)
    MOB1.jpg                   H&E; pixel_x/pixel_y are its level-0 pixels
    mouse_genes.tsv.gz         optional: gene id -> gene name

µm/px comes from the array geometry: spots are 200 µm centre to centre along array rows
and columns. In the MOB tables the array coordinates form a checkerboard (``x + y`` is
always even: column x = 1 holds y = 1, 3, 5, ...), i.e. spots of one array row are 2
units apart in x and spots of one column 2 units apart in y; one array unit is therefore
200 µm / 2 = 100 µm, and diagonal neighbours (x ± 1, y ± 1) are 141 µm apart. On a full
square grid (every integer x, y) one unit is the whole 200 µm pitch. We detect the step
from the data, fit an affine map array -> pixel robustly (so a few mis-detected spots do
not bias it) and convert pixels per unit into µm/px along x and y.
"""

from __future__ import annotations

import logging
import os
import re
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
    find_file,
    join_positions,
    make_var,
    read_table,
)
from ._image import image_info, thumbnails
from ._mpp import MPP_PLAUSIBLE_RANGE, reconcile_mpp

logger = logging.getLogger(__name__)

_SPOT_ID = re.compile(r"^\d+(\.\d+)?x\d+(\.\d+)?$")
_COUNT_SUFFIXES = (".tsv.gz", ".tsv", ".csv.gz", ".csv", ".txt.gz", ".txt")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")

#: Centre-to-centre distance of legacy ST spots along array rows/columns, µm.
ST_SPOT_PITCH_UM = 200.0
#: Legacy ST spot diameter, µm.
ST_SPOT_DIAMETER_UM = 100.0
#: Below this many image px per array unit the pixel coordinates carry no scale.
_MIN_PX_PER_UNIT = 1e-3
#: The array x and y axes must be at least ~30° apart on the image (sin 30° = 0.5).
_MIN_AXIS_SIN = 0.5


def _strip(name: str) -> str:
    """Section name of a counts file: ``B4.tsv.gz`` / ``B4.TSV.GZ`` -> ``B4``."""
    for suf in _COUNT_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def _resolve_counts(path: Path) -> Path:
    """Accept the counts file itself or a section prefix such as ``.../MOB1``.

    Never follows a symbolic link to derive names: ``st/B4.tsv.gz`` stays ``B4`` even
    when it links to ``.../B4/counts.tsv.gz``.
    """
    if path.is_file():
        return path
    cand = find_file(path.parent, [path.name + suf for suf in _COUNT_SUFFIXES])
    if cand is not None:
        return cand
    tried = ", ".join(path.name + s for s in _COUNT_SUFFIXES)
    msg = f"legacy ST counts not found: expected '{path}' or one of {tried} in '{path.parent}'"
    raise FileNotFoundError(msg)


def find_legacy_st_files(path: PathLike) -> dict[str, Path | None]:
    """Locate the files of a legacy ST section from its counts file or prefix.

    Parameters
    ----------
    path
        Counts file (``MOB1.tsv.gz``) or section prefix (``.../MOB1``).

    Returns
    -------
    dict[str, Path | None]
        Dict with ``counts``, ``positions`` (``alignment_table_<section>.tsv`` or
        ``<section>_spots.tsv``/``spots_<section>.tsv``/``<section>_alignment.tsv``, each
        gzipped or not), ``image`` (``<section>.jpg|jpeg|png|tif|tiff``) and ``genes``
        (``*genes.tsv[.gz]`` in the same folder); missing ones are ``None``.

        Names are matched ignoring case (``B4.TSV.GZ``, ``B4.JPG``) and are taken from the
        path given, never from the target of a symbolic link: for ``st/B4.tsv.gz`` ->
        ``../raw/B4/counts.tsv.gz`` the siblings are ``st/B4_spots.tsv``, ``st/B4.jpg``.
    """
    counts = _resolve_counts(absolute(path))
    stem = _strip(counts.name)
    folder = counts.parent
    position_names = [
        f"alignment_table_{stem}.tsv",
        f"{stem}_spots.tsv",
        f"spots_{stem}.tsv",
        f"{stem}_alignment.tsv",
    ]
    positions = find_file(folder, [n + gz for n in position_names for gz in ("", ".gz")])
    image = find_file(folder, [stem + s for s in _IMAGE_SUFFIXES])
    genes = next(
        (
            folder / e.name
            for e in sorted(os.scandir(folder), key=lambda e: e.name)
            if e.is_file() and re.search(r"genes\.tsv(\.gz)?$", e.name, re.IGNORECASE)
        ),
        None,
    )
    return {"counts": counts, "positions": positions, "image": image, "genes": genes}


def _read_counts(path: Path) -> pd.DataFrame:
    sep = "," if ".csv" in path.name.lower() else "\t"
    what = "counts table (" + ("comma" if sep == "," else "tab") + "-separated)"
    df = read_table(path, what=what, sep=sep, index_col=0)
    if df.shape[1] == 0 or df.shape[0] == 0:
        msg = f"{path}: expected a counts table with spots and genes, found {df.shape[0]} rows"
        msg += f" × {df.shape[1]} columns"
        raise ValueError(msg)
    # pandas renames repeated header names ('Actb', 'Actb.1'): restore them as written
    header = read_table(path, what=what, sep=sep, header=None, nrows=1, dtype=str)
    header = header.iloc[0, 1:].fillna("").astype(str)
    df.index = df.index.astype(str)
    df.columns = header.to_numpy() if len(header) == df.shape[1] else df.columns.astype(str)
    rows_are_spots = df.index.str.match(_SPOT_ID).mean() > 0.9
    cols_are_spots = df.columns.str.match(_SPOT_ID).mean() > 0.9
    if not rows_are_spots and cols_are_spots:
        df = df.T  # genes × spots (classic ST pipeline output)
    elif not rows_are_spots:
        msg = (
            f"{path}: expected spot ids like '10x12' (array x 'x' y) in the first column "
            f"or the header, found e.g. {list(df.index[:3])} / {list(df.columns[:3])}"
        )
        raise ValueError(msg)
    non_numeric = [c for c, t in df.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
    if non_numeric:
        msg = (
            f"{path}: expected numeric counts, found non-numeric values in "
            f"{len(non_numeric)} genes (e.g. {non_numeric[:3]})"
        )
        raise ValueError(msg)
    return df


def _read_positions(path: Path) -> pd.DataFrame:
    tab = read_table(path, what="alignment table (tab-separated)", sep="\t")
    need = ["x", "y", "pixel_x", "pixel_y"]
    missing = [c for c in need if c not in tab.columns]
    if missing:
        msg = f"{path}: expected columns {need} (+ optional 'selected'), found {list(tab.columns)}"
        raise ValueError(msg)
    if len(tab) == 0:
        msg = f"{path}: expected one row per spot, found a header without rows"
        raise ValueError(msg)
    for c in need:
        if not pd.api.types.is_numeric_dtype(tab[c]):
            msg = f"{path}: expected numeric column '{c}', found dtype {tab[c].dtype}"
            raise ValueError(msg)
    values = tab[need].to_numpy(float)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        rows = [int(i) + 2 for i in np.flatnonzero(bad)[:5]]  # file lines (1 = header)
        msg = (
            f"{path}: expected finite x, y, pixel_x, pixel_y, found {int(bad.sum())} rows "
            f"with NaN/inf or empty values (lines {rows})"
        )
        raise ValueError(msg)
    ids = tab["x"].map(_fmt_coord) + "x" + tab["y"].map(_fmt_coord)
    tab.index = pd.Index(ids, name="spot_id")
    return tab


def _fmt_coord(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _read_gene_names(path: Path) -> pd.Series:
    tab = read_table(path, what="gene table (tab-separated)", sep="\t")
    name_col = next(
        (c for c in ("gene_name", "symbol", "gene_symbol", "name") if c in tab.columns), None
    )
    if name_col is None or tab.shape[1] < 2:
        msg = (
            f"{path}: expected a gene id column and a 'gene_name' column, found {list(tab.columns)}"
        )
        raise ValueError(msg)
    return pd.Series(tab[name_col].astype(str).to_numpy(), index=tab.iloc[:, 0].astype(str))


def _robust_affine(src: np.ndarray, dst: np.ndarray, n_iter: int = 5) -> np.ndarray:
    """Least-squares affine ``dst ≈ [src, 1] @ M`` refitted without outliers (3 × MAD)."""
    A = np.c_[src, np.ones(len(src))]
    keep = np.ones(len(src), dtype=bool)
    M = np.zeros((3, 2))
    for _ in range(n_iter):
        M, *_ = np.linalg.lstsq(A[keep], dst[keep], rcond=None)
        res = np.linalg.norm(A @ M - dst, axis=1)
        mad = np.median(np.abs(res[keep] - np.median(res[keep]))) + 1e-9
        new_keep = res <= np.median(res[keep]) + 3 * 1.4826 * mad
        if new_keep.sum() < 3 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return M


def _array_step(coord: np.ndarray, other: np.ndarray) -> float:
    """Array-unit step between neighbouring spots of the same row (same ``other``)."""
    steps = []
    for v in np.unique(other):
        c = np.sort(np.unique(coord[other == v]))
        if len(c) > 1:
            steps.append(np.diff(c).min())
    if not steps:
        return 1.0
    return float(np.median(steps))


def estimate_mpp_from_grid(
    positions: pd.DataFrame,
    *,
    spot_pitch_um: float = ST_SPOT_PITCH_UM,
    source: PathLike | None = None,
) -> dict[str, float]:
    """Estimate µm/px of the H&E from the array geometry of a legacy ST section.

    Parameters
    ----------
    positions
        Table with array ``x``, ``y`` and image ``pixel_x``, ``pixel_y``.
    spot_pitch_um
        Centre-to-centre distance of spots along an array row or column, µm.
    source
        File the table came from (named in error messages).

    Returns
    -------
    dict[str, float]
        ``{'mpp': geometric mean, 'mpp_x', 'mpp_y', 'px_per_unit_x', 'px_per_unit_y',
        'um_per_unit_x', 'um_per_unit_y', 'residual_px'}`` (µm/px, px, µm).

    Raises
    ------
    ValueError
        Fewer than 3 spots, or pixel coordinates that do not follow the array (all
        identical, or constant along one image axis): no scale can be estimated.
    """
    where = f"{source}: " if source is not None else ""
    arr = positions[["x", "y"]].to_numpy(float)
    pix = positions[["pixel_x", "pixel_y"]].to_numpy(float)
    if len(arr) < 3:
        msg = (
            f"{where}need at least 3 spots with array and pixel coordinates to estimate "
            f"µm/px, got {len(arr)}"
        )
        raise ValueError(msg)
    M = _robust_affine(arr, pix)
    px_x = float(np.linalg.norm(M[0]))  # pixels per array unit along x
    px_y = float(np.linalg.norm(M[1]))
    # the array axes must map to two independent image directions (|sin| of their angle)
    sin_angle = abs(float(np.linalg.det(M[:2]))) / max(px_x * px_y, 1e-300)
    if min(px_x, px_y) < _MIN_PX_PER_UNIT or sin_angle < _MIN_AXIS_SIN:
        msg = (
            f"{where}the pixel coordinates do not follow the spot array (pixel_x in "
            f"[{pix[:, 0].min():g}, {pix[:, 0].max():g}], pixel_y in [{pix[:, 1].min():g}, "
            f"{pix[:, 1].max():g}]); expected spot centres spread over the image along "
            "both array axes"
        )
        raise ValueError(msg)
    um_x = spot_pitch_um / _array_step(arr[:, 0], arr[:, 1])
    um_y = spot_pitch_um / _array_step(arr[:, 1], arr[:, 0])
    mpp_x, mpp_y = um_x / px_x, um_y / px_y
    resid = np.linalg.norm(np.c_[arr, np.ones(len(arr))] @ M - pix, axis=1)
    return {
        "mpp": float(np.sqrt(mpp_x * mpp_y)),
        "mpp_x": mpp_x,
        "mpp_y": mpp_y,
        "px_per_unit_x": px_x,
        "px_per_unit_y": px_y,
        "um_per_unit_x": um_x,
        "um_per_unit_y": um_y,
        "residual_px": float(np.median(resid)),
    }


def _input_paths(
    counts: PathLike, positions: PathLike | None, image: PathLike | None, genes: PathLike | None
) -> tuple[Path, Path, Path | None, Path | None]:
    """Return the counts, alignment table, image and gene table paths of one section."""
    found = find_legacy_st_files(counts)
    counts_path: Path = found["counts"]  # type: ignore[assignment]  # never None
    if positions is None:
        if found["positions"] is None:
            stem = _strip(counts_path.name)
            msg = (
                f"no alignment table for {counts_path}: expected "
                f"'alignment_table_{stem}.tsv' in '{counts_path.parent}' or positions=..."
            )
            raise FileNotFoundError(msg)
        positions_path = found["positions"]
    else:
        positions_path = as_path(positions, what="alignment table")
    image_path = as_path(image, what="H&E image") if image is not None else found["image"]
    genes_path = as_path(genes, what="gene table") if genes is not None else found["genes"]
    return counts_path, positions_path, image_path, genes_path


def _gene_symbols(gene_ids: pd.Index, genes_path: Path, counts_path: Path) -> pd.Index:
    """Map gene ids to symbols with the gene table (retrying without Ensembl versions)."""
    names = _read_gene_names(genes_path)
    symbols = gene_ids.map(names)
    if symbols.isna().all():  # try without Ensembl version suffixes
        unversioned = pd.Series(
            names.to_numpy(), index=names.index.str.replace(r"\.\d+$", "", regex=True)
        )
        unversioned = unversioned[~unversioned.index.duplicated()]
        symbols = gene_ids.str.replace(r"\.\d+$", "", regex=True).map(unversioned)
    n_unmapped = int(symbols.isna().sum())
    if n_unmapped == len(gene_ids):
        logger.warning("%s: no gene id of %s found; keeping ids", genes_path, counts_path)
    elif n_unmapped:
        logger.info("%s: %d gene ids without a symbol", genes_path, n_unmapped)
    return symbols


def _grid_mpp(
    tab: pd.DataFrame, spot_pitch_um: float, positions_path: Path, *, user_mpp: float | None
) -> dict:
    """Fit µm/px to the spot grid; refuse an implausible one unless the user gives ``mpp``."""
    grid = estimate_mpp_from_grid(tab, spot_pitch_um=spot_pitch_um, source=positions_path)
    lo, hi = MPP_PLAUSIBLE_RANGE
    if user_mpp is None and not lo <= grid["mpp"] <= hi:
        msg = (
            f"{positions_path}: the spot grid implies {grid['mpp']:.4g} µm/px, outside the "
            f"plausible range for H&E images [{lo:g}, {hi:g}]; check pixel_x/pixel_y or pass "
            "mpp=<µm per px>"
        )
        raise ValueError(msg)
    aniso = abs(grid["mpp_x"] / grid["mpp_y"] - 1)
    if aniso > 0.10:
        logger.warning(
            "%s: the spot grid implies different µm/px along x (%.3f) and y (%.3f) "
            "(%.0f%% apart); the image may have been resized anisotropically. Using the "
            "geometric mean %.3f µm/px.",
            positions_path,
            grid["mpp_x"],
            grid["mpp_y"],
            100 * aniso,
            grid["mpp"],
        )
    return grid


#: an Ensembl gene id (e.g. ENSMUSG00000029580, ENSG00000075624.17)
_ENSEMBL_ID = re.compile(r"ENS[A-Z]*G\d{6,}(\.\d+)?")


def _warn_ids_without_names(gene_ids: pd.Index, counts_path: Path) -> None:
    """Warn when the genes are Ensembl ids and no id -> name table was found beside them.

    Gene-set scores (symbols) then match no gene; the warning says which file is missing
    and where it belongs, in the words of the files a user handles.
    """
    sample = gene_ids[:200]
    if len(sample) and sum(bool(_ENSEMBL_ID.fullmatch(g)) for g in sample) > len(sample) / 2:
        logger.warning(
            "%s: the genes are Ensembl ids (e.g. %s) and no gene-name table "
            "(*genes.tsv[.gz], id<TAB>name) is beside it in %s, so gene sets of gene "
            "symbols (hallmark, reactome, ...) will match no gene: put the table (e.g. "
            "mouse_genes.tsv.gz) next to the counts or pass genes=",
            counts_path,
            gene_ids[0],
            counts_path.parent,
        )


def read_legacy_st(
    counts: PathLike,
    *,
    positions: PathLike | None = None,
    image: PathLike | None = None,
    genes: PathLike | None = None,
    mpp: float | None = None,
    library_id: str | None = None,
    spot_pitch_um: float = ST_SPOT_PITCH_UM,
    spot_diameter_um: float = ST_SPOT_DIAMETER_UM,
    missing_positions: str = "drop",
    load_images: bool = True,
) -> ad.AnnData:
    """Read one legacy Spatial Transcriptomics section (counts + alignment table + H&E).

    Parameters
    ----------
    counts
        Counts table (``MOB1.tsv.gz``; spots × genes with spot ids ``"XxY"``, or genes ×
        spots) or the section prefix (``data/examples/mob/MOB1``).
    positions
        Alignment table with array ``x``, ``y``, image ``pixel_x``, ``pixel_y`` (level-0 px
        of ``image``) and optional ``selected`` (1 = under tissue). Default:
        ``alignment_table_<section>.tsv`` next to the counts.
    image
        H&E image whose pixels ``pixel_x``/``pixel_y`` refer to. Default:
        ``<section>.jpg|png|tif`` next to the counts; ``None`` found → no image.
    genes
        Table mapping the count columns (gene ids, first column) to ``gene_name``.
        Default: a ``*genes.tsv[.gz]`` file next to the counts, if any.
    mpp
        µm per level-0 pixel, if known; otherwise estimated from the spot grid
        (``spot_pitch_um``). When both exist and differ by >10 % a warning is emitted.
    library_id
        Key in ``uns['spatial']``; default the section name (``MOB1``).
    spot_pitch_um
        Spot centre-to-centre distance along array rows/columns, µm (200 for ST arrays).
    spot_diameter_um
        Spot diameter, µm (100 for ST arrays).
    missing_positions
        Spots of the counts table without a row in the alignment table: ``"drop"``
        (default, with a logged warning: the ST Spot Detector leaves out spots it could
        not find on the image, e.g. ~10 per MOB section) or ``"raise"``. No match at all
        is always an error.
    load_images
        Store ``hires``/``lowres`` thumbnails of the image in ``uns['spatial']``.

    Returns
    -------
    ad.AnnData
        AnnData (spots × genes) with

        * ``X`` and ``layers['counts']``: raw counts (CSR float32 holding integers),
        * ``var_names`` unique symbols, ``var['gene_ids']``, ``var['gene_symbols']``,
        * ``obs['in_tissue']`` (bool, from ``selected``), ``obs['array_col']`` (x),
          ``obs['array_row']`` (y),
        * ``obsm['spatial']``: ``pixel_x``, ``pixel_y`` (level-0 px of the H&E),
        * ``uns['spatial'][library_id]``: ``images`` (``hires`` ≤2000 px, ``lowres`` ≤600 px),
          ``scalefactors`` (``tissue_hires_scalef``, ``tissue_lowres_scalef``,
          ``spot_diameter_fullres`` px), ``metadata`` (source files, grid fit),
        * ``uns['stalign']``: ``library_id``, ``platform='legacy_st'``, ``image_path``,
          ``mpp`` (µm/px), ``mpp_source`` (``'spot_pitch'`` or ``'user'``),
          ``spot_diameter_um``.

    Raises
    ------
    FileNotFoundError
        When the counts, alignment table or a given image/genes file is missing.
    ValueError
        For unparsable tables, non-integer or negative counts, duplicated spot ids,
        spots without positions (see ``missing_positions``), or spots outside the image.
    """
    counts_path, positions_path, image_path, genes_path = _input_paths(
        counts, positions, image, genes
    )
    stem = _strip(counts_path.name)

    df = _read_counts(counts_path)
    barcodes = pd.Index(df.index.astype(str))
    tab = _read_positions(positions_path)
    pos, keep = join_positions(
        barcodes,
        tab,
        counts_source=counts_path,
        positions_source=positions_path,
        missing=missing_positions,
    )
    df = df.loc[keep]

    gene_ids = df.columns.astype(str)
    symbols = None if genes_path is None else _gene_symbols(gene_ids, genes_path, counts_path)
    if genes_path is None:
        _warn_ids_without_names(gene_ids, counts_path)
    var = make_var(gene_ids, None if symbols is None else symbols.to_numpy(), source=counts_path)

    xy = pos[["pixel_x", "pixel_y"]].to_numpy(float)
    info = image_info(image_path) if image_path is not None else None
    check_coordinates(
        xy,
        image_size=None if info is None else (info.width, info.height),
        source=positions_path,
        image_source=image_path,
    )
    grid = _grid_mpp(tab, spot_pitch_um, positions_path, user_mpp=mpp)
    mpp_value, mpp_source = reconcile_mpp(
        {
            "user": mpp,
            "spot_pitch": grid["mpp"],
            "tiff_metadata": None if info is None else info.mpp,
        },
        context=str(counts_path),
    )

    obs = pd.DataFrame(index=pos.index)
    if "selected" in pos.columns:
        obs[K.IN_TISSUE] = pos["selected"].fillna(0).astype(int).to_numpy() == 1
    obs[K.ARRAY_COL] = pos["x"].to_numpy()
    obs[K.ARRAY_ROW] = pos["y"].to_numpy()

    images, scalefactors = ({}, {})
    if image_path is not None and load_images:
        images, scalefactors = thumbnails(image_path)
    metadata = {
        "counts_path": str(absolute(counts_path)),
        "positions_path": str(absolute(positions_path)),
        "genes_path": None if genes_path is None else str(absolute(genes_path)),
        "spot_pitch_um": float(spot_pitch_um),
        "grid_fit": grid,
        "n_dropped_without_position": int((~keep).sum()),
    }
    if info is not None:
        metadata["image_width"], metadata["image_height"] = info.width, info.height
    return assemble(
        X=df.to_numpy(),
        obs_names=pos.index,
        var=var,
        spatial=xy,
        library_id=library_id or stem,
        platform="legacy_st",
        image_path=image_path,
        mpp=mpp_value,
        mpp_source=mpp_source,
        spot_diameter_um=spot_diameter_um,
        counts_source=counts_path,
        obs=obs,
        images=images,
        scalefactors=scalefactors,
        metadata=metadata,
    )
