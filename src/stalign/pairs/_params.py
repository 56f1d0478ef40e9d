"""Parameters of a pairs build (one frozen dataclass, recorded in every shard)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["PairsParams"]


@dataclass(frozen=True)
class PairsParams:
    """Everything that determines a shard's content.

    Attributes
    ----------
    mpp
        Target µm per pixel of the patches (HEST: 0.5).
    size_px
        Patch side, px (HEST: 224). The field of view is ``mpp * size_px`` µm.
    tissue_threshold
        Minimum tissue fraction of a patch, in [0, 1], to keep its spot, where the
        platform's in-tissue call is not used (and always with ``tissue_qc="pixels"``).
    tissue_qc
        How a patch's tissue fraction is measured: ``"mask"`` — its coverage by
        the slide-level tissue mask ([`stalign.im.tissue_mask`][stalign.im.tissue_mask]);
        ``"pixels"`` — its fraction of saturated pixels (the rule before the mask;
        fat and pale stroma count as background).
    min_mask_coverage
        With ``tissue_qc="mask"`` and the platform's in-tissue call used: minimum
        mask coverage, in [0, 1], of a spot the platform calls in tissue (only
        patches really off the tissue are dropped).
    gene_sets
        Gene-set collection for `stalign.tl.score_pathways` (name such as
        ``"hallmark"`` or a GMT path), or ``None`` to skip pathway scores.
    method
        Pathway scoring method passed to [`stalign.tl.score_pathways`][stalign.tl.score_pathways].
    min_genes
        Minimum genes of a set found in the panel for it to be scored.
    ties
        How ssGSEA ranks tied genes (``ties`` of `stalign.tl.score_pathways`):
        ``"average"`` makes the scores independent of the gene order.
    rarefy_depth
        Score pathways on counts rarefied to this many per spot (``rarefy_depth`` of
        `stalign.tl.score_pathways`), so that the training targets cannot follow
        sequencing depth through the counts. Spots with fewer counts are dropped (reason
        ``below_rarefy_depth`` in ``spots.csv`` and the QC report). A fixed number, not
        a quantile: a sharded build never sees the whole cohort. ``None``: no rarefaction.
    rarefy_draws
        Rarefy this many times and average the scores (the QC report shows the
        agreement of the first two draws).
    random_state
        Seed of the scores' random draws (rarefaction; ``score_genes``' control genes).
    gene_panel
        Genes whose counts are stored: ``"all"``, ``"hvg:N"`` (the N most
        variable genes of each sample) or a path to a text file with one gene
        per line. Pathway scores always use every gene of the sample.
    use_in_tissue
        Trust the platform's in-tissue call (``obs['in_tissue']``): drop spots it
        calls outside tissue and, with ``tissue_qc="mask"``, keep the others down to
        ``min_mask_coverage``.
    jpeg
        Store patches as JPEG streams instead of raw uint8 arrays.
    jpeg_quality
        JPEG quality (1–100) when ``jpeg``.
    thumbnail_px
        Longest side of the QC thumbnail, px.

    These fields hold the only defaults of a pairs build: `build_pairs`' keyword
    overrides and ``stalign build-pairs``' flags leave an unset one at them (see
    `with_overrides`).
    """

    mpp: float = 0.5
    size_px: int = 224
    tissue_threshold: float = 0.5
    tissue_qc: str = "mask"
    min_mask_coverage: float = 0.1
    gene_sets: str | None = "hallmark"
    method: str = "ssgsea"
    min_genes: int = 5
    ties: str = "average"
    rarefy_depth: int | None = None
    rarefy_draws: int = 1
    random_state: int = 0
    gene_panel: str = "all"
    use_in_tissue: bool = True
    jpeg: bool = False
    jpeg_quality: int = 90
    thumbnail_px: int = 512

    def __post_init__(self) -> None:
        if not (self.mpp > 0):
            msg = f"mpp must be a positive number of µm per pixel, got {self.mpp!r}"
            raise ValueError(msg)
        if int(self.size_px) != self.size_px or self.size_px < 8:
            msg = f"size_px must be an integer >= 8 px, got {self.size_px!r}"
            raise ValueError(msg)
        if not 0.0 <= self.tissue_threshold <= 1.0:
            msg = f"tissue_threshold must be in [0, 1], got {self.tissue_threshold!r}"
            raise ValueError(msg)
        if self.tissue_qc not in ("mask", "pixels"):
            msg = f"tissue_qc must be 'mask' or 'pixels', got {self.tissue_qc!r}"
            raise ValueError(msg)
        if not 0.0 <= self.min_mask_coverage <= 1.0:
            msg = f"min_mask_coverage must be in [0, 1], got {self.min_mask_coverage!r}"
            raise ValueError(msg)
        if not 1 <= self.jpeg_quality <= 100:
            msg = f"jpeg_quality must be in 1..100, got {self.jpeg_quality!r}"
            raise ValueError(msg)
        if int(self.min_genes) != self.min_genes or self.min_genes < 1:
            msg = f"min_genes must be a positive integer, got {self.min_genes!r}"
            raise ValueError(msg)
        self._check_scoring()
        self._check_draws()
        panel = self.gene_panel
        if panel != "all" and not panel.startswith("hvg:") and not Path(panel).is_file():
            msg = (
                f"gene_panel must be 'all', 'hvg:N' or a file with one gene per line; "
                f"got {panel!r} (no such file)"
            )
            raise ValueError(msg)
        if panel.startswith("hvg:"):
            try:
                n = int(panel[4:])
            except ValueError:
                n = 0
            if n < 1:
                msg = f"gene_panel 'hvg:N' needs a positive integer N, got {panel!r}"
                raise ValueError(msg)

    def _check_scoring(self) -> None:
        """Validate ``method`` and ``gene_sets`` before any work (not after extraction)."""
        from ..tl import PATHWAY_METHODS as METHODS
        from ..tl import SSGSEA_TIES

        if self.gene_sets is None:
            return
        if self.method not in METHODS:
            msg = f"method must be one of {list(METHODS)}, got {self.method!r}"
            raise ValueError(msg)
        if self.ties not in SSGSEA_TIES:
            msg = f"ties must be one of {list(SSGSEA_TIES)}, got {self.ties!r}"
            raise ValueError(msg)
        path = self.gene_sets_file()
        if path is not None:
            from ..tl import read_gmt

            read_gmt(path)  # a missing or malformed GMT fails now, naming the file

    def _check_draws(self) -> None:
        """Validate the rarefaction and seed parameters (integers, in range)."""
        checks = {"rarefy_draws": (self.rarefy_draws, 1), "random_state": (self.random_state, 0)}
        if self.rarefy_depth is not None:
            checks["rarefy_depth"] = (self.rarefy_depth, 1)
        for name, (value, low) in checks.items():
            if isinstance(value, bool) or int(value) != value or value < low:
                msg = f"{name} must be an integer >= {low}, got {value!r}"
                raise ValueError(msg)

    def gene_sets_file(self) -> Path | None:
        """Return the GMT file ``gene_sets`` reads (bundled or the user's), or ``None``.

        ``None`` for no scores and for Enrichr libraries (``enrichr:NAME``, fetched by
        gseapy); an unknown name (a typo) is refused here, before any work.
        """
        from ..tl import bundled_gmt_path, gene_set_source

        if self.gene_sets is None:
            return None
        kind, value = gene_set_source(self.gene_sets)
        if kind == "bundled":
            return bundled_gmt_path(value)
        return Path(value) if kind == "file" else None

    def with_overrides(self, **overrides: Any) -> PairsParams:
        """Return a copy with ``overrides`` (field name → value) applied.

        Every field is converted to its type (``mpp=4`` is ``4.0``), as `build_pairs`'
        keywords always were, so equal settings give one fingerprint whichever way
        they are passed.

        Raises
        ------
        TypeError
            An override names no field of ``PairsParams``.
        ValueError
            A value is out of range (the checks of the constructor).
        """
        names = [f.name for f in fields(self)]
        unknown = [k for k in overrides if k not in names]
        if unknown:
            msg = f"unknown pairs parameter {unknown[0]!r}; PairsParams has: {', '.join(names)}"
            raise TypeError(msg)
        values = {name: overrides.get(name, getattr(self, name)) for name in names}
        return PairsParams(**{k: _CONVERTERS.get(k, _same)(v) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters, plus the SHA-256 of every file they name.

        Gene-panel and gene-set files are recorded by name and content digest
        (``gene_panel_sha256``, ``gene_sets_sha256``; bundled collections too), so
        an edited file at the same path changes the fingerprint and moving an
        unchanged one does not.
        With ``tissue_qc="mask"`` the tissue mask's settings
        (`stalign.im._tissue.tissue_mask_settings`) are recorded too.
        """
        d = asdict(self)
        if self.gene_panel not in ("all",) and not self.gene_panel.startswith("hvg:"):
            d["gene_panel_sha256"] = _sha256(Path(self.gene_panel))
            d["gene_panel"] = f"file:{Path(self.gene_panel).name}"
        gmt = self.gene_sets_file()
        if gmt is not None:
            d["gene_sets_sha256"] = _sha256(gmt)
            if self.gene_sets.lower() not in _bundled_names():
                d["gene_sets"] = f"file:{gmt.name}"
        if self.tissue_qc == "mask":  # the mask's own settings are code defaults
            from ..im import tissue_mask_settings

            d["tissue_mask_settings"] = tissue_mask_settings()
        return d

    def fingerprint(self) -> str:
        """Return the short hash of `to_dict` recorded in every shard.

        Parameters added after fingerprint v3 are left out while at their defaults
        (`FINGERPRINT_OPTIONAL`), so a store built before them keeps its fingerprint:
        its shards hold the same scores.
        """
        from ._store import params_fingerprint

        d = self.to_dict()
        for key, default in FINGERPRINT_OPTIONAL.items():
            if d.get(key) == default:
                d.pop(key, None)
        return params_fingerprint(d)


def _same(value: Any) -> Any:
    return value


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


#: how `PairsParams.with_overrides` converts each field (the conversions `build_pairs`'
#: keywords always had); ``gene_sets`` and ``method`` are taken as given
_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "mpp": float,
    "size_px": int,
    "tissue_threshold": float,
    "tissue_qc": str,
    "min_mask_coverage": float,
    "min_genes": int,
    "ties": str,
    "rarefy_depth": _optional_int,
    "rarefy_draws": int,
    "random_state": int,
    "gene_panel": str,
    "use_in_tissue": bool,
    "jpeg": bool,
    "jpeg_quality": int,
    "thumbnail_px": int,
}


#: parameters left out of the fingerprint while at these defaults (added since v3)
FINGERPRINT_OPTIONAL: dict[str, Any] = {"rarefy_depth": None, "rarefy_draws": 1, "random_state": 0}


def _bundled_names() -> set[str]:
    from ..tl import BUNDLED_GENE_SETS

    return set(BUNDLED_GENE_SETS)


def _sha256(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        msg = f"cannot read {path}: {e.strerror or e}"
        raise OSError(e.errno, msg) from e
    return hashlib.sha256(data).hexdigest()
