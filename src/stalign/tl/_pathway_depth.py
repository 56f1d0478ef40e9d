"""Depth diagnostics of pathway scores: how much of a score sequencing depth explains.

Per pathway (and per section), the Pearson ``r`` of the score on log library size
(total counts per spot) and on log detected genes, and the ``R²`` of a cubic in each
(the share of the score's variance a smooth function of depth explains). A score that
follows depth teaches an image encoder "how many transcripts", which colour and
cellularity already tell; see the "Pathway scoring" concept page.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from ..pp import log_depth, regress_out_depth
from ._scoring import iter_row_chunks

logger = logging.getLogger(__name__)

__all__ = [
    "DEPTH_WARN_ABS_R",
    "depth_summary",
    "depth_table",
    "depth_table_from_record",
    "depth_table_to_record",
    "pathway_depth_diagnostics",
    "warn_if_depth_driven",
]

#: median |r(score, log total counts)| over pathways above which a section is flagged
DEPTH_WARN_ABS_R = 0.5
#: the columns of a depth table, per covariate: Pearson r and R² of a cubic fit
DEPTH_COLUMNS = ("r_log_counts", "r2_log_counts", "r_log_genes", "r2_log_genes")
#: degree of the polynomial in log depth whose R² is reported
_DEGREE = 3


class LibrarySizes:
    """Total counts and detected genes (counts > 0) per row, filled chunk by chunk.

    `tap` fills it from the chunks a scorer
    reads anyway, so the diagnostics cost no extra pass over a backed matrix.
    """

    def __init__(self, n_rows: int):
        self.total = np.zeros(n_rows)
        self.detected = np.zeros(n_rows)
        self.negative_in: tuple[int, int] | None = None  # first chunk with a value < 0

    def add(self, start: int, stop: int, chunk: Any) -> None:
        """Record the rows ``start:stop`` of a CSR chunk."""
        if self.negative_in is None and chunk.data.size and chunk.data.min() < 0:
            self.negative_in = (start, stop)
        n = stop - start
        rows = np.repeat(np.arange(n), np.diff(chunk.indptr))
        self.total[start:stop] = np.bincount(rows, weights=chunk.data, minlength=n)
        self.detected[start:stop] = np.bincount(rows[chunk.data > 0], minlength=n)

    def tap(self, chunks):
        """Wrap a ``chunks(desc)`` factory so that every chunk it yields is recorded."""

        def tapped(desc: str):
            for start, stop, chunk in chunks(desc):
                self.add(start, stop, chunk)
                yield start, stop, chunk

        return tapped

    def check_counts(self) -> None:
        """Raise ``ValueError`` when a value was negative (not raw counts)."""
        if self.negative_in is not None:
            start, stop = self.negative_in
            msg = (
                f"depth diagnostics need raw counts; found negative values in spots "
                f"{start}:{stop} (scaled data?)"
            )
            raise ValueError(msg)


def library_sizes(x: Any, chunk_size: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Return total counts and detected genes (counts > 0) per row, read chunk by chunk.

    Raises
    ------
    ValueError
        A negative value: the matrix does not hold raw counts.
    """
    sizes = LibrarySizes(x.shape[0])
    for start, stop, chunk in iter_row_chunks(x, chunk_size):
        sizes.add(start, stop, chunk)
    sizes.check_counts()
    return sizes.total, sizes.detected


