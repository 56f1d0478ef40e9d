"""Tables, figures and the markdown report of `stalign.bench.evaluate`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._utils import atomic_write_text

__all__ = ["MapSection", "summary_table", "write_figures", "write_report"]

_TASK_TEXT = {
    "genes": "Gene expression (HEST ridge probe, Pearson per gene averaged over the panel)",
    "pathways": "Pathway scores (HEST ridge probe, Pearson per pathway averaged)",
    "retrieval": "Retrieval: predicted profile → measured profile among the spots of its section",
}


_PROTOCOL_TEXT = {
    "hest": "Probe protocol `hest`: HEST-Benchmark's ridge probe exactly (StandardScaler → "
    "PCA 256 → ridge, alpha = 100 / (components · targets), no intercept), comparable "
    "with published HEST numbers.",
    "hest_robust": "Probe protocol `hest_robust`: HEST-Benchmark's ridge probe (StandardScaler "
    "→ PCA 256 → ridge, alpha = 100 / (components · targets), no intercept) except that "
    "feature columns constant on the training spots are dropped and test features are "
    "clipped to their training range; close to, but not the same numbers as, published HEST "
    "results (`--protocol hest` for those).",
}


def _fmt(mean: float, std: float, n: int) -> str:
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _task_table(table: pd.DataFrame, task: str) -> str:
    t = table[table["task"] == task].copy()
    t["value"] = [_fmt(m, s, n) for m, s, n in zip(t["mean"], t["std"], t["n"], strict=True)]
    wide = t.pivot_table(
        index="features", columns="metric", values="value", aggfunc="first", sort=False
    )
    order = list(dict.fromkeys(t["features"]))
    wide = wide.reindex(order).reset_index()
    wide.columns.name = None
    return _md(wide)


def _verdict(table: pd.DataFrame, task: str, base: str, aligned: str, metric: str) -> str:
    t = table[(table["task"] == task) & (table["metric"] == metric)].set_index("features")
    if base not in t.index or aligned not in t.index:
        return ""
    a, b = t.loc[base], t.loc[aligned]
    d = b["mean"] - a["mean"]
    noise = float(np.nanmax([a["std"], b["std"], 0.0]))
    if np.isnan(d):
        return f"- {task}: undefined."
    if a["n"] <= 1 and b["n"] <= 1:
        word = "single value each (no folds/seeds spread to judge the difference by)"
    elif abs(d) <= noise:
        word = "no clear difference (the change is within the spread over folds/seeds)"
    elif d > 0:
        word = "aligned is better"
    else:
        word = "aligned is WORSE"
    return (
        f"- **{task}** ({metric}): {base} {a['mean']:.3f} → {aligned} {b['mean']:.3f} "
        f"(Δ = {d:+.3f}; largest sd {noise:.3f}): {word}."
    )


def _verdicts(table: pd.DataFrame, base: str, aligned: str) -> list[str]:
    """One verdict line per task: spot-level probes, retrieval, then marker tasks."""
    pairs = [("genes", "pearson"), ("pathways", "pearson")]
    pairs += [("retrieval", "recall@5"), ("retrieval", "profile_corr")]
    pairs += [(t, "roc_auc") for t in dict.fromkeys(table["task"]) if t.startswith("marker ")]
    lines = [_verdict(table, task, base, aligned, metric) for task, metric in pairs]
    return [v for v in lines if v]


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd (``ddof=0``, NaN-skipping) and count per (task, metric, features)."""
    return (
        runs.groupby(["task", "metric", "features"], sort=False)["value"]
        .agg(mean="mean", std=lambda v: float(np.nanstd(v)), n="count")
        .reset_index()
    )


