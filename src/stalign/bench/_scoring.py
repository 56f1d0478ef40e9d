"""Scoring, one level per function (as HEST's benchmark is split).

* `_split_scores` — one probe at one seed on one feature matrix (the probes run their
  patient folds inside);
* `_score_seed` / `_score_feature_set` — the seeds of one feature set;
* `_score_grid` — feature sets × tasks.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ._cache import FeatureCache
from ._depth_readout import depth_adjusted
from ._feature_sources import _cached, _feature_source, _seed_indices
from ._memory import release_freed_heap
from ._mil import marker_prediction
from ._probe import ProbeResult, gene_prediction, pathway_prediction
from ._report import DEPTH_METRIC, MapSection
from ._retrieval import retrieval
from ._spec import REFERENCE_FEATURES, EvaluationSpec, FeatureSet
from ._spot_table import PairsArrays
from ._tasks import MarkerTask, bags_from_task

__all__ = ["READOUTS"]


@dataclass
class _Context:
    """Data shared by every level: spec, spot table, marker task, feature cache."""

    spec: EvaluationSpec
    data: PairsArrays
    cache: FeatureCache
    panel: list[str]  # HEST gene panel (the same for every feature set: chosen once)
    compared: tuple[str, str]  # baseline and aligned labels (verdicts, figures)
    task: MarkerTask | None
    progress_bar: Any = None

    @property
    def patients(self) -> np.ndarray:
        return self.data.obs["patient_id"].to_numpy(str)

    @property
    def samples(self) -> np.ndarray:
        return self.data.obs["sample_id"].to_numpy(str)

    @property
    def groups(self) -> np.ndarray:
        """The split's unit of each spot: its patient, or its section with split_by='sample'."""
        return self.samples if self.spec.split_level == "sample" else self.patients

    @functools.cached_property
    def log_depth(self) -> np.ndarray:
        """Log library size of each spot (all genes: the store keeps the others' total)."""
        from ..pp import log_depth

        return log_depth(self.data.counts)


def _features(fs: FeatureSet, seed_index: int, ctx: _Context) -> np.ndarray:
    if not _cached(fs):
        return np.asarray(REFERENCE_FEATURES[fs.source].spot_features(ctx.data), np.float32)
    return ctx.cache.load(_feature_source(fs, ctx.spec, seed_index))


def _rows(
    features: str, seed: int, task: str, metric: str, values: Sequence[tuple[Any, float]]
) -> list[dict]:
    """Make result rows ``(features, seed, task, metric, fold, value)``, one per fold."""
    return [
        {
            "features": features,
            "seed": seed,
            "task": task,
            "metric": metric,
            "fold": fold,
            "value": value,
        }
        for fold, value in values
    ]


def _probe_rows(
    res: ProbeResult, label: str, seed: int, task: str, metric: str = "pearson"
) -> list[dict]:
    folds = [(r.test_groups, r.pearson_mean) for r in res.per_fold.itertuples()]
    return _rows(label, seed, task, metric, folds)


def _retrieval_from_probe(res: ProbeResult, samples: np.ndarray, max_k: int):
    """Predicted vs measured profiles of the test spots, retrieved within each section."""
    tested = ~np.isnan(res.predictions).any(axis=1)
    z = res.targets[tested]  # a copy, standardised in place (as are the predictions)
    mu, sd = z.mean(0), z.std(0)
    sd[sd == 0] = 1.0
    z -= mu
    z /= sd
    pred = res.predictions[tested]
    pred -= mu
    pred /= sd
    return retrieval(pred, z, groups=samples[tested], profiles=z, max_k=max_k)


def _chance_curve(res: ProbeResult, samples: np.ndarray, max_k: int) -> np.ndarray:
    """recall@k of a random ranking within each section of the tested spots."""
    pool = pd.Series(samples[~np.isnan(res.predictions).any(1)]).value_counts()
    w = pool.to_numpy(float)
    return np.array([np.average(np.minimum(k / w, 1), weights=w) for k in range(1, max_k + 1)])


#: Readouts of the spot probes: key → (task label, targets of gene_prediction or None).
READOUTS = {
    "genes": ("genes", "log1p"),
    "genes_cp10k": ("genes (log CP10k)", "log1p_cp10k"),
    "pathways": ("pathways", None),
}


def _split_scores(X: np.ndarray, ctx: _Context, probe: str, seed: int) -> dict[str, ProbeResult]:
    """Gene (log1p, log CP10k) and pathway probes of one feature matrix at one seed.

    Returns the plain results under ``genes``, ``genes_cp10k``, ``pathways`` and their
    depth-adjusted rescoring under ``<key>_depth_adjusted`` (the same predictions).
    """
    common = {
        "samples": ctx.samples,
        "probe": probe,
        "protocol": ctx.spec.protocol,
        "test_groups": ctx.spec.test_groups,
        "random_state": seed,
    }
    out: dict[str, ProbeResult] = {}
    for key, (_, targets) in READOUTS.items():
        if targets is None:
            res = pathway_prediction(X, ctx.data.pathways, ctx.groups, **common)
        else:
            res = gene_prediction(
                X,
                ctx.data.counts,
                ctx.groups,
                gene_names=ctx.data.gene_names,
                genes=ctx.panel,
                targets=targets,
                **common,
            )
        out[key] = res
        out[f"{key}_depth_adjusted"] = depth_adjusted(res, ctx.log_depth, samples=ctx.samples)
    return out


