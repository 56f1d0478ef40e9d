"""Figures of the evaluation report: per-target scatters, maps over the H&E, retrieval."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["MapSection", "SectionImage", "section_image", "write_figures"]

#: Colour-bar label of the maps per readout (the unit of the mapped values).
_MAP_VALUES = {"genes": "log1p counts", "pathways": "pathway score"}


@dataclass(frozen=True)
class MapSection:
    """What the measured-vs-predicted maps need of a probe: its tested spots.

    Kept instead of the whole [`ProbeResult`][stalign.bench.ProbeResult] (every
    spot's predictions and targets in float64), so the figures do not hold two
    matrices of the whole store per compared feature set for the whole run.

    Attributes
    ----------
    samples
        Section (``sample_id``) of each tested spot.
    rows
        Positions of the tested spots in the spot table.
    targets, predictions
        ``(len(rows), n_targets)`` measured and out-of-fold predicted values (float32).
    target_names
        Names of the target columns.
    """

    samples: np.ndarray
    rows: np.ndarray
    targets: np.ndarray
    predictions: np.ndarray
    target_names: list[str]

    @classmethod
    def of(cls, res: Any, samples: np.ndarray) -> MapSection:
        """Cut the tested spots (every tested section) out of a probe result ``res``."""
        rows = np.flatnonzero(~np.isnan(res.predictions).any(axis=1))
        return cls(
            samples=np.asarray(samples)[rows].astype(str),
            rows=rows,
            targets=np.asarray(res.targets[rows], np.float32),
            predictions=np.asarray(res.predictions[rows], np.float32),
            target_names=list(res.target_names),
        )

    @property
    def sections(self) -> list[str]:
        """The tested sections, in spot-table order."""
        return list(dict.fromkeys(self.samples))


@dataclass(frozen=True)
class SectionImage:
    """A section's H&E thumbnail from a pairs store, with its scale.

    Attributes
    ----------
    image
        ``(h, w, 3)`` uint8; its pixel ``(0, 0)`` is level-0 pixel ``(0, 0)``.
    scale
        Level-0 px per thumbnail px (the shard record's ``thumbnail.scale``).
    mpp
        µm per level-0 px (the record's ``mpp_level0``); ``None`` when unrecorded.
    spot_diameter
        Spot diameter in level-0 px (``spot_diameter_um / mpp_level0``), or ``None``.
    """

    image: np.ndarray
    scale: float
    mpp: float | None
    spot_diameter: float | None

    @property
    def um_per_px(self) -> float | None:
        """µm per thumbnail px (``scale × mpp``)."""
        return None if self.mpp is None else self.scale * self.mpp


def section_image(store: str | os.PathLike, sample: str) -> SectionImage | None:
    """Read ``<store>/samples/<sample>/thumbnail.png`` and its scale from the shard record.

    Returns ``None`` (with a warning) when the shard has no thumbnail or its record
    does not state the thumbnail's scale: the maps are then drawn without the H&E.
    """
    from PIL import Image

    from ..pairs import THUMBNAIL_PNG, read_success, sample_dir

    path = sample_dir(store, sample) / THUMBNAIL_PNG
    rec = read_success(store, sample) or {}
    scale = (rec.get("thumbnail") or {}).get("scale")
    if not path.is_file() or not scale:
        logger.warning("maps of %s: no thumbnail with a recorded scale in %s", sample, store)
        return None
    mpp = rec.get("mpp_level0")
    mpp = float(mpp) if mpp else None
    spot_um = rec.get("spot_diameter_um")
    with Image.open(path) as im:
        image = np.asarray(im.convert("RGB"))
    return SectionImage(
        image=image,
        scale=float(scale),
        mpp=mpp,
        spot_diameter=float(spot_um) / mpp if spot_um and mpp else None,
    )


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two vectors (NaN when either is constant)."""
    a = np.asarray(a, float) - np.mean(a)
    b = np.asarray(b, float) - np.mean(b)
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _file_names(sections: Sequence[str]) -> dict[str, str]:
    """Section → a file-name-safe, unique stem."""
    names: dict[str, str] = {}
    for s in sections:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("._") or "section"
        while stem in names.values():
            stem += "_"
        names[s] = stem
    return names


@dataclass(frozen=True)
class _MapJob:
    """The readout and feature sets one set of maps compares."""

    key: str  # readout: genes / pathways
    unit: str  # gene / pathway
    base: str
    aligned: str
    best: list[str]  # the targets drawn
    store: Path | None


def _section_map(
    out: Path, job: _MapJob, sec_a: MapSection, sec_b: MapSection, coords, sample, stem
) -> str:
    """Draw the maps of one tested section; return the figure path (relative to ``out``)."""
    from .. import pl

    cols = [sec_b.target_names.index(t) for t in job.best]
    here = sec_b.samples == sample
    scores = {
        lab: [_pearson(sec.targets[here, c], sec.predictions[here, c]) for c in cols]
        for lab, sec in ((job.base, sec_a), (job.aligned, sec_b))
    }
    img = section_image(job.store, sample) if job.store is not None else None
    under = "" if img is None else " over the H&E"
    f = f"figures/maps_{job.key}_{stem}.png"
    pl.bench_maps(
        coords[sec_b.rows[here]],
        sec_b.targets[here][:, cols],
        {job.base: sec_a.predictions[here][:, cols], job.aligned: sec_b.predictions[here][:, cols]},
        job.best,
        scores=scores,
        image=None if img is None else img.image,
        image_scale=1.0 if img is None else img.scale,
        mpp=None if img is None else img.mpp,
        spot_diameter=None if img is None else img.spot_diameter,
        value_label=_MAP_VALUES.get(job.key, "value"),
        predicted_label=f"predicted {_MAP_VALUES.get(job.key, 'value')}, up to an offset",
        title=f"Section {sample}: measured vs predicted{under} "
        f"({len(job.best)} best {job.unit}s of {job.aligned})",
        save=out / f,
    )
    return f


def _maps(
    out: Path,
    job: _MapJob,
    sec_a: MapSection,
    sec_b: MapSection,
    coords: np.ndarray,
) -> dict[str, str]:
    """Measured vs predicted maps of every tested section; return ``maps_<key>:<sample>`` → path."""
    if not np.array_equal(sec_a.rows, sec_b.rows):
        msg = (
            f"maps: {job.base} and {job.aligned} were tested on different spots; "
            "their probes must share the split"
        )
        raise RuntimeError(msg)
    figs = {}
    for sample, stem in _file_names(sec_b.sections).items():
        figs[f"maps_{job.key}:{sample}"] = _section_map(
            out, job, sec_a, sec_b, coords, sample, stem
        )
    return figs


def _scatters(
    out: Path, per_target: Mapping[str, Mapping[str, pd.Series]], base: str, aligned: str
) -> dict[str, str]:
    """Per-target Pearson, baseline vs aligned, of each probe readout."""
    from .. import pl

    titles = {
        "genes": "Pearson per gene (held-out spots)",
        "pathways": "Pearson per pathway (held-out spots)",
        "genes_depth_adjusted": "depth-adjusted Pearson per gene (held-out spots)",
    }
    figs = {}
    for key, title in titles.items():
        if key not in per_target:
            continue
        f = f"figures/scatter_{key}.png"
        pl.bench_scatter(
            per_target[key][base],
            per_target[key][aligned],
            xlabel=base,
            ylabel=aligned,
            title=title,
            save=out / f,
        )
        figs[f"scatter_{key}"] = f
    return figs


def write_figures(
    out: Path,
    *,
    per_target: Mapping[str, Mapping[str, pd.Series]],
    sections: Mapping[str, Mapping[str, MapSection]],
    curves: Mapping[str, np.ndarray],
    chance_curve: np.ndarray | None,
    coords: np.ndarray,
    base: str,
    aligned: str,
    n_maps: int,
    store: str | os.PathLike | None = None,
) -> dict[str, str]:
    """Draw the baseline-vs-aligned figures into ``out/figures``; return name → path.

    Parameters
    ----------
    out
        Output directory.
    per_target
        Readout (``genes``, ``pathways``, ``genes_depth_adjusted``, ...) → feature label
        → Pearson per target.
    sections
        Feature label → ``genes`` / ``pathways`` → `MapSection` of its ridge
        probe (first seed), for the two compared labels.
    curves, chance_curve
        recall@k (fraction) per feature label — ``(K,)``, or ``(seeds, K)`` for the
        spread over seeds — and of a random ranking.
    coords
        Spot centres (level-0 px) of every spot.
    base, aligned
        The two feature labels compared.
    n_maps
        Targets drawn in the maps (the best of ``aligned``).
    store
        The pairs store: its section thumbnails are drawn under the maps
        (``None``: spots on white).

    Returns
    -------
    dict
        ``scatter_<readout>``, ``maps_<genes|pathways>:<section>`` (one per tested
        section) and ``retrieval`` → path relative to ``out``.
    """
    from .. import pl

    (out / "figures").mkdir(parents=True, exist_ok=True)
    figs = _scatters(out, per_target, base, aligned)
    for key, unit in (("genes", "gene"), ("pathways", "pathway")):
        best = per_target[key][aligned].sort_values(ascending=False).index[:n_maps]
        job = _MapJob(key, unit, base, aligned, [str(t) for t in best], _path(store))
        figs |= _maps(out, job, sections[base][key], sections[aligned][key], coords)
    f = "figures/retrieval_curves.png"
    pl.bench_retrieval_curves(
        dict(curves),
        chance=chance_curve,
        highlight=(base, aligned),
        title="Retrieval: predicted → measured pathway profile among the spots of its section",
        save=out / f,
    )
    figs["retrieval"] = f
    return figs


def _path(store: str | os.PathLike | None) -> Path | None:
    return None if store is None else Path(store)
