"""``score_pathways``: genes → pathway activity per spot (ssGSEA, AUCell-style, z-score)."""

from __future__ import annotations

import functools
import itertools
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .. import _keys
from ..pp import lognorm_matrix, match_gene_sets
from ._genesets import GeneSetsLike, load_gene_sets
from ._pathway_depth import (
    LibrarySizes,
    column_pearson,
    depth_table,
    depth_table_to_record,
    library_sizes,
    warn_if_depth_driven,
)
from ._rarefy import canonical_gene_rank, rarefy_chunk, spot_keys
from ._score_genes import score_genes_matrix
from ._scoring import (
    CORREL_NORM_TYPES,
    SAMPLE_NORM_METHODS,
    SSGSEA_TIES,
    GeneMoments,
    SetIndex,
    aucell_chunk,
    iter_row_chunks,
    ssgsea_chunk,
    ulm_chunk,
    zscore_chunk,
    zscore_weights,
)

logger = logging.getLogger(__name__)

#: the values of ``score_pathways(method=...)``
PATHWAY_METHODS = ("ssgsea", "aucell", "zscore", "ulm", "score_genes")


def score_pathways(
    adata: AnnData,
    gene_sets: GeneSetsLike = "hallmark",
    *,
    method: Literal["ssgsea", "aucell", "zscore", "ulm", "score_genes"] = "ssgsea",
    layer: str | None = None,
    min_genes: int = 5,
    max_genes: int | None = None,
    gene_column: str | None = None,
    organism: str = "Human",
    weight: float = 0.25,
    sample_norm_method: str = "rank",
    correl_norm_type: str = "rank",
    ssgsea_norm: bool = True,
    ties: Literal["average", "gseapy"] = "average",
    auc_max_rank: float = 0.05,
    normalize: bool = True,
    target_sum: float = 1e4,
    smooth: bool = False,
    smooth_kwargs: Mapping[str, Any] | None = None,
    rarefy_depth: int | None = None,
    rarefy_draws: int = 1,
    random_state: int = 0,
    ctrl_size: int = 50,
    n_bins: int = 25,
    depth_diagnostics: bool = True,
    chunk_size: int = 2000,
    progress: bool | None = None,
    key_added: str = _keys.PATHWAY_SCORES,
    copy: bool = False,
) -> AnnData | None:
    """Score gene sets (pathways) in every spot.

    Parameters
    ----------
    adata
        AnnData with spots in rows; ``.X`` (or ``.layers[layer]``) holds raw counts
        (sparse or dense; a backed AnnData is read chunk by chunk).
    gene_sets
        ``"hallmark"`` (bundled MSigDB Hallmark v7.5.1, default), ``"reactome"`` or
        ``"wikipathways"`` (bundled, opt-in), a GMT path, a ``{name: [genes]}`` dict, or
        ``"enrichr:NAME"``: an Enrichr library fetched with ``gseapy.get_library`` (needs
        the network; another name is refused, never looked up online).
    method
        ``"ssgsea"``: single-sample GSEA (gseapy's definition; tied genes as set by
        ``ties``). ``"aucell"``: AUCell-style recovery AUC of the set in the top
        ``auc_max_rank`` genes, tied genes credited by expectation. ``"zscore"``: mean
        over set genes of per-gene z-scores (across spots) after library-size
        normalisation and ``log1p`` (scanpy). ``"ulm"``: per spot, t-value of the slope
        of a linear model of the log-normalised values of all genes on the set indicator
        (``decoupler.mt.ulm``). ``"score_genes"``: scanpy's ``sc.tl.score_genes`` (mean of
        the set's genes minus the mean of ``ctrl_size`` control genes drawn per expression
        bin) on log-normalised values, genes sorted by ``var_names`` before the draw;
        reads the whole matrix into memory. All methods give the same scores whatever the
        order of the genes (columns) with the default ``ties="average"``; see the
        "Pathway scoring" concept page for ties on count data and for sequencing depth.
    layer
        Read values from ``.layers[layer]`` instead of ``.X``.
    min_genes
        Drop sets with fewer genes found in the data (one warning lists them).
    max_genes
        Drop sets with more genes found (``None``: no limit; gseapy's default is 500).
    gene_column
        ``var`` column (or ``"var_names"``) with the identifiers to match; by default
        symbols come from ``var['gene_symbols']`` / ``feature_name`` / …, then
        ``var_names``; Ensembl gene sets match ``var['gene_ids']``. Symbols are matched
        case-insensitively (mouse ``Gapdh`` ↔ human ``GAPDH``).
    organism
        Organism for Enrichr libraries.
    weight
        ssGSEA weight exponent on the ranking metric (gseapy ``weight``).
    sample_norm_method
        ssGSEA per-spot normalisation: ``"rank"`` (``10000 * rank / n_genes``),
        ``"log_rank"``, ``"log"`` or ``"custom"`` (values as they are); gseapy semantics.
    correl_norm_type
        ``"rank"`` or ``"zscore"`` (gseapy ``correl_norm_type``; gseapy's ``"symrank"`` is
        a no-op in its Rust core, so it is not offered).
    ssgsea_norm
        Divide ssGSEA scores by ``max - min`` over all spots and sets (gseapy's ``NES``);
        ``False`` keeps the raw enrichment scores (gseapy's ``ES``).
    ties
        ssGSEA: rank of genes with tied values (on counts most genes of a spot tie, at 0,
        1, 2 …). ``"average"`` (default): the mean rank of the tie, so the score equals
        the mean over all orders of the tied genes and does not depend on the column
        order; an all-zero spot scores 0. ``"gseapy"``: tied genes in column order,
        identical to ``gseapy.ssgsea`` (scores change when the columns are reordered).
        Without ties (after ``sample_norm_method``; ``"log"`` maps values below 1 to one
        value) both agree with gseapy. Other methods only accept ``"average"``.
    auc_max_rank
        AUCell: genes ranked below this are ignored; a fraction of the number of genes
        (``< 1``) or an absolute number of ranks (``>= 1``).
    normalize
        z-score, ulm and score_genes: normalise counts per spot to ``target_sum`` and
        ``log1p`` first (set ``False`` when the input is already log-normalised).
    target_sum
        z-score, ulm and score_genes: counts per spot after library-size normalisation.
    smooth
        Average every spot's scores with its spatial neighbours (row-normalised
        ``I + A``). Uses ``obsp['spatial_connectivities']`` when present, otherwise
        builds the graph with `squidpy.gr.spatial_neighbors` (not stored).
    smooth_kwargs
        Keyword arguments for `squidpy.gr.spatial_neighbors` (e.g.
        ``{"coord_type": "grid", "n_neighs": 6}`` for Visium).
    rarefy_depth
        Score counts rarefied to this many per spot (drawn without replacement; raw
        integer counts needed): every spot keeps the same number of transcripts, so a
        score can no longer follow depth through the counts themselves. Spots with fewer
        counts are not scored (NaN; their number is logged and recorded). The draw is
        seeded per spot by ``random_state``, the draw number and the barcode, over the
        genes sorted by ``var_names``, so it depends neither on the other spots nor on
        the column order. ``None`` (default): the counts as they are.
    rarefy_draws
        Rarefy this many times (draws ``0 … rarefy_draws - 1``) and average the scores;
        with 2 or more the Pearson r of the first two draws is recorded per pathway.
    random_state
        Seed of the random draws (rarefaction, score_genes' control genes).
    ctrl_size, n_bins
        score_genes: control genes per expression bin and number of bins (scanpy's).
    depth_diagnostics
        Record per pathway the Pearson r and R² of the score on log library size and on
        log detected genes (see [`pathway_depth_diagnostics`][stalign.tl.pathway_depth_diagnostics])
        and log a warning when the median |r| on log library size exceeds 0.5. The
        library size is the row sum of the scored matrix (raw counts expected).
    chunk_size
        Spots per chunk; memory is bounded by it, results do not depend on it.
    progress
        Show a tqdm progress bar (default: when there are more than 10 chunks).
    key_added
        Key in ``.obsm`` and ``.uns`` for the results.
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    AnnData | None
        ``None``, or a copy of ``adata`` when ``copy=True``. Writes

        ``.obsm[key_added]``
            ``pd.DataFrame`` (spots × kept pathways, ``float64``), index = ``obs_names``.
        ``.uns[key_added]['params']``
            The parameters above, plus ``n_genes`` and the matched ``gene_column``;
            ``ties`` records how tied genes were ranked (``"none (values, not ranks)"`` for
            ``"zscore"`` and ``"ulm"``).
        ``.uns[key_added]['coverage']``
            Dict of columns, one row per input set: ``pathway``, ``n_total``, ``n_found``,
            ``fraction``, ``kept`` and ``missing`` (``;``-joined genes not in the data).
        ``.uns[key_added]['genes']``
            Dict ``{kept pathway: ;-joined var_names of its genes found in the data}``.
        ``.uns[key_added]['depth']``
            With ``depth_diagnostics``: dict of columns, one row per kept pathway,
            ``pathway``, ``n_spots``, ``r_log_counts``, ``r2_log_counts``, ``r_log_genes``,
            ``r2_log_genes`` (R²: of a cubic in the log covariate).
        ``.uns[key_added]['rarefaction']``
            With ``rarefy_depth``: ``depth``, ``draws``, ``n_spots_below`` and, with two or
            more draws, ``draw_agreement_r`` (per pathway) and its median.
    """
    opts = _checked_options(
        adata,
        method=method,
        layer=layer,
        sample_norm_method=sample_norm_method,
        correl_norm_type=correl_norm_type,
        ties=ties,
        chunk_size=chunk_size,
        weight=weight,
        auc_max_rank=auc_max_rank,
        copy=copy,
        normalize=normalize,
        target_sum=target_sum,
        depth=(rarefy_depth, rarefy_draws, random_state, ctrl_size, n_bins),
    )
    adata = adata.copy() if copy else adata
    x = adata.layers[layer] if layer is not None else adata.X
    if x is None:
        msg = "adata.X is empty; pass layer=... with the counts"
        raise ValueError(msg)
    n_spots, n_genes = adata.shape

    match = match_gene_sets(
        adata.var,
        load_gene_sets(gene_sets, organism=organism),
        min_genes=min_genes,
        max_genes=max_genes,
        gene_column=gene_column,
    )
    sets, names = SetIndex(match.indices, n_genes), match.names
    msg = "scoring %d gene sets (%s, matched on %s) in %d spots × %d genes"
    logger.info(msg, len(names), method, match.source, n_spots, n_genes)
    scores, rarefaction, sizes = _score_chunks(
        adata,
        x,
        sets,
        opts,
        names,
        chunk_size=chunk_size,
        progress=progress,
        rarefy_depth=rarefy_depth,
        rarefy_draws=rarefy_draws,
        tap_sizes=depth_diagnostics,
    )
    if method == "ssgsea" and ssgsea_norm:
        _normalize_ssgsea(scores)
    if smooth:
        scores = _smooth(adata, scores, smooth_kwargs)
    adata.obsm[key_added] = pd.DataFrame(scores, index=adata.obs_names.copy(), columns=names)
    params = {
        "gene_sets": gene_sets if isinstance(gene_sets, str) else type(gene_sets).__name__,
        "method": method,
        "layer": layer,
        "min_genes": min_genes,
        "max_genes": max_genes,
        "gene_column": match.source,
        "id_type": match.id_type,
        "n_genes": n_genes,
        "chunk_size": chunk_size,
        "smooth": smooth,
        "smooth_kwargs": dict(smooth_kwargs or {}),
        "ties": ties if method in ("ssgsea", "aucell") else "none (values, not ranks)",
        **_method_params(opts, ssgsea_norm=ssgsea_norm, auc_max_rank=auc_max_rank),
        **_rarefy_params(rarefy_depth, rarefy_draws, random_state),
    }
    adata.uns[key_added] = _uns_record(adata, match, params, rarefaction)
    if depth_diagnostics and _raw_counts_read(sizes):
        _record_depth(adata, key_added, scores, sizes.total, sizes.detected, names, method)
    return adata if copy else None


