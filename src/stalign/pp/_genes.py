"""Gene-identifier harmonisation: symbols / Ensembl ids, mouse → human by case."""

from __future__ import annotations

import functools
import logging
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import _keys

logger = logging.getLogger(__name__)

#: var columns searched (in order) for gene symbols
SYMBOL_COLUMNS: tuple[str, ...] = (
    _keys.GENE_SYMBOLS,
    "feature_name",
    "gene_name",
    "gene_symbol",
    "symbol",
    "name",
)
#: var columns searched (in order) for Ensembl / platform ids
ID_COLUMNS: tuple[str, ...] = (_keys.GENE_IDS, "gene_id", "ensembl_id", "feature_id")

_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$", re.IGNORECASE)
_VERSION_RE = re.compile(r"\.\d+$")
_ENSEMBL_LINE_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(?:\.\d+)?$", re.IGNORECASE | re.MULTILINE)


def looks_like_ensembl(names: Iterable[str], *, min_fraction: float = 0.5) -> bool:
    """Return True when at least ``min_fraction`` of ``names`` look like Ensembl gene ids.

    Parameters
    ----------
    names
        Gene identifiers.
    min_fraction
        Fraction of identifiers that must match ``ENS[species]G<digits>[.version]``.

    Returns
    -------
    bool
        Whether the identifiers are (mostly) Ensembl gene ids.
    """
    names = [str(n) for n in names]
    if not names:
        return False
    # one regex scan over the joined names (C speed) instead of one match per name
    text = "\n".join(names)
    if text.count("\n") != len(names) - 1:  # a name contains a newline
        text = "\n".join(n.replace("\n", " ") for n in names)
    hits = len(_ENSEMBL_LINE_RE.findall(text))
    return hits / len(names) >= min_fraction


def normalize_gene_keys(names: Iterable[str], *, id_type: str) -> np.ndarray:
    """Return matching keys: upper-case symbols, or Ensembl ids without version suffix.

    Upper-casing symbols is the usual mouse → human ortholog approximation
    (``Gapdh`` → ``GAPDH``).

    Parameters
    ----------
    names
        Gene identifiers.
    id_type
        ``"symbol"`` or ``"ensembl"``.

    Returns
    -------
    np.ndarray
        Array of ``str`` keys, same length and order as ``names``.
    """
    if id_type not in ("symbol", "ensembl"):
        msg = f"id_type must be 'symbol' or 'ensembl', found {id_type!r}"
        raise ValueError(msg)
    keys = [str(n).strip().upper() for n in names]
    if id_type == "ensembl":
        keys = [_VERSION_RE.sub("", k) for k in keys]
    out = np.empty(len(keys), dtype=object)
    out[:] = keys
    return out


def gene_keys(
    var: pd.DataFrame, *, id_type: str = "symbol", gene_column: str | None = None
) -> tuple[np.ndarray, str]:
    """Pick the ``var`` column holding identifiers of ``id_type`` and return matching keys.

    Parameters
    ----------
    var
        ``adata.var``.
    id_type
        ``"symbol"`` (looks in ``gene_symbols``, ``feature_name``, ``gene_name``, …, then
        ``var_names`` unless they are Ensembl ids) or ``"ensembl"`` (``gene_ids``,
        ``gene_id``, …, then ``var_names`` if they are Ensembl ids).
    gene_column
        Use this ``var`` column (or ``"var_names"``) instead of searching.

    Returns
    -------
    tuple[np.ndarray, str]
        ``(keys, source)`` where ``keys`` are the normalised identifiers per gene and
        ``source`` names the column used.
    """
    if gene_column is not None:
        if gene_column == "var_names":
            values = var.index
        elif gene_column in var.columns:
            values = var[gene_column]
        else:
            msg = (
                f"gene_column={gene_column!r} is not a column of adata.var; "
                f"available: {list(var.columns)} or 'var_names'"
            )
            raise KeyError(msg)
        return normalize_gene_keys(values.astype(str), id_type=id_type), gene_column

    candidates = SYMBOL_COLUMNS if id_type == "symbol" else ID_COLUMNS
    for col in candidates:
        if col in var.columns:
            values = var[col].astype(str)
            if id_type == "symbol" and looks_like_ensembl(values):
                continue
            if id_type == "ensembl" and not looks_like_ensembl(values):
                continue
            return normalize_gene_keys(values, id_type=id_type), col
    names_are_ensembl = looks_like_ensembl(var.index)
    if (id_type == "symbol") != names_are_ensembl:
        return normalize_gene_keys(var.index, id_type=id_type), "var_names"
    if id_type == "symbol":
        msg = (
            "the gene sets use gene symbols but adata.var_names look like Ensembl ids "
            f"(e.g. {list(var.index[:3])}) and adata.var has no symbol column (looked for "
            f"{list(SYMBOL_COLUMNS)}); add the symbols as adata.var['gene_symbols'] "
            "or pass gene_column='<your column>'"
        )
    else:
        msg = (
            "the gene sets use Ensembl ids but neither adata.var_names nor a var column "
            f"({list(ID_COLUMNS)}) holds Ensembl ids; pass gene_column='<your column>' "
            "or use symbol gene sets"
        )
    raise ValueError(msg)


