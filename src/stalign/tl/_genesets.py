"""Gene-set collections: bundled MSigDB GMTs, user GMT files, dicts, gseapy libraries."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

logger = logging.getLogger(__name__)

#: bundled collections: name -> GMT file inside ``stalign/data/genesets`` (MSigDB v7.5.1, CC BY 4.0)
BUNDLED_GENE_SETS: dict[str, str] = {
    "hallmark": "h.all.v7.5.1.symbols.gmt",
    "reactome": "c2.cp.reactome.v7.5.1.symbols.gmt",
    "wikipathways": "c2.cp.wikipathways.v7.5.1.symbols.gmt",
}

GeneSetsLike = str | os.PathLike | Mapping[str, Iterable[str]]


def bundled_gmt_path(name: str) -> Path:
    """Return the path of a bundled GMT file.

    Parameters
    ----------
    name
        One of ``"hallmark"``, ``"reactome"``, ``"wikipathways"`` (case-insensitive).

    Returns
    -------
    Path to the GMT file inside the installed package.
    """
    key = name.lower()
    if key not in BUNDLED_GENE_SETS:
        msg = (
            f"unknown bundled gene-set collection {name!r}; "
            f"expected one of {sorted(BUNDLED_GENE_SETS)}"
        )
        raise ValueError(msg)
    path = Path(str(resources.files("stalign") / "data" / "genesets" / BUNDLED_GENE_SETS[key]))
    if not path.is_file():
        msg = (
            f"bundled gene-set file {path} is missing from the installation; "
            "reinstall stalign or pass a local GMT path"
        )
        raise FileNotFoundError(msg)
    return path


def read_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a GMT file (one set per line: name, description, genes…, tab-separated).

    Parameters
    ----------
    path
        Path of the ``.gmt`` file.

    Returns
    -------
    dict[str, list[str]]
        ``{set name: [genes]}`` in file order; duplicate genes inside a set are dropped
        (first occurrence kept).
    """
    path = Path(path)
    if not path.is_file():
        msg = f"gene-set file {path} does not exist (expected a GMT file)"
        raise FileNotFoundError(msg)
    sets: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 3:
                msg = (
                    f"{path}:{lineno}: expected a GMT line 'name<TAB>description<TAB>gene…' "
                    f"with at least 3 tab-separated fields, found {len(fields)}"
                )
                raise ValueError(msg)
            name = fields[0].strip()
            genes = [g.strip() for g in fields[2:] if g.strip()]
            if name in sets:
                logger.warning("%s: gene set %r appears twice; keeping the last one", path, name)
            sets[name] = list(dict.fromkeys(genes))
    if not sets:
        msg = f"gene-set file {path} contains no gene sets"
        raise ValueError(msg)
    return sets


def _from_gseapy(name: str, organism: str) -> dict[str, list[str]]:
    """Fetch an Enrichr library through ``gseapy.get_library`` (needs the network)."""
    import gseapy

    try:
        lib = gseapy.get_library(name=name, organism=organism)
    except ValueError as e:
        msg = (
            f"gene_sets={name!r} is neither a bundled collection {sorted(BUNDLED_GENE_SETS)}, "
            f"an existing GMT file, nor an Enrichr library known to gseapy: {e}"
        )
        raise ValueError(msg) from e
    except Exception as e:  # requests/urllib errors when offline
        msg = (
            f"could not download the gene-set library {name!r} via gseapy.get_library "
            f"({type(e).__name__}: {e}). This needs network access to Enrichr. Offline, "
            "download the library once elsewhere as a .gmt file and pass its path, e.g. "
            "score_pathways(adata, gene_sets='/path/to/library.gmt'), or pass a dict "
            "{set name: [genes]}, or use a bundled collection "
            f"{sorted(BUNDLED_GENE_SETS)}."
        )
        raise ConnectionError(msg) from e
    return {str(k): list(dict.fromkeys(map(str, v))) for k, v in lib.items()}


@functools.lru_cache(maxsize=len(BUNDLED_GENE_SETS))
def _read_bundled(name: str) -> dict[str, tuple[str, ...]]:
    """Parse a bundled GMT once per process (immutable values; callers copy)."""
    return {k: tuple(v) for k, v in read_gmt(bundled_gmt_path(name)).items()}


def load_gene_sets(gene_sets: GeneSetsLike, *, organism: str = "Human") -> dict[str, list[str]]:
    """Resolve ``gene_sets`` into a ``{set name: [genes]}`` dict.

    Parameters
    ----------
    gene_sets
        ``"hallmark"`` (MSigDB Hallmark v7.5.1, bundled), ``"reactome"`` or
        ``"wikipathways"`` (bundled, opt-in), a path to a GMT file, a mapping
        ``{set name: genes}``, or the name of an Enrichr library fetched with
        ``gseapy.get_library`` (needs the network).
    organism
        Organism for Enrichr libraries (ignored otherwise).

    Returns
    -------
    dict[str, list[str]]
        A new dict ``{set name: [unique genes in input order]}``.
    """
    if isinstance(gene_sets, Mapping):
        out: dict[str, list[str]] = {}
        for name, genes in gene_sets.items():
            if isinstance(genes, str):
                msg = f"gene_sets[{name!r}] is a single string {genes!r}; expected a list of genes"
                raise TypeError(msg)
            out[str(name)] = list(dict.fromkeys(str(g) for g in genes))
        if not out:
            msg = "gene_sets is an empty mapping; expected {set name: [genes]}"
            raise ValueError(msg)
        return out
    if isinstance(gene_sets, os.PathLike):
        return read_gmt(gene_sets)
    if isinstance(gene_sets, str):
        if gene_sets.lower() in BUNDLED_GENE_SETS:
            return {k: list(v) for k, v in _read_bundled(gene_sets.lower()).items()}
        if gene_sets.lower().endswith(".gmt") or os.sep in gene_sets or Path(gene_sets).exists():
            return read_gmt(gene_sets)
        return _from_gseapy(gene_sets, organism)
    msg = (
        "gene_sets must be a bundled collection name, a GMT path, a gseapy library name "
        f"or a dict; found {type(gene_sets).__name__}"
    )
    raise TypeError(msg)
