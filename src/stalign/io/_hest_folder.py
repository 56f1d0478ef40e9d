"""A whole HEST-1k folder: its metadata table, per-sample JSON, and a sample manifest.

HEST-1k layout (what a download of the dataset holds; only ``st/`` and ``metadata/``
are needed here)::

    HEST_v1_1_0.csv              metadata table, one row per sample (column ``id``)
    st/<id>.h5ad                 counts + spot pixels
    metadata/<id>.json           the sample's row as JSON
    wsis/<id>.tif                pyramidal H&E
    patches/<id>.h5              H&E patches around the spots (img, coords, barcode)
    tissue_seg/<id>_contours.geojson, <id>_mask.jpg   tissue segmentation

Field names used (HEST's own): ``id``, ``patient``, ``organ``, ``species``,
``st_technology``, ``pixel_size_um_estimated``, ``dataset_title``, ``study_link``,
``license``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._core import PathLike, as_path, read_json_object

logger = logging.getLogger(__name__)

__all__ = ["hest_manifest", "read_hest_metadata"]

#: HEST's metadata table at the root of a download (versioned file name)
HEST_TABLE_GLOB = "HEST_v*.csv"
#: columns of a stalign manifest written from a HEST folder (data/manifests/README.md)
_MANIFEST_COLUMNS = (
    "sample_id",
    "patient_id",
    "organ",
    "species",
    "platform",
    "path",
    "image",
    "mpp",
    "source",
    "license",
)


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and not np.isfinite(value):
        return True
    return str(value).strip() == "" or str(value).strip().lower() == "nan"


def _find_table(root: Path, metadata: PathLike | None) -> Path | None:
    if metadata is not None:
        return as_path(metadata, what="HEST metadata table")
    tables = sorted(root.glob(HEST_TABLE_GLOB))
    return tables[-1] if tables else None  # the newest version sorts last


def _read_table(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        msg = f"{path}: cannot read it as HEST's metadata CSV ({type(e).__name__}: {e})"
        raise ValueError(msg) from e
    if "id" not in table.columns:
        msg = f"{path}: expected HEST's metadata table with an 'id' column, found {list(table)}"
        raise ValueError(msg)
    dup = table["id"][table["id"].duplicated()].tolist()
    if dup:
        msg = f"{path}: sample ids must be unique in column 'id'; duplicated: {dup[:5]}"
        raise ValueError(msg)
    return table.set_index("id", drop=False)


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, what="HEST metadata JSON", fields="metadata fields")


def read_hest_metadata(root: PathLike, *, metadata: PathLike | None = None) -> pd.DataFrame:
    """Return the metadata of every sample present in a HEST-1k folder.

    A sample is present when ``st/<id>.h5ad`` exists. Its fields come from HEST's
    metadata table (``HEST_v*.csv`` at the root, or ``metadata``) and from
    ``metadata/<id>.json``; the JSON fills fields the table leaves empty.

    Parameters
    ----------
    root
        The HEST folder (with ``st/``).
    metadata
        HEST's metadata CSV, when it is not at the root.

    Returns
    -------
    pandas.DataFrame
        One row per present sample, indexed by ``id`` (sorted), columns = the union
        of the table's and the JSONs' fields (text; empty when unknown).

    Raises
    ------
    FileNotFoundError
        ``root`` or ``root/st`` does not exist.
    ValueError
        No sample in ``st/``, an unreadable table or JSON, or a sample with neither
        a table row nor a ``metadata/<id>.json``.
    """
    root = as_path(root, what="HEST folder")
    st = root / "st"
    if not st.is_dir():
        msg = f"{root}: expected a HEST-1k folder with st/<id>.h5ad, found no st/ folder"
        raise FileNotFoundError(msg)
    ids = sorted(p.stem for p in st.glob("*.h5ad"))
    if not ids:
        msg = f"{st}: expected HEST samples st/<id>.h5ad, found none"
        raise ValueError(msg)
    table_path = _find_table(root, metadata)
    table = _read_table(table_path) if table_path is not None else None
    rows: list[dict[str, Any]] = []
    for sid in ids:
        row: dict[str, Any] = {}
        if table is not None and sid in table.index:
            row.update(table.loc[sid].to_dict())
        json_path = root / "metadata" / f"{sid}.json"
        if json_path.is_file():
            for k, v in _read_json(json_path).items():
                if _blank(row.get(k)) and not isinstance(v, dict | list):
                    row[k] = v
        if not row:
            where = f"{table_path} nor " if table_path is not None else ""
            msg = (
                f"HEST sample {sid!r} (st/{sid}.h5ad): no metadata in {where}"
                f"{json_path}; expected one of them"
            )
            raise ValueError(msg)
        row["id"] = sid
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("id", drop=False)
    return frame.astype(object).where(frame.notna(), "")


def _matches(values: pd.Series, wanted: Iterable[str] | str | None) -> np.ndarray:
    if wanted is None:
        return np.ones(len(values), bool)
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    keys = {w.strip().lower() for w in wanted}
    return values.astype(str).str.strip().str.lower().isin(keys).to_numpy()


def _patients(meta: pd.DataFrame) -> pd.Series:
    patient = meta.get("patient", pd.Series("", index=meta.index)).astype(str).str.strip()
    missing = patient.map(_blank)
    if missing.any():
        ids = list(meta.index[missing])
        logger.warning(
            "%d HEST sample(s) have no 'patient' field and become their own patient "
            "(a split may then put two sections of one person on both sides): %s",
            len(ids),
            ids[:10],
        )
    # HEST's patient labels ("Patient 1") repeat across studies: qualify by study
    study = meta.get("dataset_title", pd.Series("", index=meta.index)).astype(str)
    named = [
        _one_line(f"{t}: {p}" if t.strip() else p) for t, p in zip(study, patient, strict=True)
    ]
    out = pd.Series(named, index=meta.index)
    out[missing] = meta.index[missing]
    return out


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())  # manifests are read line by line


def _source(row: pd.Series) -> str:
    parts = [_one_line(row.get(k, "")) for k in ("dataset_title", "study_link")]
    return "; ".join(p for p in parts if p and p.lower() != "nan")


def hest_manifest(
    root: PathLike,
    *,
    organ: Iterable[str] | str | None = None,
    species: Iterable[str] | str | None = None,
    technology: Iterable[str] | str | None = None,
    metadata: PathLike | None = None,
    out: PathLike | None = None,
) -> pd.DataFrame:
    """Make a stalign sample manifest from a HEST-1k folder (one row per sample).

    Parameters
    ----------
    root
        The HEST folder (``st/``, ``metadata/``, optionally ``HEST_v*.csv``,
        ``wsis/``, ``patches/``, ``tissue_seg/``).
    organ, species, technology
        Keep only samples whose ``organ`` / ``species`` / ``st_technology`` is one of
        these (case-insensitive), e.g. ``organ="Bowel"``, ``technology="Visium"``.
    metadata
        HEST's metadata CSV when it is not at the root of ``root``.
    out
        Write the manifest CSV here (atomically); ``path`` entries are then relative
        to its folder, so the folder pair can move together.

    Returns
    -------
    pandas.DataFrame
        Manifest columns ``sample_id``, ``patient_id`` (HEST's ``patient``, qualified by
        ``dataset_title``; a sample without one is its own patient, with a warning),
        ``organ``, ``species``, ``platform`` (``hest``), ``path``
        (``st/<id>.h5ad``), ``image`` (empty: the reader finds ``wsis/<id>.tif``),
        ``mpp`` (``pixel_size_um_estimated``, µm/px of the WSI), ``source``
        (``dataset_title; study_link``) and ``license``.

    Raises
    ------
    ValueError
        The filters leave no sample (the message lists the values found), or the
        folder's metadata is unreadable.
    """
    root = as_path(root, what="HEST folder").resolve()
    meta = read_hest_metadata(root, metadata=metadata)
    keep = np.ones(len(meta), bool)
    for column, wanted in (("organ", organ), ("species", species), ("st_technology", technology)):
        values = meta.get(column, pd.Series("", index=meta.index))
        keep &= _matches(values, wanted)
    if not keep.any():
        found = {
            c: sorted(set(meta.get(c, pd.Series(dtype=str)).astype(str)))[:10]
            for c in ("organ", "species", "st_technology")
        }
        msg = (
            f"{root}: no HEST sample matches organ={organ!r}, species={species!r}, "
            f"technology={technology!r} among {len(meta)} samples; found {found}"
        )
        raise ValueError(msg)
    meta = meta[keep]
    base = Path(out).resolve().parent if out is not None else Path.cwd()
    rows = []
    for (sid, row), patient in zip(meta.iterrows(), _patients(meta), strict=True):
        h5ad = root / "st" / f"{sid}.h5ad"
        mpp = str(row.get("pixel_size_um_estimated", "")).strip()
        rows.append(
            {
                "sample_id": sid,
                "patient_id": patient,
                "organ": _one_line(row.get("organ", "")) or "unknown",
                "species": _one_line(row.get("species", "")) or "unknown",
                "platform": "hest",
                "path": os.path.relpath(h5ad, base) if out is not None else str(h5ad),
                "image": "",
                "mpp": "" if _blank(mpp) else mpp,
                "source": _source(row),
                "license": _one_line(row.get("license", "")),
            }
        )
    frame = pd.DataFrame(rows, columns=list(_MANIFEST_COLUMNS))
    if out is not None:
        from .._utils import atomic_write_text

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, frame.to_csv(index=False, lineterminator="\n"))
        logger.info("wrote a manifest of %d HEST samples to %s", len(frame), out)
    return frame