@dataclass
class GeneSetMatch:
    """Gene sets matched to the genes of an AnnData.

    Attributes
    ----------
    names
        Kept set names (in input order).
    indices
        For each kept set, the sorted ``var`` positions of its genes.
    coverage
        One row per input set: ``n_total``, ``n_found``, ``fraction``, ``kept``,
        ``missing`` (``;``-joined genes not found).
    id_type
        ``"symbol"`` or ``"ensembl"``.
    source
        The ``var`` column (or ``"var_names"``) the genes were matched on.
    """

    names: list[str]
    indices: list[np.ndarray]
    coverage: pd.DataFrame
    id_type: str
    source: str
    dropped: list[str] = field(default_factory=list)

    def membership(self, n_genes: int, dtype: type = np.float64) -> np.ndarray:
        """Return the dense ``(n_genes, n_sets)`` 0/1 membership matrix."""
        m = np.zeros((n_genes, len(self.names)), dtype=dtype)
        for j, idx in enumerate(self.indices):
            m[idx, j] = 1
        return m


@dataclass(frozen=True)
class _PreparedSets:
    """Gene sets as arrays: distinct normalised keys, and per set its keys' codes (CSR)."""

    names: list[str]
    id_type: str
    keys: np.ndarray  # distinct normalised keys (object array)
    codes: np.ndarray  # per entry: position in ``keys`` (sets concatenated, keys unique per set)
    ptr: np.ndarray  # set ``j`` owns ``codes[ptr[j]:ptr[j + 1]]``


def _prepared_sets(gene_sets: Mapping[str, Sequence[str]]) -> _PreparedSets:
    """Normalise the gene sets; a collection (by content) is prepared once per process."""
    try:
        content = tuple((name, tuple(genes)) for name, genes in gene_sets.items())
        hash(content)
    except TypeError:  # unhashable entries: prepare without the cache
        return _prepare_sets(tuple((n, tuple(map(str, g))) for n, g in gene_sets.items()))
    return _prepare_sets(content)


@functools.lru_cache(maxsize=8)
def _prepare_sets(content: tuple[tuple[str, tuple[str, ...]], ...]) -> _PreparedSets:
    all_genes = [g for _, genes in content for g in genes]
    id_type = "ensembl" if looks_like_ensembl(all_genes) else "symbol"
    distinct = list(dict.fromkeys(all_genes))
    key_of = dict(zip(distinct, normalize_gene_keys(distinct, id_type=id_type), strict=True))
    code_of: dict[str, int] = {}
    codes: list[int] = []
    ptr = [0]
    for _, genes in content:
        for k in dict.fromkeys(key_of[g] for g in genes):  # unique keys, in set order
            codes.append(code_of.setdefault(k, len(code_of)))
        ptr.append(len(codes))
    keys = np.empty(len(code_of), dtype=object)
    keys[:] = list(code_of)
    return _PreparedSets(
        names=[str(name) for name, _ in content],
        id_type=id_type,
        keys=keys,
        codes=np.asarray(codes, dtype=np.int64),
        ptr=np.asarray(ptr, dtype=np.int64),
    )


def _entry_positions(keys: np.ndarray, prepared, id_type: str) -> np.ndarray:
    """Return the ``var`` position of every gene-set entry (-1: not in the data).

    A key held by several genes maps to the first of them.
    """
    n_vars = len(keys)
    index = pd.Index(keys)
    first = ~index.duplicated(keep="first")
    n_dup = int(n_vars - first.sum())
    if n_dup:
        logger.info(
            "%d genes share a %s key with an earlier gene (case-insensitive); the first one "
            "is used for gene-set membership",
            n_dup,
            id_type,
        )
    # var position of every distinct set key (-1: not in the data), then of every entry
    hit = pd.Index(keys[first]).get_indexer(prepared.keys)
    hit = np.where(hit >= 0, np.flatnonzero(first)[np.maximum(hit, 0)], -1)
    return hit[prepared.codes]


