"""Tables, figures and the markdown report of `stalign.bench.evaluate`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._utils import atomic_write_text

__all__ = [
    "DEPTH_METRIC",
    "READOUT_TEXT",
    "MapSection",
    "overall_verdict",
    "summary_table",
    "write_figures",
    "write_report",
]

#: Metric name of the depth-adjusted readout in ``runs.csv`` / ``summary.csv``.
DEPTH_METRIC = "pearson_depth_adjusted"

#: One sentence per readout: what it measures.
READOUT_TEXT = {
    DEPTH_METRIC: "Depth-adjusted (`pearson_depth_adjusted`): Pearson between measured and "
    "predicted values after a cubic in log library size is regressed out of both over the "
    "test spots — what the image predicts beyond sequencing depth (library size alone "
    "scores 0).",
    "pearson": "HEST readout (`pearson`): Pearson between measured and predicted log1p raw "
    "counts (genes) or stored pathway scores, as HEST-Benchmark — it rewards predicting "
    "sequencing depth as much as biology (compare the library-size row).",
    "cp10k": "Genes (log CP10k): the same gene panel as log1p of counts per 10,000 per spot, "
    "which removes library size as a scale factor but not its non-linear traces.",
}

#: The rule of the overall verdict, stated in the report.
VERDICT_RULE = (
    "**helped** only if, on the depth-adjusted gene readout (ridge probe), the aligned "
    "encoder's mean exceeds both the baseline's and the shuffled-pair control's by more "
    "than twice the larger of the two standard deviations (over folds × seeds); "
    "**not shown to help** if it falls short of that against either (it may still be "
    "ahead, by less than the margin); **inconclusive** when "
    "the run has no shuffled-pair control or no spread to judge by (one value per row)."
)

_TASK_TEXT = {
    "genes": "Gene expression: ridge probe on log1p raw counts of the HEST panel, Pearson "
    "per gene averaged over the panel",
    "genes (log CP10k)": "Gene expression: the same panel as log1p of counts per 10,000",
    "pathways": "Pathway scores: ridge probe, Pearson per pathway averaged",
    "retrieval": "Retrieval: predicted profile → measured profile among the spots of its section",
}

_SECTION_SPLIT_NOTE = (
    "Split by section: sections of one tumour (or tissue block) are near-replicates "
    "(adjacent tissue, one patient, often one run), so this measures generalisation to a "
    "new section, not to a new patient — weaker evidence than a split by patient."
)


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


def _wide(rows: pd.DataFrame, across: str, columns: list[str] | None = None) -> str:
    """Markdown table of ``mean ± sd``: feature sets down, the ``across`` column across."""
    t = rows.copy()
    t["value"] = [_fmt(m, s, n) for m, s, n in zip(t["mean"], t["std"], t["n"], strict=True)]
    wide = t.pivot_table(
        index="features", columns=across, values="value", aggfunc="first", sort=False
    )
    wide = wide.reindex(index=list(dict.fromkeys(t["features"])))
    if columns is not None:
        wide = wide[columns]
    wide = wide.reset_index()
    wide.columns.name = None
    return _md(wide)


def _task_table(table: pd.DataFrame, task: str) -> str:
    return _wide(table[table["task"] == task], "metric")


def _compare(table: pd.DataFrame, task: str, metric: str, base: str, aligned: str):
    """Return ``(base row, aligned row)`` of one task and metric (``None``: one is missing)."""
    t = table[(table["task"] == task) & (table["metric"] == metric)].set_index("features")
    if base not in t.index or aligned not in t.index:
        return None
    return t.loc[base], t.loc[aligned]


def _verdict(table: pd.DataFrame, task: str, base: str, aligned: str, metric: str) -> str:
    rows = _compare(table, task, metric, base, aligned)
    if rows is None:
        return ""
    a, b = rows
    d = b["mean"] - a["mean"]
    noise = float(np.nanmax([a["std"], b["std"], 0.0]))
    if np.isnan(d):
        return f"- {task} ({metric}): undefined."
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


def _verdicts(table: pd.DataFrame, base: str, aligned: str, *, depth: bool) -> list[str]:
    """One verdict line per task: the depth-adjusted readouts, or the plain ones."""
    probes = [t for t in dict.fromkeys(table["task"]) if t.startswith(("genes", "pathways"))]
    if depth:
        pairs = [(t, DEPTH_METRIC) for t in probes]
    else:
        pairs = [(t, "pearson") for t in probes]
        pairs += [("retrieval", "recall@5"), ("retrieval", "profile_corr")]
        pairs += [(t, "roc_auc") for t in dict.fromkeys(table["task"]) if t.startswith("marker ")]
    lines = [_verdict(table, task, base, aligned, metric) for task, metric in pairs]
    return [v for v in lines if v]


def _shuffled_controls(params: Mapping[str, Any]) -> list[str]:
    """Return the encoder rows named as shuffled-pair controls (not the aligned row)."""
    return [k for k in params["encoders"] if "shuffled" in k.lower() and k != params["aligned"]]


def overall_verdict(table: pd.DataFrame, params: Mapping[str, Any]) -> dict[str, str]:
    """Answer "did alignment help?" in one word, by the rule ``VERDICT_RULE``.

    Parameters
    ----------
    table
        The summary table (``summary_table`` of ``runs.csv``).
    params
        The run description (``baseline``, ``aligned``, ``encoders``).

    Returns
    -------
    dict
        ``verdict`` (``"helped"``, ``"not shown to help"`` or ``"inconclusive"``), ``reason``
        (the numbers behind it) and ``rule``.
    """
    aligned = params["aligned"]
    shuffled = _shuffled_controls(params)
    controls = [c for c in dict.fromkeys([params["baseline"], *shuffled]) if c != aligned]
    parts, failed, unjudged = [], [], []
    for control in controls:
        rows = _compare(table, "genes", DEPTH_METRIC, control, aligned)
        if rows is None:
            unjudged.append(control)
            continue
        c, a = rows
        d = a["mean"] - c["mean"]
        margin = 2 * float(np.nanmax([a["std"], c["std"], 0.0]))
        parts.append(f"{aligned} − {control} = {d:+.3f} (2 × larger sd = {margin:.3f})")
        if (a["n"] <= 1 and c["n"] <= 1) or np.isnan(d):
            unjudged.append(control)
        elif not d > margin:
            failed.append(control)
    if failed:
        word = "not shown to help"
    elif unjudged or not shuffled:
        word = "inconclusive"
    else:
        word = "helped"
    why = "; ".join(parts) if parts else "the depth-adjusted gene readout is missing"
    if not shuffled:
        why += "; no shuffled-pair control in this run"
    if unjudged:
        why += f"; no spread to judge by against {', '.join(unjudged)}"
    return {"verdict": word, "reason": why, "rule": VERDICT_RULE}


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
        Readout (``genes``, ``pathways``, ``genes_depth_adjusted``, ...) → feature label
        → Pearson per target.
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
    if "genes_depth_adjusted" in per_target:
        f = "figures/scatter_genes_depth_adjusted.png"
        pl.bench_scatter(
            per_target["genes_depth_adjusted"][base],
            per_target["genes_depth_adjusted"][aligned],
            xlabel=base,
            ylabel=aligned,
            title="depth-adjusted Pearson per gene (held-out spots)",
            save=out / f,
        )
        figs["scatter_genes_depth_adjusted"] = f
    f = "figures/retrieval_curves.png"
    pl.bench_retrieval_curves(
        dict(curves),
        chance=chance_curve,
        title="predicted → measured pathway profile, within section",
        save=out / f,
    )
    figs["retrieval"] = f
    return figs


def _by_task(table: pd.DataFrame, tasks: list[str], metric: str) -> str:
    """Markdown table: one row per feature set, one column per task, of one metric."""
    sub = table[table["task"].isin(tasks) & (table["metric"] == metric)]
    return _wide(sub, "task", columns=[t for t in tasks if t in set(sub["task"])])


def _verdict_words(word: str) -> str:
    return word if word == "inconclusive" else f"alignment {word}"


def _lead_lines(params: Mapping[str, Any], verdict: Mapping[str, str]) -> list[str]:
    """Overall verdict, its rule, and one sentence per readout."""
    return [
        "# stalign evaluation report",
        "",
        f"**Overall verdict: {_verdict_words(verdict['verdict'])}** ({params['aligned']} vs "
        f"{params['baseline']} and the shuffled-pair control, depth-adjusted gene readout): "
        f"{verdict['reason']}.",
        "",
        f"Rule: {verdict['rule']}",
        "",
        "Readouts:",
        "",
        *(f"- {text}" for text in READOUT_TEXT.values()),
        "",
    ]


def _run_lines(params: Mapping[str, Any]) -> list[str]:
    """Store, split, protocol, feature sets."""
    lines = [
        f"Pairs store: `{params['pairs_dir']}` — {params['n_spots']} spots, samples "
        f"{', '.join(params['samples'])}, patients {', '.join(params['patients'])}.",
        f"Split: {params['split']}. Seeds: {params['seeds']}. Probes: {params['probes']}.",
    ]
    if params.get("split_by") == "sample":
        shared = params.get("patients_on_both_sides") or []
        lines.append(
            _SECTION_SPLIT_NOTE
            + (f" Patients with sections on both sides: {', '.join(shared)}." if shared else "")
        )
    return [
        *lines,
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
    ]


def _verdict_sections(table: pd.DataFrame, params: Mapping[str, Any]) -> list[str]:
    """Verdicts on the depth-adjusted readout first, then on the HEST readout."""
    base, aligned = params["baseline"], params["aligned"]
    lines: list[str] = []
    for depth, title in ((True, "depth-adjusted readout"), (False, "HEST readout")):
        lines += [f"## Verdicts on the {title}", ""]
        verdicts = _verdicts(table, base, aligned, depth=depth)
        lines += [f"Baseline ({base}) vs aligned:", "", *verdicts]
        for control in _shuffled_controls(params):
            lines += [
                "",
                f"{control} vs aligned (the same training with image/profile pairs shuffled: "
                "what training and augmentation alone do; alignment earns credit only where "
                "it beats this too):",
                "",
                *_verdicts(table, control, aligned, depth=depth),
            ]
        lines += [""]
    return lines


def _task_text(task: str) -> str:
    key = max((k for k in _TASK_TEXT if task.startswith(k)), key=len, default=None)
    return task if key is None else _TASK_TEXT[key]


def _task_sections(table: pd.DataFrame, figs: Mapping[str, str]) -> list[str]:
    """Depth-adjusted summary table, then one section per spot task with its figures."""
    tasks = list(dict.fromkeys(table["task"]))
    probes = [t for t in tasks if t.startswith(("genes", "pathways"))]
    lines = [
        "## Depth-adjusted readout (all spot tasks)",
        "",
        _by_task(table, probes, DEPTH_METRIC),
        "",
    ]
    if "scatter_genes_depth_adjusted" in figs:
        lines += [f"![per-gene depth-adjusted Pearson]({figs['scatter_genes_depth_adjusted']})", ""]
    figures = {
        "genes": [("per-gene Pearson", "scatter_genes"), ("maps", "maps_genes")],
        "pathways": [("per-pathway Pearson", "scatter_pathways"), ("maps", "maps_pathways")],
        "retrieval": [("retrieval", "retrieval")],
    }
    for task in tasks:
        if task.startswith("marker "):
            continue
        lines += [f"## {task}", "", _task_text(task) + ".", "", _task_table(table, task), ""]
        if task == "retrieval":
            lines += [
                "Exact-match retrieval is harsh where neighbouring spots share near-identical "
                "profiles; `profile_corr` gives graded credit (Pearson between the retrieved "
                "and the true profile; the `chance` row is a random pick).",
                "",
            ]
        for alt, key in figures.get(task, []):
            if key in figs:
                lines += [f"![{alt}]({figs[key]})", ""]
    return lines


def _marker_lines(table: pd.DataFrame, params: Mapping[str, Any]) -> list[str]:
    markers = [t for t in dict.fromkeys(table["task"]) if t.startswith("marker ")]
    if not markers:
        return []
    unit = "sections" if params.get("split_by") == "sample" else "patients"
    return [
        "## Marker prediction (attention-MIL)",
        "",
        f"Task: {params['marker_task']}. {params['n_bags']} regions. "
        f"Gated ABMIL, ROC-AUC on held-out {unit}.",
        "",
        _by_task(table, markers, "roc_auc"),
        "",
    ]


def write_report(
    out: Path,
    table: pd.DataFrame,
    params: dict,
    figs: dict[str, str],
    *,
    verdict: Mapping[str, str] | None = None,
) -> Path:
    """Write ``out/report.md`` from the summary table and the figure paths; return it.

    The report opens with the overall verdict (``verdict``, default ``overall_verdict``
    of ``table``) and its rule,
    then what each readout measures, the verdicts on the depth-adjusted readout, then
    on the HEST readout, and the tables.
    """
    verdict = overall_verdict(table, params) if verdict is None else verdict
    lines = [
        *_lead_lines(params, verdict),
        *_run_lines(params),
        *_verdict_sections(table, params),
        *_task_sections(table, figs),
        *_marker_lines(table, params),
        "## Gene panel",
        "",
        ", ".join(params["gene_panel"]),
        "",
        "Files: `summary.csv` (these tables), `runs.csv` (every fold and seed), "
        "`per_target_<readout>.csv` (Pearson per gene / pathway, mean over seeds), "
        "`results.json` (parameters, overall verdict, summary).",
        "",
    ]
    if not _shuffled_controls(params):
        lines += [
            "No shuffled-pair control in this run. It belongs in the same run (the same "
            "training with image/profile pairs shuffled): pass it as another encoder "
            "(`shuffled=EXPORT_DIR`).",
            "",
        ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
