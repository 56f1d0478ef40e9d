"""Pathway scores as ``obs`` columns, for scanpy's and squidpy's plotting functions."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from .. import _keys as K

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = ["pathways_to_obs"]


def _scores(adata: AnnData, key: str) -> pd.DataFrame:
    """Return ``adata.obsm[key]`` as a DataFrame indexed like ``adata.obs``, or raise."""
    if key not in adata.obsm:
        msg = (
            f"adata.obsm[{key!r}] not found (keys: {sorted(adata.obsm)}); score pathways "
            "first with stalign.tl.score_pathways"
        )
        raise KeyError(msg)
    scores = adata.obsm[key]
    if not isinstance(scores, pd.DataFrame):
        msg = (
            f"adata.obsm[{key!r}] is a {type(scores).__name__}, expected a DataFrame with "
            "one column per pathway (as stalign.tl.score_pathways writes)"
        )
        raise TypeError(msg)
    return scores


def _chosen(scores: pd.DataFrame, names: str | Sequence[str] | None, key: str) -> list[str]:
    """Return the pathway names to copy: all by default; unknown names raise with suggestions."""
    if names is None:
        return [str(c) for c in scores.columns]
    names = [names] if isinstance(names, str) else list(names)
    columns = [str(c) for c in scores.columns]
    missing = [n for n in names if n not in columns]
    if missing:
        hints = {n: difflib.get_close_matches(n, columns, n=2, cutoff=0.5) for n in missing}
        hint = "; ".join(f"{n!r}: did you mean {h}?" for n, h in hints.items() if h)
        msg = f"names: {missing} not in adata.obsm[{key!r}] ({len(columns)} pathways)"
        msg += f"; {hint}" if hint else ""
        raise KeyError(msg)
    return names


def pathways_to_obs(
    adata: AnnData,
    names: str | Sequence[str] | None = None,
    *,
    key: str = K.PATHWAY_SCORES,
    prefix: str = "",
    copy: bool = False,
) -> AnnData | None:
    """Copy pathway scores from ``adata.obsm[key]`` into ``adata.obs`` columns.

    scanpy and squidpy colour spots by ``obs`` columns or genes, not by ``obsm``
    DataFrame columns, so ``sc.pl.spatial(adata, color="HALLMARK_HYPOXIA")`` raises
    ``KeyError`` until the score is in ``obs``. This puts it there (joined on
    ``obs_names``), in the spirit of ``squidpy.pl.extract``.

    Parameters
    ----------
    adata
        AnnData with pathway scores, e.g. from
        [`score_pathways`][stalign.tl.score_pathways] or a pairs store's ``pairs.h5ad``.
    names
        Pathway name(s) to copy (columns of ``adata.obsm[key]``); all when None.
    key
        ``obsm`` key of the scores (``'pathway_scores'`` by default).
    prefix
        Prepended to each column name in ``obs`` (e.g. ``'pw_'``), to keep the
        scores apart from other columns. Existing columns of the same name are replaced.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy with ``copy=True``, else None. Writes ``obs[prefix + name]`` (float)
        for each chosen pathway.

    Raises
    ------
    KeyError
        If ``adata.obsm[key]`` is missing, or a name is not one of its columns.
    TypeError
        If ``adata.obsm[key]`` is not a DataFrame.

    Examples
    --------
    >>> import scanpy as sc  # doctest: +SKIP
    >>> st.pl.pathways_to_obs(adata, ["HALLMARK_HYPOXIA"])  # doctest: +SKIP
    >>> sc.pl.embedding(adata, basis="spatial", color="HALLMARK_HYPOXIA")  # doctest: +SKIP
    """
    adata = adata.copy() if copy else adata
    scores = _scores(adata, key)
    chosen = _chosen(scores, names, key)
    scores = scores.rename(columns=str).reindex(adata.obs_names)
    for name in chosen:
        adata.obs[f"{prefix}{name}"] = scores[name].astype(float).to_numpy()
    return adata if copy else None