@dataclass(frozen=True)
class MapSection:
    """What a measured-vs-predicted map needs of a probe: its largest tested section.

    Kept instead of the whole [`ProbeResult`][stalign.bench.ProbeResult] (``n × targets``
    predictions and targets), so the figures do not hold two matrices per compared
    feature set for the whole run.

    Attributes
    ----------
    sample
        The section (``sample_id``) with the most tested spots.
    rows
        Positions of its tested spots in the spot table.
    targets, predictions
        ``(len(rows), n_targets)`` measured and out-of-fold predicted values there.
    target_names
        Names of the target columns.
    """

    sample: str
    rows: np.ndarray
    targets: np.ndarray
    predictions: np.ndarray
    target_names: list[str]

    @classmethod
    def of(cls, res: Any, samples: np.ndarray) -> MapSection:
        """Cut the largest tested section out of a probe result ``res``."""
        tested = ~np.isnan(res.predictions).any(axis=1)
        smp = pd.Series(samples[tested]).value_counts().index[0]
        rows = np.flatnonzero(tested & (samples == smp))
        return cls(
            sample=str(smp),
            rows=rows,
            targets=res.targets[rows],
            predictions=res.predictions[rows],
            target_names=list(res.target_names),
        )


def _maps(
    out: Path,
    key: str,
    unit: str,
    sec_a: MapSection,
    sec_b: MapSection,
    best_of_b: pd.Series,
    coords: np.ndarray,
    base: str,
    aligned: str,
    n_maps: int,
) -> str:
    """Measured vs predicted maps of the largest tested section; return the figure path."""
    from .. import pl

    if sec_a.sample != sec_b.sample or not np.array_equal(sec_a.rows, sec_b.rows):
        msg = (
            f"maps: {base} and {aligned} were tested on different spots of "
            f"{sec_b.sample!r}; their probes must share the split"
        )
        raise RuntimeError(msg)
    best = best_of_b.sort_values(ascending=False).index[:n_maps]
    cols = [sec_b.target_names.index(t) for t in best]
    sc = {
        lab: [float(np.corrcoef(sec.targets[:, c], sec.predictions[:, c])[0, 1]) for c in cols]
        for lab, sec in ((base, sec_a), (aligned, sec_b))
    }
    f = f"figures/maps_{key}.png"
    pl.bench_maps(
        coords[sec_b.rows],
        sec_b.targets[:, cols],
        {base: sec_a.predictions[:, cols], aligned: sec_b.predictions[:, cols]},
        [str(t) for t in best],
        scores=sc,
        title=f"{sec_b.sample}: measured vs predicted (best {unit}s of {aligned})",
        save=out / f,
    )
    return f


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
) -> dict[str, str]:
    """Draw the baseline-vs-aligned figures into ``out/figures``; return name → path.

    Parameters
    ----------
    out
        Output directory.
    per_target
        ``genes`` / ``pathways`` → feature label → Pearson per target.
    sections
        Feature label → ``genes`` / ``pathways`` → `MapSection` of its ridge
        probe (first seed), for the two compared labels.
    curves, chance_curve
        recall@k curves per feature label, and of a random ranking.
    coords
        Spot centres (level-0 px) of every spot.
    base, aligned
        The two feature labels compared.
    n_maps
        Targets drawn in the maps.
    """
    from .. import pl

    figs: dict[str, str] = {}
    for key, unit in (("genes", "gene"), ("pathways", "pathway")):
        f = f"figures/scatter_{key}.png"
        pl.bench_scatter(
            per_target[key][base],
            per_target[key][aligned],
            xlabel=base,
            ylabel=aligned,
            title=f"Pearson per {unit} (held-out spots)",
            save=out / f,
        )
        figs[f"scatter_{key}"] = f
        figs[f"maps_{key}"] = _maps(
            out,
            key,
            unit,
            sections[base][key],
            sections[aligned][key],
            per_target[key][aligned],
            coords,
            base,
            aligned,
            n_maps,
        )
    f = "figures/retrieval_curves.png"
    pl.bench_retrieval_curves(
        dict(curves),
        chance=chance_curve,
        title="predicted → measured pathway profile, within section",
        save=out / f,
    )
    figs["retrieval"] = f
    return figs