def column_pearson(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Pearson r of every column of ``y`` with ``x`` (a vector, or the same column of a matrix).

    NaN where either side is constant.
    """
    yc = y - y.mean(axis=0)
    xc = x - x.mean(axis=0)
    if xc.ndim == 1:
        xc = xc[:, None]
    den = np.sqrt((yc * yc).sum(axis=0) * (xc * xc).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(axis=0) / den, np.nan)


def _r2_cubic(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """R² of a cubic in ``x`` fitted to every column of ``y`` (NaN for a constant column)."""
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    resid = regress_out_depth(y, x, degree=_DEGREE)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ss_tot > 0, 1.0 - (resid * resid).sum(axis=0) / ss_tot, np.nan)


def depth_table(
    scores: np.ndarray | pd.DataFrame,
    total_counts: np.ndarray,
    n_genes: np.ndarray,
    *,
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Depth diagnostics of one section's scores, one row per pathway.

    Parameters
    ----------
    scores
        ``(spots, pathways)``; rows with a non-finite score (e.g. spots below a
        rarefaction depth) are left out.
    total_counts, n_genes
        Raw counts and detected genes per spot (all genes).
    names
        Pathway names (default: the DataFrame's columns).

    Returns
    -------
    pandas.DataFrame
        Index ``pathway``; columns ``n_spots`` and `DEPTH_COLUMNS`: Pearson ``r``
        of the score on ``log(total counts)`` and on ``log(detected genes)``, and the
        ``R²`` of a cubic in each. ``NaN`` for a constant score or fewer than 5 spots.
    """
    if isinstance(scores, pd.DataFrame):
        names = [str(c) for c in scores.columns] if names is None else list(names)
        scores = scores.to_numpy()
    y = np.asarray(scores, dtype=np.float64)
    names = [str(n) for n in (names if names is not None else range(y.shape[1]))]
    ok = np.isfinite(y).all(axis=1)
    y = y[ok]
    covariates = {
        "log_counts": log_depth(np.asarray(total_counts, dtype=np.float64)[ok]),
        "log_genes": np.log(np.maximum(np.asarray(n_genes, dtype=np.float64)[ok], 1.0)),
    }
    table = pd.DataFrame(index=pd.Index(names, name="pathway"))
    table["n_spots"] = int(ok.sum())
    for cov, x in covariates.items():
        if y.shape[0] < 5 or not y.shape[1]:
            r = r2 = np.full(y.shape[1], np.nan)
        else:
            r, r2 = column_pearson(y, x), _r2_cubic(y, x)
        table[f"r_{cov}"] = r
        table[f"r2_{cov}"] = r2
    return table


def depth_summary(table: pd.DataFrame) -> dict[str, Any]:
    """One section's summary: median and max |r| over pathways, the most depth-driven one."""
    out: dict[str, Any] = {"n_pathways": len(table)}
    for cov in ("log_counts", "log_genes"):
        r = table[f"r_{cov}"].abs() if len(table) else pd.Series(dtype=float)
        out[f"median_abs_r_{cov}"] = _json_float(r.median()) if r.notna().any() else None
    r = table["r_log_counts"].abs() if len(table) else pd.Series(dtype=float)
    out["max_abs_r_log_counts"] = _json_float(r.max()) if r.notna().any() else None
    out["most_depth_driven"] = str(r.idxmax()) if r.notna().any() else None
    out["n_above_threshold"] = int((r > DEPTH_WARN_ABS_R).sum())
    return out


def _json_float(v: float) -> float:
    return round(float(v), 4)


def warn_if_depth_driven(table: pd.DataFrame, *, section: str, method: str) -> bool:
    """Log one warning when the median |r(score, log total counts)| exceeds the threshold."""
    r = table["r_log_counts"].abs()
    med = float(r.median()) if r.notna().any() else float("nan")
    if not med > DEPTH_WARN_ABS_R:
        return False
    logger.warning(
        "pathway scores of %s (method %s) follow sequencing depth: median |r(score, log total "
        "counts)| = %.2f over %d pathways (> %.2f); see rarefy_depth, method='score_genes' or "
        "depth regression in training (concept page 'Pathway scoring')",
        section,
        method,
        med,
        int(r.notna().sum()),
        DEPTH_WARN_ABS_R,
    )
    return True


def depth_table_to_record(table: pd.DataFrame) -> dict[str, Any]:
    """Return a depth table as a dict of columns (writable to ``.h5ad`` ``uns`` and JSON)."""
    rec: dict[str, Any] = {"pathway": np.asarray(table.index.astype(str), dtype=object)}
    rec["n_spots"] = table["n_spots"].to_numpy(np.int64)
    for c in DEPTH_COLUMNS:
        rec[c] = table[c].to_numpy(np.float64)
    return rec


def depth_table_from_record(rec: Any) -> pd.DataFrame:
    """Inverse of [`depth_table_to_record`][stalign.tl.depth_table_to_record].

    Also reads the JSON form a pairs shard records.
    """
    df = pd.DataFrame({k: np.asarray(v) for k, v in dict(rec).items()})
    df["pathway"] = df["pathway"].astype(str)
    return df.set_index("pathway").astype({c: float for c in DEPTH_COLUMNS})


def pathway_depth_diagnostics(
    adata: AnnData,
    *,
    key: str = _keys.PATHWAY_SCORES,
    layer: str | None = None,
    groupby: str | None = None,
) -> pd.DataFrame:
    """How much sequencing depth explains of each pathway score, per section.

    Parameters
    ----------
    adata
        AnnData with scores in ``.obsm[key]`` (from
        [`score_pathways`][stalign.tl.score_pathways]) and raw counts in ``.X`` or
        ``.layers[layer]`` (library size and detected genes are summed over all genes).
    key
        ``obsm`` key of the scores.
    layer
        Read the counts from ``.layers[layer]`` instead of ``.X``.
    groupby
        ``obs`` column of the sections (e.g. ``"sample_id"``): one block of rows per
        section, each with its own correlations; ``None``: all spots as one section.

    Returns
    -------
    pandas.DataFrame
        One row per (section, pathway): ``section`` (with ``groupby``), ``pathway``,
        ``n_spots``, ``r_log_counts`` and ``r_log_genes`` (Pearson r of the score on log
        total counts and on log detected genes), ``r2_log_counts`` and ``r2_log_genes``
        (R² of a cubic in each, the share of the score's variance a smooth function of
        depth explains). Spots with a non-finite score are left out.

    Raises
    ------
    KeyError
        ``key``, ``layer`` or ``groupby`` is missing.
    """
    if key not in adata.obsm:
        msg = f"adata.obsm[{key!r}] not found; run stalign.tl.score_pathways first"
        raise KeyError(msg)
    if layer is not None and layer not in adata.layers:
        msg = f"layer={layer!r} is not in adata.layers (available: {list(adata.layers)})"
        raise KeyError(msg)
    if groupby is not None and groupby not in adata.obs:
        msg = f"groupby={groupby!r} is not a column of adata.obs"
        raise KeyError(msg)
    scores = adata.obsm[key]
    if not isinstance(scores, pd.DataFrame):
        scores = pd.DataFrame(np.asarray(scores), index=adata.obs_names)
    total, detected = library_sizes(adata.layers[layer] if layer is not None else adata.X)
    if groupby is None:
        return depth_table(scores, total, detected).reset_index()
    parts = []
    groups = adata.obs[groupby].astype(str).to_numpy()
    for section in pd.unique(groups):
        rows = groups == section
        part = depth_table(scores.iloc[rows], total[rows], detected[rows]).reset_index()
        part.insert(0, "section", section)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)
