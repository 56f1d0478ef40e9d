"""Tables, verdicts and the markdown report of `stalign.bench.evaluate`.

Its figures are drawn by ``_figures``, its HTML twin by ``_report_html``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._utils import atomic_write_text
from ._figures import MapSection, write_figures  # where evaluate imports them from
from ._report_html import write_report_html

__all__ = [
    "DEPTH_METRIC",
    "MARGIN_SDS",
    "READOUT_TEXT",
    "MapSection",
    "overall_verdict",
    "summary_table",
    "write_figures",
    "write_report",
    "write_report_html",
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

#: A difference counts only beyond this many times the larger sd of the two rows: the
#: margin of the overall verdict and of every per-metric verdict line.
MARGIN_SDS = 2

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


def _judge(ref: pd.Series, new: pd.Series) -> tuple[float, float, str]:
    """Compare two summary rows by the report's one rule (``VERDICT_RULE``).

    Returns
    -------
    tuple
        ``(Δ = new − ref, margin = MARGIN_SDS × the larger sd, outcome)``; outcome is
        ``"better"`` (Δ > margin), ``"worse"`` (Δ < −margin), ``"within"`` (|Δ| ≤
        margin) or ``"unjudged"`` (one value per row, or Δ undefined).
    """
    d = float(new["mean"] - ref["mean"])
    margin = MARGIN_SDS * float(np.nanmax([ref["std"], new["std"], 0.0]))
    if np.isnan(d) or (ref["n"] <= 1 and new["n"] <= 1):
        return d, margin, "unjudged"
    if d > margin:
        return d, margin, "better"
    return d, margin, "worse" if d < -margin else "within"


_OUTCOME_TEXT = {
    "better": "aligned is better",
    "worse": "aligned is WORSE",
    "within": "within the margin (no difference shown)",
    "unjudged": "single value each (no spread over folds/seeds to judge the difference by)",
}


def _verdict(table: pd.DataFrame, task: str, base: str, aligned: str, metric: str) -> str:
    """One verdict line: ``base`` vs ``aligned`` on one task and metric, by ``_judge``."""
    rows = _compare(table, task, metric, base, aligned)
    if rows is None:
        return ""
    a, b = rows
    d, margin, outcome = _judge(a, b)
    if np.isnan(d):
        return f"- {task} ({metric}): undefined."
    return (
        f"- **{task}** ({metric}): {base} {a['mean']:.3f} → {aligned} {b['mean']:.3f} "
        f"(Δ = {d:+.3f}; margin {MARGIN_SDS} × larger sd = {margin:.3f}): "
        f"{_OUTCOME_TEXT[outcome]}."
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
        d, margin, outcome = _judge(*rows)
        parts.append(f"{aligned} − {control} = {d:+.3f} ({MARGIN_SDS} × larger sd = {margin:.3f})")
        if outcome == "unjudged":
            unjudged.append(control)
        elif outcome != "better":
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
        lines += [f"## Verdicts on the {title}", "", _MARGIN_NOTE, ""]
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


_MARGIN_NOTE = (
    f"Each line applies the overall verdict's margin: a difference counts only beyond "
    f"{MARGIN_SDS} × the larger sd of the two rows (over folds × seeds)."
)


def _maps_note(params: Mapping[str, Any]) -> str:
    """Return the sentence on what the maps show (once per task that has them)."""
    return (
        f"Maps: every test section, measured beside the predictions of {params['baseline']} "
        f"and {params['aligned']} (first seed) for the targets {params['aligned']} predicts "
        "best over all test spots; r is Pearson on that section's spots. Underneath: the "
        "pairs store's H&E thumbnail of the section, spots drawn to scale, scale bar in µm. "
        "Each panel has its own colour range (2nd–98th percentile) and colour bar: Pearson "
        "ignores offset and scale, the probe fits no intercept (predictions carry an "
        "arbitrary offset) and its predictions span a narrower range than the measured "
        "values."
    )


def _task_text(task: str) -> str:
    key = max((k for k in _TASK_TEXT if task.startswith(k)), key=len, default=None)
    return task if key is None else _TASK_TEXT[key]


def _task_sections(
    table: pd.DataFrame, figs: Mapping[str, str], params: Mapping[str, Any]
) -> list[str]:
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
        "genes": [("per-gene Pearson", "scatter_genes")],
        "pathways": [("per-pathway Pearson", "scatter_pathways")],
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
                "and the true profile; the `chance` row is a random pick). Recall is a "
                "fraction of the test spots, here and in every figure.",
                "",
            ]
        for alt, key in figures.get(task, []):
            if key in figs:
                lines += [f"![{alt}]({figs[key]})", ""]
        maps = [(k.split(":", 1)[1], f) for k, f in figs.items() if k.startswith(f"maps_{task}:")]
        if maps:
            lines += [_maps_note(params), ""]
            lines += [line for sample, f in maps for line in (f"![{task}, {sample}]({f})", "")]
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
    """Write ``out/report.md`` and ``out/report.html``; return the markdown's path.

    The report opens with the overall verdict (``verdict``, default ``overall_verdict``
    of ``table``) and its rule, then what each readout measures, the verdicts on the
    depth-adjusted readout, then on the HEST readout, and the tables with their
    figures (``figs``: name → path relative to ``out``, as `write_figures` returns).
    ``report.html`` is the same report in one self-contained file (figures embedded;
    ``write_report_html``): rewrite it with that function after appending to the
    markdown.
    """
    verdict = overall_verdict(table, params) if verdict is None else verdict
    lines = [
        *_lead_lines(params, verdict),
        *_run_lines(params),
        *_verdict_sections(table, params),
        *_task_sections(table, figs, params),
        *_marker_lines(table, params),
        "## Gene panel",
        "",
        ", ".join(params["gene_panel"]),
        "",
        "Files: `summary.csv` (these tables), `runs.csv` (every fold and seed), "
        "`per_target_<readout>.csv` (Pearson per gene / pathway, mean over seeds), "
        "`results.json` (parameters, overall verdict, summary), `report.html` (this "
        "report in one self-contained file, figures embedded).",
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
    write_report_html(path)
    return path