def write_report(out: Path, table: pd.DataFrame, params: dict, figs: dict[str, str]) -> Path:
    """Write ``out/report.md`` from the summary table and the figure paths; return it."""
    base, aligned = params["baseline"], params["aligned"]
    lines = [
        "# stalign evaluation report",
        "",
        f"Pairs store: `{params['pairs_dir']}` — {params['n_spots']} spots, samples "
        f"{', '.join(params['samples'])}, patients {', '.join(params['patients'])}.",
        f"Split: {params['split']}. Seeds: {params['seeds']}. Probes: {params['probes']}.",
        _PROTOCOL_TEXT[params.get("protocol", "hest_robust")],
        "",
        "Encoders: " + ", ".join(f"**{k}** (`{v}`)" for k, v in params["encoders"].items()),
        "Reference features in the same run: "
        + ", ".join(params["references"])
        + f" (random encoder: `{params['random_encoder']}`, a new init per seed).",
        "",
        "Values are mean ± sd over folds × seeds (a deterministic feature set runs once "
        "per fold). Measured numbers, not selected: whatever they are.",
        "",
        "## Verdict (baseline vs aligned)",
        "",
    ]
    markers = [t for t in dict.fromkeys(table["task"]) if t.startswith("marker ")]
    lines += _verdicts(table, base, aligned)
    controls = [k for k in params["encoders"] if "shuffled" in k.lower() and k != aligned]
    for control in controls:
        lines += [
            "",
            f"## Verdict ({control} vs aligned)",
            "",
            "The same training with image/profile pairs shuffled: what training and "
            "augmentation alone do. Alignment earns credit only where it beats this too.",
            "",
        ]
        lines += _verdicts(table, control, aligned)
    lines += [""]
    for task in dict.fromkeys(table["task"]):
        if task.startswith("marker "):
            continue
        head = _TASK_TEXT.get(task.split(" ")[0], task)
        lines += [f"## {task}", "", head + ".", "", _task_table(table, task), ""]
        if task == "genes":
            lines += [
                f"![per-gene Pearson]({figs['scatter_genes']})",
                "",
                f"![maps]({figs['maps_genes']})",
                "",
            ]
        if task == "pathways":
            lines += [
                f"![per-pathway Pearson]({figs['scatter_pathways']})",
                "",
                f"![maps]({figs['maps_pathways']})",
                "",
            ]
        if task == "retrieval":
            lines += [
                "Exact-match retrieval is harsh where neighbouring spots share near-identical "
                "profiles; `profile_corr` gives graded credit (Pearson between the retrieved "
                "and the true profile; the `chance` row is a random pick).",
                "",
                f"![retrieval]({figs['retrieval']})",
                "",
            ]
    if markers:
        lines += [
            "## Marker prediction (attention-MIL)",
            "",
            f"Task: {params['marker_task']}. {params['n_bags']} regions. "
            "Gated ABMIL, ROC-AUC on held-out patients.",
            "",
        ]
        sub = table[table["task"].isin(markers)].copy()
        sub["value"] = [
            _fmt(m, s, n) for m, s, n in zip(sub["mean"], sub["std"], sub["n"], strict=True)
        ]
        wide = sub.pivot_table(
            index="features", columns="task", values="value", aggfunc="first", sort=False
        )
        wide = wide.reindex(list(dict.fromkeys(sub["features"]))).reset_index()
        wide.columns.name = None
        lines += [_md(wide), ""]
    lines += [
        "## Gene panel",
        "",
        ", ".join(params["gene_panel"]),
        "",
        "Files: `summary.csv` (this table), `runs.csv` (every fold and seed), "
        "`per_target_genes.csv`, `per_target_pathways.csv`, `results.json`.",
        "",
    ]
    if not any("shuffled" in label.lower() for label in params["encoders"]):
        lines += [
            "No shuffled-pair control in this run. It belongs in the same run (the same "
            "training with image/profile pairs shuffled): pass it as another encoder "
            "(`shuffled=EXPORT_DIR`).",
            "",
        ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