def match_gene_sets(
    var: pd.DataFrame,
    gene_sets: Mapping[str, Sequence[str]],
    *,
    min_genes: int = 5,
    max_genes: int | None = None,
    gene_column: str | None = None,
) -> GeneSetMatch:
    """Match gene sets to ``var`` (symbols or Ensembl ids; case-insensitive symbols).

    Identifier type is detected from the gene sets (Ensembl when most genes look
    like ``ENS…G…``, symbols otherwise). Each set gene maps to the first ``var``
    row with the same key. Sets with fewer than ``min_genes`` (or more than
    ``max_genes``) genes found are dropped with one warning listing them.

    Parameters
    ----------
    var
        ``adata.var``.
    gene_sets
        ``{set name: [genes]}``.
    min_genes
        Minimum number of genes found for a set to be kept.
    max_genes
        Maximum number of genes found (``None``: no limit).
    gene_column
        ``var`` column (or ``"var_names"``) to match on; searched when ``None``.

    Returns
    -------
    GeneSetMatch
        A [`GeneSetMatch`][stalign.pp.GeneSetMatch].
    """
    if min_genes < 1:
        msg = f"min_genes must be >= 1, found {min_genes}"
        raise ValueError(msg)
    if max_genes is not None and max_genes < min_genes:
        msg = f"max_genes ({max_genes}) must be >= min_genes ({min_genes})"
        raise ValueError(msg)
    prepared = _prepared_sets(gene_sets)
    id_type = prepared.id_type
    keys, source = gene_keys(var, id_type=id_type, gene_column=gene_column)
    n_vars = len(keys)
    entry_hit = _entry_positions(keys, prepared, id_type)

    names: list[str] = []
    indices: list[np.ndarray] = []
    dropped: list[str] = []
    n_total = np.diff(prepared.ptr)
    n_found = np.zeros(len(n_total), dtype=np.int64)
    kept = np.zeros(len(n_total), dtype=bool)
    missing: list[str] = []
    for j, name in enumerate(prepared.names):
        lo, hi = prepared.ptr[j], prepared.ptr[j + 1]
        h = entry_hit[lo:hi]
        found = np.sort(h[h >= 0])  # distinct keys have distinct first positions
        n_found[j] = found.size
        missing.append(";".join(prepared.keys[prepared.codes[lo:hi][h < 0]]))
        kept[j] = min_genes <= found.size < n_vars and (
            max_genes is None or found.size <= max_genes
        )
        if kept[j]:
            names.append(name)
            indices.append(found.astype(np.int64))
        else:
            dropped.append(f"{name} ({found.size}/{n_total[j]})")
    any_overlap = bool((n_found > 0).any())
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(n_total > 0, n_found / np.maximum(n_total, 1), 0.0)
    coverage = pd.DataFrame(
        {
            "n_total": n_total,
            "n_found": n_found,
            "fraction": fraction,
            "kept": kept,
            "missing": missing,
        },
        index=pd.Index(prepared.names, name="pathway"),
    )

    if not any_overlap:
        sample_sets = next(iter(gene_sets.values()))
        msg = (
            f"no gene of any gene set was found in the data: matched {id_type} keys from "
            f"adata.var[{source!r}] (e.g. {list(keys[:3])}) against set genes "
            f"(e.g. {list(sample_sets)[:3]}). Check that the data carry gene symbols "
            "(adata.var['gene_symbols']) or pass gene_column=..."
        )
        raise ValueError(msg)
    if not names:
        best = coverage.sort_values("n_found", ascending=False).head(3)
        msg = (
            f"no gene set has at least min_genes={min_genes} genes in the data"
            + (f" and at most max_genes={max_genes}" if max_genes is not None else "")
            + "; best coverage: "
            + ", ".join(f"{n} {r.n_found}/{r.n_total}" for n, r in best.iterrows())
            + ". Lower min_genes or use another collection."
        )
        raise ValueError(msg)
    if dropped:
        limit = f" or more than max_genes={max_genes}" if max_genes is not None else ""
        msg = (
            f"dropped {len(dropped)} of {len(gene_sets)} gene sets with fewer than "
            f"min_genes={min_genes} genes{limit} in the data (found/total): {', '.join(dropped)}"
        )
        warnings.warn(msg, UserWarning, stacklevel=3)
    return GeneSetMatch(
        names=names,
        indices=indices,
        coverage=coverage,
        id_type=id_type,
        source=source,
        dropped=dropped,
    )
