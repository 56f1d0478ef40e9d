"""What an evaluation writes: the compared rows, the run's description, tables and report."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ._scoring import _Context, _FeatureSetScores
from ._spec import _UNIT, EvaluationSpec


def _baseline_and_aligned(spec: EvaluationSpec) -> tuple[str, str]:
    """Which two rows the verdicts and figures compare: first and last encoder.

    With one encoder it is compared with the random-weights reference when present
    (else the last feature set); the baseline falls back to the first feature set.
    """
    labels = spec.encoder_labels
    feat_labels = [fs.label for fs in spec.feature_sets()]
    random_labels = [fs.label for fs in spec.reference_sets() if fs.kind == "encoder"]
    base = labels[0] if labels else feat_labels[0]
    if len(labels) >= 2:
        aligned = labels[-1]
    elif labels and random_labels:
        aligned = random_labels[0]
    else:
        aligned = feat_labels[-1]
    if base == aligned and len(feat_labels) > 1:
        base = feat_labels[0]
    return base, aligned


def _shared_patients(ctx: _Context, test: Sequence[str] | None) -> list[str]:
    """Patients with sections on both sides of a split by section.

    For a fixed split: patients with test and training sections; for leave one
    section out: patients with more than one section.
    """
    sections = ctx.data.obs[["sample_id", "patient_id"]].astype(str).drop_duplicates()
    if test is None:
        counts = sections["patient_id"].value_counts()
        return sorted(counts.index[counts > 1])
    is_test = sections["sample_id"].isin(test)
    both = set(sections.loc[is_test, "patient_id"]) & set(sections.loc[~is_test, "patient_id"])
    return sorted(both)


def _report_params(spec: EvaluationSpec, ctx: _Context) -> dict[str, Any]:
    """Describe the run for ``report.md`` and ``results.json``."""
    patients, samples, task = set(ctx.patients), set(ctx.samples), ctx.task
    base, aligned = ctx.compared
    level = spec.split_level
    unit = _UNIT[level]
    test = spec.test_groups
    if test is None:
        split = f"leave one {unit} out"
    else:
        train = sorted(str(g) for g in set(ctx.groups) - set(test))
        split = f"train on {unit}s {train}, test on {unit}s {test}"
    return {
        "pairs_dir": str(spec.pairs_dir),
        "n_spots": len(ctx.data.obs),
        "samples": sorted(samples),
        "patients": sorted(patients),
        "split": split,
        "split_by": level,
        "patients_on_both_sides": _shared_patients(ctx, test) if level == "sample" else [],
        "seeds": list(spec.seeds),
        "probes": list(spec.probes),
        "protocol": spec.protocol,
        "encoders": {lab: str(src) for lab, src in spec.encoders},
        "references": [fs.label for fs in spec.reference_sets()],
        "random_encoder": ", ".join(spec.random_encoder),
        "gene_panel": list(ctx.panel),
        "marker_task": None if task is None else task.definition,
        "marker_targets": [] if task is None else list(task.labels.columns),
        "n_bags": 0 if task is None else len(task.bags),
        "baseline": base,
        "aligned": aligned,
    }


def _write_outputs(
    stage: Path,
    ctx: _Context,
    scores: Mapping[str, _FeatureSetScores],
    runs: pd.DataFrame,
    table: pd.DataFrame,
    per_target: Mapping[str, Mapping[str, pd.Series]],
    params: dict[str, Any],
    verdict: dict[str, str],
) -> dict[str, str]:
    """Write tables, figures, report and results into the staging folder; return the figures."""
    from .._utils import atomic_write_text
    from ._report import READOUT_TEXT, write_figures, write_report

    runs.to_csv(stage / "runs.csv", index=False)
    table.to_csv(stage / "summary.csv", index=False)
    for key, cols in per_target.items():
        pd.DataFrame(cols).to_csv(stage / f"per_target_{key}.csv")
    figs = write_figures(
        stage,
        per_target=per_target,
        sections={label: s.map_sections for label, s in scores.items() if s.map_sections},
        curves={label: s.curve for label, s in scores.items()},
        chance_curve=next(s.chance_curve for s in scores.values()),
        coords=ctx.data.coords,
        base=params["baseline"],
        aligned=params["aligned"],
        n_maps=ctx.spec.n_maps,
        store=ctx.spec.pairs_dir,  # its section thumbnails under the maps
    )
    write_report(stage, table, params, figs, verdict=verdict)
    results = {
        "params": params,
        "overall_verdict": verdict,
        "readouts": READOUT_TEXT,
        "summary": table.to_dict(orient="records"),
    }
    atomic_write_text(stage / "results.json", json.dumps(results, indent=2, default=float))
    return figs