@dataclass
class _SeedScores:
    """Rows of one feature set at one seed, plus the ridge results the figures use."""

    rows: list[dict]
    ridge: dict[str, ProbeResult] | None = None  # readout key → result, when ridge ran
    curve: np.ndarray | None = None
    chance_curve: np.ndarray | None = None


def _retrieval_metric_rows(
    label: str, seed: int, recall: Mapping[int, float], profile_corr: float
) -> list[dict]:
    rows: list[dict] = []
    for k, v in recall.items():
        rows += _rows(label, seed, "retrieval", f"recall@{k}", [("all", v)])
    return rows + _rows(label, seed, "retrieval", "profile_corr", [("all", profile_corr)])


def _retrieval_rows(
    p: ProbeResult, ctx: _Context, label: str, seed: int, with_chance: bool
) -> tuple[list[dict], Any]:
    """Score retrieval from the pathway ridge probe (with ``with_chance`` chance rows too)."""
    ret = _retrieval_from_probe(p, ctx.samples, ctx.spec.max_k)
    rows = _retrieval_metric_rows(label, seed, ret.recall, ret.profile_corr)
    if with_chance:
        rows += _retrieval_metric_rows("chance", 0, ret.chance, ret.profile_corr_chance)
    return rows, ret


def _marker_rows(X: np.ndarray, ctx: _Context, label: str, seed: int) -> list[dict]:
    task = ctx.task
    if task is None:
        return []
    unit = "sample_id" if ctx.spec.split_level == "sample" else "patient_id"
    bags = bags_from_task(X, task)
    rows: list[dict] = []
    for col in task.labels.columns:
        mres = marker_prediction(
            bags,
            task.labels[col].to_numpy(),
            task.bag_obs[unit].to_numpy(),
            seeds=[seed],
            test_groups=ctx.spec.test_groups,
            epochs=ctx.spec.mil_epochs,
        )
        folds = [(r.test_groups, r.auc) for r in mres.per_fold.itertuples()]
        rows += _rows(label, seed, f"marker {col}", "roc_auc", folds)
    return rows


def _score_seed(
    X: np.ndarray, ctx: _Context, label: str, seed: int, *, new_features: bool, with_chance: bool
) -> _SeedScores:
    """All tasks of one feature matrix at one seed.

    ``new_features`` is False when ``X`` is the same as at an earlier seed: then only
    the seeded parts (MLP probe, MIL) run again.
    """
    out = _SeedScores(rows=[])
    for probe in ctx.spec.probes:
        if not new_features and probe != "mlp":
            continue
        res = _split_scores(X, ctx, probe, seed)
        suffix = "" if probe == "ridge" else f" ({probe})"
        for key, (task, _) in READOUTS.items():
            out.rows += _probe_rows(res[key], label, seed, task + suffix)
            adjusted = res[f"{key}_depth_adjusted"]
            out.rows += _probe_rows(adjusted, label, seed, task + suffix, DEPTH_METRIC)
        if probe == "ridge":
            p = res["pathways"]
            rows, ret = _retrieval_rows(p, ctx, label, seed, with_chance)
            out.rows += rows
            out.ridge, out.curve = res, ret.curve
            if with_chance:
                out.chance_curve = _chance_curve(p, ctx.samples, ctx.spec.max_k)
    out.rows += _marker_rows(X, ctx, label, seed)
    return out


@dataclass
class _FeatureSetScores:
    """One feature set over all seeds."""

    rows: list[dict]
    per_target: dict[str, pd.Series]  # readout key → mean over seeds per target
    # the maps' section of the first seed's ridge probes, for the compared pair only
    map_sections: dict[str, MapSection] | None
    curve: np.ndarray  # recall@k curves, (seeds scored, K): the report draws their spread
    chance_curve: np.ndarray | None


def _score_feature_set(fs: FeatureSet, ctx: _Context, *, with_chance: bool) -> _FeatureSetScores:
    """Score a feature set over the seeds, reloading features only where they change."""
    rows: list[dict] = []
    means: dict[str, list[pd.Series]] = {}
    map_sections: dict[str, MapSection] | None = None
    curves: list[np.ndarray] = []
    chance = None
    varying = set(_seed_indices(fs, ctx.spec))
    X = None
    for si, seed in enumerate(ctx.spec.seeds):
        if si in varying:
            X = _features(fs, si, ctx)
        res = _score_seed(
            X,
            ctx,
            fs.label,
            int(seed),
            new_features=si in varying,
            with_chance=with_chance and si == 0,
        )
        rows += res.rows
        if res.ridge is not None:
            for key, r in res.ridge.items():
                means.setdefault(key, []).append(r.target_means())
            curves.append(res.curve)
            if map_sections is None and fs.label in ctx.compared:  # the maps need it
                map_sections = {
                    k: MapSection.of(res.ridge[k], ctx.samples) for k in ("genes", "pathways")
                }
        chance = res.chance_curve if res.chance_curve is not None else chance
        if ctx.progress_bar is not None:
            ctx.progress_bar.update(1)
    return _FeatureSetScores(
        rows=rows,
        per_target={key: sum(m) / len(m) for key, m in means.items()},
        map_sections=map_sections,
        curve=np.stack(curves),
        chance_curve=chance,
    )


def _score_grid(ctx: _Context) -> dict[str, _FeatureSetScores]:
    """Every feature set (references, then encoders) × every task, in report order."""
    scores: dict[str, _FeatureSetScores] = {}
    for i, fs in enumerate(ctx.spec.feature_sets()):
        scores[fs.label] = _score_feature_set(fs, ctx, with_chance=i == 0)
        release_freed_heap()  # its per-fold matrices
    return scores