def _score_chunks(
    adata: AnnData,
    x,
    sets: SetIndex,
    opts: _Options,
    names: list[str],
    *,
    chunk_size: int,
    progress: bool | None,
    rarefy_depth: int | None,
    rarefy_draws: int,
    tap_sizes: bool,
) -> tuple[np.ndarray, dict | None, LibrarySizes]:
    """Score ``x`` in chunks of ``chunk_size`` spots.

    Returns ``(spots × sets scores, the rarefaction record or None, the library sizes read)``.
    """
    n_spots = adata.n_obs
    n_chunks = max(1, math.ceil(n_spots / chunk_size))
    show = progress if progress is not None else n_chunks > 10
    chunks = functools.partial(
        _finite_chunks, x, chunk_size, total=n_chunks, show=show, layer=opts.layer
    )
    sizes = LibrarySizes(n_spots)  # filled as the scorer reads the chunks
    if rarefy_depth is None:
        tapped = sizes.tap(chunks) if tap_sizes else chunks
        return _score_once(tapped, sets, n_spots, opts, adata.var_names, names), None, sizes
    # the library sizes decide which spots are scored: one pass first
    sizes.total, sizes.detected = _rarefy_library_sizes(x, chunk_size)
    scores, rarefaction = _score_rarefied(
        adata, chunks, sets, opts, names, sizes.total, rarefy_depth, rarefy_draws
    )
    return scores, rarefaction, sizes


