"""Build the AnnData every reader returns (docs/architecture.md, "The AnnData a reader returns").

Each platform reader parses its own files, then hands arrays to `assemble`,
which validates them (integer non-negative counts, unique barcodes, finite
coordinates inside the image) and lays them out the same way for every platform.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import _keys as K

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


def as_path(path: PathLike, *, what: str, must_exist: bool = True) -> Path:
    """Return ``path`` as a `Path`, raising when it does not exist.

    Parameters
    ----------
    path
        File or directory.
    what
        Description used in the error message (e.g. ``"counts table"``).
    must_exist
        Raise `FileNotFoundError` when the path is missing.
    """
    p = Path(path).expanduser()
    if must_exist and not p.exists():
        msg = f"{what} not found: expected a file or directory at '{p}'"
        raise FileNotFoundError(msg)
    return p


def absolute(path: PathLike) -> Path:
    """Return ``path`` made absolute **without** following symbolic links.

    Names of sibling files, library ids and recorded paths are taken from the path the
    user gave: a link ``st/B4.tsv.gz`` -> ``../raw/B4/counts.tsv.gz`` stays ``B4``.
    """
    return Path(os.path.abspath(Path(path).expanduser()))


def find_file(folder: Path, names: Sequence[str]) -> Path | None:
    """Return the first of ``names`` that is a file in ``folder`` (links followed).

    An exact name wins; otherwise the name is matched ignoring case (``B4.JPG`` for
    ``B4.jpg``, ``alignment_table_B4.TSV``), so an upper-case suffix is never missed.
    ``None`` when no name matches.
    """
    for name in names:
        if (folder / name).is_file():
            return folder / name
    try:
        entries = sorted(e.name for e in os.scandir(folder) if e.is_file())
    except OSError:
        return None
    by_lower: dict[str, str] = {}
    for entry in entries:
        by_lower.setdefault(entry.lower(), entry)
    for name in names:
        hit = by_lower.get(name.lower())
        if hit is not None:
            return folder / hit
    return None


def is_gzip(path: PathLike) -> bool:
    """Whether the file starts with the gzip magic bytes (whatever its name says)."""
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def read_table(path: Path, *, what: str, **kwargs: Any) -> pd.DataFrame:
    """Read a delimited text table (or a ``.parquet`` file) with one-line errors naming it.

    Gzip is detected from the content, not the name (a link named ``.tsv.gz`` may point
    to a plain table); text must be UTF-8. A ``.parquet`` file is read whole
    (``kwargs`` do not apply).

    Parameters
    ----------
    path
        The table.
    what
        What the file should hold (``"counts table"``), used in messages.
    **kwargs
        Passed to `pandas.read_csv` (``sep``, ``index_col``, ``header``, ...).

    Raises
    ------
    ValueError
        Empty file, non-UTF-8 text, a damaged gzip stream or unparsable text.
    """
    if path.suffix.lower() == ".parquet":
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as e:  # pyarrow's errors derive from these
            msg = f"{path}: cannot read the {what} as parquet ({type(e).__name__}: {e})"
            raise ValueError(msg) from e
    compression = "gzip" if is_gzip(path) else None
    try:
        return pd.read_csv(path, compression=compression, encoding="utf-8", **kwargs)
    except pd.errors.EmptyDataError as e:
        msg = f"{path}: expected the {what}, found an empty file"
        raise ValueError(msg) from e
    except UnicodeDecodeError as e:
        msg = (
            f"{path}: expected UTF-8 text ({what}), found the non-UTF-8 byte "
            f"0x{e.object[e.start]:02x}; save the file as UTF-8"
        )
        raise ValueError(msg) from e
    except (pd.errors.ParserError, EOFError, OSError, zlib.error, gzip.BadGzipFile) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = f"{path}: cannot parse the {what} ({type(e).__name__}: {detail})"
        raise ValueError(msg) from e


def read_json_object(path: Path, *, what: str, fields: str) -> dict[str, Any]:
    """Read a JSON file that must hold one object; errors name the file.

    ``what`` describes the file (``"JSON scale factors"``), ``fields`` its entries
    (``"scale factors"``), for the messages.
    """
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = f"{path}: expected {what}, cannot parse it ({e})"
        raise ValueError(msg) from e
    if not isinstance(obj, dict):
        msg = f"{path}: expected a JSON object of {fields}, found {type(obj).__name__}"
        raise ValueError(msg)
    return obj


def check_counts(X: Any, *, source: PathLike) -> sp.csr_matrix:
    """Return ``X`` as CSR float32 after checking it holds non-negative integer counts.

    Parameters
    ----------
    X
        Dense array or sparse matrix, spots × genes.
    source
        File the counts came from (named in error messages).

    Raises
    ------
    ValueError
        When a value is negative, not an integer, or not finite.
    """
    X = sp.csr_matrix(X)
    data = np.asarray(X.data)
    if data.size:
        if not np.all(np.isfinite(data)):
            n_bad = int((~np.isfinite(data)).sum())
            msg = f"{source}: expected finite raw counts, found {n_bad} NaN/inf values"
            raise ValueError(msg)
        if data.min() < 0:
            msg = (
                f"{source}: expected non-negative raw counts, found {int((data < 0).sum())} "
                f"negative values (min {data.min():g})"
            )
            raise ValueError(msg)
        frac = data != np.round(data)
        if frac.any():
            example = data[frac][0]
            msg = (
                f"{source}: expected raw integer counts, found {int(frac.sum())} non-integer "
                f"values (e.g. {example:g}); normalised data cannot be read as counts"
            )
            raise ValueError(msg)
    X = X.astype(np.float32)
    X.sum_duplicates()
    X.sort_indices()
    return X


def check_unique(ids: Sequence[str] | pd.Index, *, what: str, source: PathLike) -> pd.Index:
    """Return ``ids`` as an Index of str, raising `ValueError` on duplicates."""
    index = pd.Index(np.asarray(ids, dtype=str))
    dup = index[index.duplicated()]
    if len(dup):
        msg = (
            f"{source}: expected unique {what}, found {len(dup)} duplicated "
            f"(e.g. {list(dict.fromkeys(dup))[:5]})"
        )
        raise ValueError(msg)
    return index


def join_positions(
    barcodes: pd.Index,
    positions: pd.DataFrame,
    *,
    counts_source: PathLike,
    positions_source: PathLike,
    missing: str = "raise",
) -> tuple[pd.DataFrame, np.ndarray]:
    """Align a positions table (indexed by barcode) to the count matrix barcodes by id.

    Parameters
    ----------
    barcodes
        Barcodes of the count matrix, in matrix row order.
    positions
        Table indexed by barcode (any order, may hold extra barcodes).
    counts_source, positions_source
        Files named in error messages.
    missing
        ``"raise"``: any barcode without a position is an error. ``"drop"``: drop those
        spots with a warning (still an error when no barcode matches).

    Returns
    -------
    tuple[pd.DataFrame, np.ndarray]
        The positions rows in ``barcodes`` order (only kept spots) and a boolean mask of the
        kept rows of the count matrix.
    """
    if missing not in ("raise", "drop"):
        msg = f"missing_positions must be 'raise' or 'drop', got {missing!r}"
        raise ValueError(msg)
    if positions.index.has_duplicates:
        dup = positions.index[positions.index.duplicated()]
        msg = (
            f"{positions_source}: expected one row per barcode, found {len(dup)} duplicated "
            f"barcodes (e.g. {list(dict.fromkeys(dup))[:5]})"
        )
        raise ValueError(msg)
    has_pos = barcodes.isin(positions.index)
    n_missing = int((~has_pos).sum())
    if n_missing:
        absent = list(barcodes[~has_pos][:8])
        detail = (
            f"{n_missing} of {len(barcodes)} barcodes in {counts_source} have no row in "
            f"{positions_source} (e.g. {absent})"
        )
        if missing == "raise" or n_missing == len(barcodes):
            msg = f"positions do not match the barcodes: {detail}"
            if missing == "raise":
                msg += "; pass missing_positions='drop' to drop those spots"
            raise ValueError(msg)
        logger.warning("dropping spots without a position: %s", detail)
    return positions.loc[barcodes[has_pos]], has_pos


def check_coordinates(
    xy: np.ndarray,
    *,
    image_size: tuple[int, int] | None,
    source: PathLike,
    image_source: PathLike | None = None,
    tolerance_px: float = 0.0,
) -> None:
    """Check coordinates are finite and (when the image size is known) inside the image.

    Parameters
    ----------
    xy
        ``(n, 2)`` level-0 pixel coordinates (x = column, y = row).
    image_size
        ``(width, height)`` of the level-0 image in px, or ``None`` to skip the bounds check.
    source
        File the coordinates came from.
    image_source
        Image file (named in the message).
    tolerance_px
        Allowed overshoot beyond the image border, px.
    """
    xy = np.asarray(xy, dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2:
        msg = f"{source}: expected (n, 2) spot coordinates, found shape {xy.shape}"
        raise ValueError(msg)
    if not np.all(np.isfinite(xy)):
        n_bad = int((~np.isfinite(xy)).any(axis=1).sum())
        msg = f"{source}: expected finite spot coordinates, found {n_bad} spots with NaN/inf"
        raise ValueError(msg)
    if len(xy) > 1 and not np.ptp(xy, axis=0).any():
        msg = (
            f"{source}: all {len(xy)} spot centres have the same pixel coordinates "
            f"({xy[0, 0]:g}, {xy[0, 1]:g}); expected spot centres spread over the image"
        )
        raise ValueError(msg)
    if image_size is None or len(xy) == 0:
        return
    w, h = image_size
    outside = (
        (xy[:, 0] < -tolerance_px)
        | (xy[:, 1] < -tolerance_px)
        | (xy[:, 0] > w + tolerance_px)
        | (xy[:, 1] > h + tolerance_px)
    )
    if outside.any():
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        msg = (
            f"{source}: {int(outside.sum())} of {len(xy)} spot centres lie outside the image "
            f"{image_source or ''} (expected 0 <= x <= {w}, 0 <= y <= {h} px; found x in "
            f"[{lo[0]:.1f}, {hi[0]:.1f}], y in [{lo[1]:.1f}, {hi[1]:.1f}]). Are the positions "
            "in the pixel space of this image (check scale factors / alignment)?"
        )
        raise ValueError(msg)


def make_var(
    gene_ids: Sequence[str], symbols: Sequence[str] | None, *, source: PathLike | None = None
) -> pd.DataFrame:
    """Return ``var`` indexed by unique symbols with ``gene_ids`` and ``gene_symbols`` columns.

    A missing/empty symbol falls back to the gene id. Repeated names are made unique
    the anndata way (``Actb``, ``Actb-1``): a gene id that occurs more than once (the
    same gene column twice in a counts table) is kept as separate columns, with a
    logged warning naming ``source`` and the genes; distinct ids sharing a symbol
    (common in 10x references) are only logged at info level.

    Parameters
    ----------
    gene_ids
        Gene ids as in the file (one per count column).
    symbols
        Gene symbols, or ``None`` to use the ids.
    source
        File the genes came from (named in the warning).
    """
    ids = pd.Index(np.asarray(gene_ids, dtype=str))
    if symbols is None:
        sym = pd.Series(ids, dtype=object)
    else:
        sym = pd.Series(np.asarray(symbols, dtype=object))
        empty = sym.isna() | (sym.astype(str).str.strip() == "")
        sym[empty] = ids[empty.to_numpy()]
        sym = sym.astype(str)
    var = pd.DataFrame({K.GENE_IDS: ids.to_numpy(), K.GENE_SYMBOLS: sym.to_numpy()})
    var.index = ad.utils.make_index_unique(pd.Index(sym.to_numpy()))
    _report_duplicate_genes(ids, pd.Index(sym.to_numpy()), source)
    return var


def _report_duplicate_genes(ids: pd.Index, symbols: pd.Index, source: PathLike | None) -> None:
    where = f"{source}: " if source is not None else ""
    dup_ids = list(dict.fromkeys(ids[ids.duplicated()]))
    if dup_ids:
        logger.warning(
            "%s%d gene ids occur more than once (%s%s); each occurrence is kept as its own "
            "gene and var_names are made unique with '-1', '-2', ... suffixes",
            where,
            len(dup_ids),
            ", ".join(dup_ids[:10]),
            ", ..." if len(dup_ids) > 10 else "",
        )
    pairs = pd.DataFrame({"id": ids, "symbol": symbols}).drop_duplicates()
    shared = list(dict.fromkeys(pairs["symbol"][pairs["symbol"].duplicated()]))
    if shared:
        logger.info(
            "%s%d symbols are shared by several gene ids (e.g. %s); var_names made unique "
            "with '-1' suffixes, ids kept in var['gene_ids']",
            where,
            len(shared),
            shared[:5],
        )


def assemble(
    *,
    X: Any,
    obs_names: Sequence[str] | pd.Index,
    var: pd.DataFrame,
    spatial: np.ndarray,
    library_id: str,
    platform: str,
    image_path: PathLike | None,
    mpp: float | None,
    mpp_source: str,
    spot_diameter_um: float | None,
    counts_source: PathLike,
    obs: pd.DataFrame | None = None,
    images: Mapping[str, np.ndarray] | None = None,
    scalefactors: Mapping[str, float] | None = None,
    metadata: Mapping[str, Any] | None = None,
    is_counts: bool = True,
    extra_uns: Mapping[str, Any] | None = None,
) -> ad.AnnData:
    """Lay out a reader's arrays as the stalign AnnData (see the module docstring).

    Returns
    -------
    ad.AnnData
        AnnData with ``X`` (CSR float32), ``layers['counts']`` (when ``is_counts``),
        ``var['gene_ids']``, ``var['gene_symbols']``, ``obsm['spatial']`` (float64 level-0 px),
        ``uns['spatial'][library_id]`` (``images``, ``scalefactors``, ``metadata``) and
        ``uns['stalign']``.
    """
    obs_index = check_unique(obs_names, what="barcodes / spot ids", source=counts_source)
    if is_counts:
        X = check_counts(X, source=counts_source)
    elif sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float32)
    else:
        X = np.asarray(X, dtype=np.float32)
    if X.shape != (len(obs_index), len(var)):
        msg = (
            f"{counts_source}: matrix shape {X.shape} does not match "
            f"{len(obs_index)} barcodes × {len(var)} genes"
        )
        raise ValueError(msg)
    obs = pd.DataFrame(index=obs_index) if obs is None else obs.copy()
    obs.index = obs_index
    adata = ad.AnnData(X=X, obs=obs, var=var)
    if is_counts:
        adata.layers[K.COUNTS_LAYER] = X.copy()
    adata.obsm[K.SPATIAL] = np.ascontiguousarray(spatial, dtype=np.float64)
    sf = dict(scalefactors or {})
    if spot_diameter_um is not None and mpp is not None and K.SF_SPOT_DIAMETER not in sf:
        sf[K.SF_SPOT_DIAMETER] = float(spot_diameter_um / mpp)
    adata.uns[K.SPATIAL] = {
        library_id: {
            K.IMAGES: dict(images or {}),
            K.SCALEFACTORS: {k: float(v) for k, v in sf.items()},
            K.METADATA: dict(metadata or {}),
        }
    }
    adata.uns[K.STALIGN] = {
        K.LIBRARY_ID: str(library_id),
        K.PLATFORM: platform,
        K.IMAGE_PATH: None if image_path is None else str(absolute(image_path)),
        K.MPP: None if mpp is None else float(mpp),
        K.MPP_SOURCE: mpp_source,
        K.SPOT_DIAMETER_UM: None if spot_diameter_um is None else float(spot_diameter_um),
        **dict(extra_uns or {}),
    }
    logger.info(
        "read %s library %r: %d spots × %d genes, mpp=%s (%s)",
        platform,
        library_id,
        adata.n_obs,
        adata.n_vars,
        mpp,
        mpp_source,
    )
    return adata
