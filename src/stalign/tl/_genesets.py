"""Gene-set collections: bundled MSigDB GMTs, user GMT files, dicts, gseapy libraries."""

from __future__ import annotations

import difflib
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

#: prefix of a gene-set name that asks for an Enrichr library (downloaded by gseapy)
ENRICHR_PREFIX = "enrichr:"

GeneSetsLike = str | os.PathLike | Mapping[str, Iterable[str]]


def bundled_gmt_path(name: str) -> Path:
    """Return the path of a bundled GMT file.

    Parameters
    ----------
    name
        One of ``"hallmark"``, ``"reactome"``, ``"wikipathways"`` (case-insensitive).

    Returns
    -------
    Path
        The GMT file inside the installed package.
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
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            parsed = _parse_gmt_line(path, lineno, raw)
            if parsed is None:
                continue
            name, genes = parsed
            if name in sets:
                logger.warning("%s: gene set %r appears twice; keeping the last one", path, name)
            sets[name] = list(dict.fromkeys(genes))
    if not sets:
        msg = f"gene-set file {path} contains no gene sets"
        raise ValueError(msg)
    return sets


def _parse_gmt_line(path: Path, lineno: int, raw: bytes) -> tuple[str, list[str]] | None:
    """Return ``(name, genes)`` of one GMT line (``None`` for a blank line).

    Raises
    ------
    ValueError
        The line is not UTF-8, has fewer than 3 tab-separated fields or no set name;
        the message names the file and the line.
    """
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        msg = (
            f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
            f"{e.start + 1}); save the GMT file as UTF-8"
        )
        raise ValueError(msg) from None
    if not line.strip():
        return None
    fields = line.split("\t")
    if len(fields) < 3:
        msg = (
            f"{path}:{lineno}: expected a GMT line 'name<TAB>description<TAB>gene…' "
            f"with at least 3 tab-separated fields, found {len(fields)}"
        )
        raise ValueError(msg)
    name = fields[0].strip()
    if not name:
        msg = f"{path}:{lineno}: the gene set has no name (the line starts with a tab)"
        raise ValueError(msg)
    return name, [g.strip() for g in fields[2:] if g.strip()]


def _from_gseapy(name: str, organism: str) -> dict[str, list[str]]:
    """Fetch an Enrichr library through ``gseapy.get_library`` (needs the network)."""
    import gseapy

    try:
        lib = gseapy.get_library(name=name, organism=organism)
    except ValueError as e:
        msg = (
            f"gene_sets='{ENRICHR_PREFIX}{name}': no Enrichr library {name!r} known to gseapy: {e}"
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
        ``{set name: genes}``, or ``"enrichr:NAME"``: the Enrichr library NAME fetched
        with ``gseapy.get_library`` (needs the network; nothing is downloaded
        without the prefix, see `gene_set_source`).
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
        kind, value = gene_set_source(gene_sets)
        if kind == "bundled":
            return {k: list(v) for k, v in _read_bundled(value).items()}
        if kind == "file":
            return read_gmt(value)
        return _from_gseapy(value, organism)
    msg = (
        "gene_sets must be a bundled collection name, a GMT path, 'enrichr:NAME' "
        f"or a dict; found {type(gene_sets).__name__}"
    )
    raise TypeError(msg)


def gene_set_source(name: str) -> tuple[str, str]:
    """Say where the gene-set name ``name`` resolves, without reading or downloading it.

    Parameters
    ----------
    name
        A bundled collection (``hallmark``, ``reactome``, ``wikipathways``; any case),
        a GMT file (an existing path, or one ending in ``.gmt`` or holding a path
        separator) or ``enrichr:NAME`` (an Enrichr library, downloaded by gseapy).

    Returns
    -------
    tuple[str, str]
        ``("bundled", collection)``, ``("file", path)`` or ``("enrichr", NAME)``.

    Raises
    ------
    ValueError
        Anything else (e.g. the typo ``hallmrk``): one line listing the bundled
        names. An unknown name never reaches the network.
    """
    if name.lower() in BUNDLED_GENE_SETS:
        return "bundled", name.lower()
    if name.lower().startswith(ENRICHR_PREFIX):
        library = name[len(ENRICHR_PREFIX) :].strip()
        if not library:
            msg = f"gene sets {name!r}: name the Enrichr library after {ENRICHR_PREFIX!r}"
            raise ValueError(msg)
        return "enrichr", library
    if name.lower().endswith(".gmt") or os.sep in name or Path(name).exists():
        return "file", name
    close = difflib.get_close_matches(name.lower(), BUNDLED_GENE_SETS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    msg = (
        f"unknown gene sets {name!r}: {hint}expected a bundled collection "
        f"({', '.join(sorted(BUNDLED_GENE_SETS))}), a GMT file, or "
        f"'{ENRICHR_PREFIX}NAME' to download an Enrichr library"
    )
    raise ValueError(msg)