def _rarefy_library_sizes(x, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Library sizes of every spot, before rarefying (raw counts needed)."""
    try:
        return library_sizes(x, chunk_size)
    except ValueError as e:
        msg = f"rarefy_depth needs raw integer counts: {e}"
        raise ValueError(msg) from e


def _record_depth(adata, key_added, scores, total, detected, names, method) -> None:
    """Write ``uns[key_added]['depth']``; warn when the scores follow depth."""
    table = depth_table(scores, total, detected, names=names)
    adata.uns[key_added][_keys.PATHWAY_DEPTH] = depth_table_to_record(table)
    section = adata.uns.get(_keys.STALIGN, {}).get(_keys.LIBRARY_ID) or "this AnnData"
    warn_if_depth_driven(table, section=str(section), method=method)


def _method_params(o: _Options, *, ssgsea_norm: bool, auc_max_rank: float) -> dict[str, Any]:
    """Return the method's own entries of ``uns[key_added]['params']``."""
    if o.method == "ssgsea":
        return {
            "weight": o.weight,
            "sample_norm_method": o.sample_norm_method,
            "correl_norm_type": o.correl_norm_type,
            "ssgsea_norm": ssgsea_norm,
        }
    if o.method == "aucell":
        return {"auc_max_rank": auc_max_rank, "max_rank": o.max_rank}
    params = {"normalize": o.normalize, "target_sum": o.target_sum}
    if o.method == "score_genes":
        params.update(
            ctrl_size=o.ctrl_size,
            n_bins=o.n_bins,
            random_state=o.random_state,
            gene_order="sorted by var_names",
        )
    return params


def _checked_options(
    adata: AnnData,
    *,
    normalize: bool,
    target_sum: float,
    depth: tuple[int | None, int, int, int, int],
    **kwargs,
) -> _Options:
    """Validate `score_pathways`' arguments; return the scorer's options.

    ``depth``: ``(rarefy_depth, rarefy_draws, random_state, ctrl_size, n_bins)``.
    """
    rarefy_depth, rarefy_draws, random_state, ctrl_size, n_bins = depth
    norms = _check_arguments(adata, **kwargs)
    _check_depth_arguments(rarefy_depth, rarefy_draws, random_state, ctrl_size, n_bins)
    return _Options(
        method=kwargs["method"],
        layer=kwargs["layer"],
        weight=kwargs["weight"],
        sample_norm_method=norms[0],
        correl_norm_type=norms[1],
        ties=kwargs["ties"],
        max_rank=_aucell_max_rank(kwargs["auc_max_rank"], adata.n_vars),
        normalize=normalize,
        target_sum=target_sum,
        ctrl_size=ctrl_size,
        n_bins=n_bins,
        random_state=random_state,
    )


def _check_arguments(
    adata: AnnData,
    *,
    method: str,
    layer: str | None,
    sample_norm_method: str | None,
    correl_norm_type: str | None,
    ties: str,
    chunk_size: int,
    weight: float,
    auc_max_rank: float,
    copy: bool,
) -> tuple[str, str]:
    """Validate `score_pathways`' arguments; return the two ssGSEA norms (None → default)."""
    if method not in PATHWAY_METHODS:
        msg = f"method must be one of {PATHWAY_METHODS}, found {method!r}"
        raise ValueError(msg)
    if sample_norm_method is None:
        sample_norm_method = "custom"
    if sample_norm_method not in SAMPLE_NORM_METHODS:
        msg = (
            f"sample_norm_method must be one of {SAMPLE_NORM_METHODS}, found {sample_norm_method!r}"
        )
        raise ValueError(msg)
    if correl_norm_type is None:
        correl_norm_type = "rank"
    if correl_norm_type not in CORREL_NORM_TYPES:
        msg = f"correl_norm_type must be one of {CORREL_NORM_TYPES}, found {correl_norm_type!r}"
        raise ValueError(msg)
    if ties not in SSGSEA_TIES:
        msg = f"ties must be one of {SSGSEA_TIES}, found {ties!r}"
        raise ValueError(msg)
    if ties != "average" and method != "ssgsea":
        msg = (
            f"ties={ties!r} applies to method='ssgsea' only; method={method!r} "
            "treats ties by expectation or by value (pass ties='average')"
        )
        raise ValueError(msg)
    if not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
        msg = f"chunk_size must be a positive integer, found {chunk_size!r}"
        raise ValueError(msg)
    if weight < 0:
        msg = f"weight must be >= 0, found {weight}"
        raise ValueError(msg)
    if auc_max_rank <= 0:
        msg = (
            f"auc_max_rank must be > 0 (fraction of genes or number of ranks), found {auc_max_rank}"
        )
        raise ValueError(msg)
    if copy and adata.isbacked:
        msg = "copy=True is not supported for a backed AnnData; load it or use copy=False"
        raise ValueError(msg)
    if layer is not None and layer not in adata.layers:
        msg = f"layer={layer!r} is not in adata.layers (available: {list(adata.layers)})"
        raise KeyError(msg)

    return sample_norm_method, correl_norm_type


def _aucell_max_rank(auc_max_rank: float, n_genes: int) -> int:
    """AUCell's rank cut-off: a fraction of the genes (< 1) or a number of ranks (>= 1)."""
    max_rank = max(1, math.ceil(auc_max_rank * n_genes)) if auc_max_rank < 1 else int(auc_max_rank)
    return min(max_rank, n_genes)


def _normalize_ssgsea(scores: np.ndarray) -> None:
    """Divide by ``max - min`` over all finite scores (gseapy's NES), in place."""
    if not scores.size:
        return
    finite = scores[np.isfinite(scores)]
    span = float(finite.max() - finite.min()) if finite.size else 0.0
    if span > 0:
        scores /= span


def _finite_chunks(x, chunk_size: int, desc: str, *, total: int, show: bool, layer: str | None):
    """Yield ``(start, stop, CSR chunk)`` of ``x`` with a progress bar; raise on NaN / inf."""
    from .._utils import progress_bar as tqdm

    it = iter_row_chunks(x, chunk_size)
    for start, stop, chunk in tqdm(it, total=total, desc=desc, disable=not show):
        if not np.isfinite(chunk.data).all():
            where = f"layers[{layer!r}]" if layer is not None else "X"
            msg = f"adata.{where} has NaN or infinite values in spots {start}:{stop}"
            raise ValueError(msg)
        yield start, stop, chunk


def _uns_record(
    adata: AnnData, match: Any, params: Mapping[str, Any], rarefaction: dict | None
) -> dict[str, Any]:
    """Build ``uns[key_added]``.

    Parameters, per-set coverage, the genes of each kept set, and the rarefaction record
    when the counts were rarefied.
    """
    coverage = match.coverage.reset_index()
    var_names = np.asarray(adata.var_names)
    genes = zip(match.names, match.indices, strict=True)
    record = {
        "params": _h5ad_safe(params),
        "coverage": {c: coverage[c].to_numpy() for c in coverage.columns},
        "genes": {n: ";".join(var_names[i]) for n, i in genes},
    }
    if rarefaction is not None:
        record[_keys.PATHWAY_RAREFACTION] = rarefaction
    return record


def _raw_counts_read(sizes: LibrarySizes) -> bool:
    """Whether the scored values were raw counts (depth diagnostics need them)."""
    if sizes.negative_in is None:
        return True
    logger.info("depth diagnostics skipped: the scored values are not raw counts")
    return False


def _counts_checked(chunks, desc: str, method: str, normalize: bool, layer: str | None):
    """Yield the chunks; with ``normalize`` raise on negative values (counts expected)."""
    for start, stop, chunk in chunks(desc):
        if normalize and chunk.data.size and chunk.data.min() < 0:
            where = f"layers[{layer!r}]" if layer is not None else "X"
            msg = (
                f"method={method!r} with normalize=True expects raw counts but adata.{where} "
                "has negative values; pass normalize=False for normalised input"
            )
            raise ValueError(msg)
        yield start, stop, chunk


def _zscore(chunks, sets: SetIndex, scores: np.ndarray, *, normalize, target_sum, layer):
    """Two passes: per-gene mean/std over spots, then mean z-score of the set genes."""
    moments = GeneMoments(sets, normalize=normalize, target_sum=target_sum)
    for _, _, chunk in _counts_checked(chunks, "z-score (1/2)", "zscore", normalize, layer):
        moments.update(chunk)
    weights = zscore_weights(moments)
    for start, stop, chunk in _counts_checked(chunks, "z-score (2/2)", "zscore", normalize, layer):
        scores[start:stop] = zscore_chunk(chunk, moments, weights)


def _smooth(adata: AnnData, scores: np.ndarray, smooth_kwargs) -> np.ndarray:
    """Row-normalised ``(I + A) @ scores`` over the squidpy spatial graph."""
    conn = adata.obsp.get("spatial_connectivities") if not smooth_kwargs else None
    if conn is None:
        if _keys.SPATIAL not in adata.obsm:
            msg = "smooth=True needs spot coordinates in adata.obsm['spatial']"
            raise ValueError(msg)
        import squidpy as sq

        tmp = AnnData(
            obs=pd.DataFrame(index=adata.obs_names.copy()),
            obsm={_keys.SPATIAL: np.asarray(adata.obsm[_keys.SPATIAL])},
        )
        with warnings.catch_warnings():  # squidpy >= 1.8 deprecates the generic entry point
            warnings.simplefilter("ignore", FutureWarning)
            sq.gr.spatial_neighbors(tmp, **dict(smooth_kwargs or {}))
        conn = tmp.obsp["spatial_connectivities"]
    a = sp.csr_matrix(conn, dtype=np.float64)
    a = (a != 0).astype(np.float64) + sp.identity(a.shape[0], format="csr")
    finite = np.isfinite(scores)
    if not finite.all():  # spots without a score (below a rarefaction depth) are skipped
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (a @ np.where(finite, scores, 0.0)) / (a @ finite.astype(np.float64))
        return np.where(finite, out, np.nan)
    deg = np.asarray(a.sum(axis=1)).ravel()
    return np.asarray(sp.diags(1.0 / deg) @ a @ scores)


def _h5ad_safe(d: Mapping[str, Any]) -> dict[str, Any]:
    """Make a params dict writable to .h5ad (no ``None``; nested dicts kept)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if v is None:
            out[k] = "None"
        elif isinstance(v, Mapping):
            out[k] = _h5ad_safe(v)
        elif isinstance(v, np.generic):
            out[k] = v.item()
        else:
            out[k] = v
    return out


@dataclass(frozen=True)
class _Options:
    """The method and its settings, as `_score_once` needs them."""

    method: str
    layer: str | None
    weight: float
    sample_norm_method: str
    correl_norm_type: str
    ties: str
    max_rank: int
    normalize: bool
    target_sum: float
    ctrl_size: int
    n_bins: int
    random_state: int


def _score_once(
    chunks, sets: SetIndex, n_rows: int, o: _Options, var_names: pd.Index, names: list[str]
) -> np.ndarray:
    """Raw scores ``(rows, sets)`` of the rows ``chunks`` yields (ssGSEA not yet normalised)."""
    scores = np.empty((n_rows, sets.n_sets), dtype=np.float64)
    if o.method == "ssgsea":
        for start, stop, chunk in chunks("ssGSEA"):
            scores[start:stop] = ssgsea_chunk(
                chunk,
                sets,
                weight=o.weight,
                sample_norm_method=o.sample_norm_method,
                correl_norm_type=o.correl_norm_type,
                ties=o.ties,
            )
    elif o.method == "aucell":
        for start, stop, chunk in chunks("AUCell"):
            scores[start:stop] = aucell_chunk(chunk, sets, max_rank=o.max_rank)
    elif o.method == "zscore":
        _zscore(chunks, sets, scores, normalize=o.normalize, target_sum=o.target_sum, layer=o.layer)
    elif o.method == "score_genes":
        scores[:] = _score_genes(chunks, sets, o, var_names, names)
    else:
        for start, stop, chunk in _counts_checked(chunks, "ULM", o.method, o.normalize, o.layer):
            scores[start:stop] = ulm_chunk(
                chunk, sets, normalize=o.normalize, target_sum=o.target_sum
            )
    return scores


def _score_genes(chunks, sets: SetIndex, o: _Options, var_names: pd.Index, names) -> np.ndarray:
    """Run scanpy's ``score_genes`` on the whole matrix (log-normalised first), genes sorted."""
    parts = [
        c for _, _, c in _counts_checked(chunks, "score_genes", o.method, o.normalize, o.layer)
    ]
    x = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, sets.n_genes))
    x = x.astype(np.float64)
    if o.normalize:
        x = lognorm_matrix(x, target_sum=o.target_sum)
    indices = [sets.u_genes[sets.set_u[a:b]] for a, b in itertools.pairwise(sets.set_ptr)]
    return score_genes_matrix(
        x,
        var_names,
        canonical_gene_rank(var_names, what="method='score_genes'"),
        indices,
        set_names=names,
        ctrl_size=o.ctrl_size,
        n_bins=o.n_bins,
        random_state=o.random_state,
    )


def _score_rarefied(
    adata: AnnData,
    chunks,
    sets: SetIndex,
    o: _Options,
    names: list[str],
    total: np.ndarray,
    depth: int,
    draws: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Scores on counts rarefied to ``depth``, averaged over ``draws``; NaN below the depth.

    Returns the scores (all spots) and the record ``uns[key_added]['rarefaction']``.
    """
    ok = total >= depth
    n_ok = int(ok.sum())
    if not n_ok:
        msg = (
            f"rarefy_depth={depth}: no spot has that many counts (largest library: "
            f"{int(total.max()) if total.size else 0}); choose a lower depth"
        )
        raise ValueError(msg)
    rank = canonical_gene_rank(adata.var_names, what="rarefy_depth")
    keys = spot_keys(adata.obs_names)
    per_draw = []
    for draw in range(draws):
        drawn = functools.partial(
            _rarefied_chunks, chunks, ok=ok, depth=depth, rank=rank, keys=keys,
            random_state=o.random_state, draw=draw,
        )  # fmt: skip
        per_draw.append(_score_once(drawn, sets, n_ok, o, adata.var_names, names))
    scores = np.full((adata.n_obs, sets.n_sets), np.nan)
    scores[ok] = np.mean(per_draw, axis=0)
    n_below = int((~ok).sum())
    if n_below:
        logger.info(
            "rarefy_depth=%d: %d of %d spots have fewer counts; their scores are NaN",
            depth,
            n_below,
            adata.n_obs,
        )
    record: dict[str, Any] = {"depth": int(depth), "draws": int(draws), "n_spots_below": n_below}
    if draws >= 2:
        agree = column_pearson(per_draw[0], per_draw[1])
        record["draw_agreement_r"] = agree
        record["median_draw_agreement_r"] = float(np.nanmedian(agree)) if agree.size else np.nan
    return scores, record


def _rarefied_chunks(chunks, desc: str, *, ok, depth, rank, keys, random_state, draw):
    """Yield the chunks' rows with ``ok``, rarefied, renumbered among those rows."""
    pos = 0
    for start, stop, chunk in chunks(desc):
        sel = np.flatnonzero(ok[start:stop])
        if not sel.size:
            continue
        sub = rarefy_chunk(
            chunk[sel], depth, gene_rank=rank, keys=keys[start:stop][sel],
            random_state=random_state, draw=draw,
        )  # fmt: skip
        yield pos, pos + sel.size, sub
        pos += sel.size


def _check_depth_arguments(
    rarefy_depth: int | None, rarefy_draws: int, random_state: int, ctrl_size: int, n_bins: int
) -> None:
    """Validate the rarefaction and ``score_genes`` arguments of `score_pathways`."""
    checks = {
        "rarefy_draws": (rarefy_draws, 1),
        "ctrl_size": (ctrl_size, 1),
        "n_bins": (n_bins, 2),
        "random_state": (random_state, 0),
    }
    if rarefy_depth is not None:
        checks["rarefy_depth"] = (rarefy_depth, 1)
    for name, (value, low) in checks.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            msg = f"{name} must be an integer >= {low}, found {value!r}"
            raise ValueError(msg)


def _rarefy_params(depth: int | None, draws: int, random_state: int) -> dict[str, Any]:
    """Return the rarefaction entries of ``uns[key_added]['params']``."""
    if depth is None:
        return {"rarefy_depth": None}
    return {"rarefy_depth": int(depth), "rarefy_draws": int(draws), "random_state": random_state}
