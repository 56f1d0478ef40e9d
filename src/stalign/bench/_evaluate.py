"""``stalign evaluate``: baseline vs aligned encoders on one pairs store, with a report.

`evaluate` is the orchestrator; each concern has its module:

* `_spec` — what to run ([`EvaluationSpec`][stalign.bench.EvaluationSpec], validated once),
  the reference feature sets;
* `_spot_table` — the store's spot table (counts, pathway scores, spot centres) and the
  HEST gene panel;
* `_feature_sources` — cache keys of the feature sets;
  [`embed_features`][stalign.bench.embed_features] computes each once into the
  `FeatureCache` (streamed chunk by chunk, shardable);
* `_marker_targets` — the MIL marker task;
* `_scoring` — the grid of scores, one level per function;
* `_outputs` — tables, figures, ``report.md`` and ``results.json``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ._feature_sources import embed_features
from ._marker_targets import _build_marker_task
from ._memory import release_freed_heap
from ._outputs import _baseline_and_aligned, _report_params, _write_outputs
from ._scoring import _Context, _score_grid
from ._spec import EvaluationSpec, evaluation_spec
from ._spot_table import PairsArrays, _spot_table

__all__ = ["EvaluationResult", "evaluate", "run_evaluation"]

logger = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """Outcome of [`evaluate`][stalign.bench.evaluate].

    Attributes
    ----------
    table
        Tidy summary: one row per (features, task, metric) with ``mean``, ``std``,
        ``n`` (values behind them: folds × seeds) and ``seeds``.
    runs
        Long table of every (features, seed, task, metric, fold) value.
    report
        Path of ``report.md``.
    out
        Output directory.
    """

    table: pd.DataFrame
    runs: pd.DataFrame
    report: Path
    out: Path
    extras: dict = field(default_factory=dict)


def evaluate(
    pairs_dir: str | os.PathLike | None = None,
    encoders: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    spec: EvaluationSpec | None = None,
    **overrides: Any,
) -> EvaluationResult | None:
    """Compare encoders (e.g. a baseline and its aligned export) on one pairs store.

    Every feature set is scored in the same run, on the same spots and splits:

    * **genes** — [`gene_prediction`][stalign.bench.gene_prediction] (HEST protocol:
      50 HVGs, log1p raw counts, PCA 256, ridge), Pearson per gene; and the same panel
      as ``log1p`` of counts per 10,000 (``genes (log CP10k)``);
    * **pathways** — [`pathway_prediction`][stalign.bench.pathway_prediction] on the
      store's pathway scores;
    * **retrieval** — the pathway ridge probe's predicted profile of each test spot
      retrieves its measured profile among all spots of the same section (recall@1/5/10,
      plus the Pearson between the retrieved and true profile). Exports hold the image
      backbone only, so retrieval runs in the predicted-profile space for every
      feature set alike;
    * **markers** — gated ABMIL over 5 × 5-spot regions (`region_tasks`), label =
      pseudo-bulk marker gene / pathway above the cohort median, ROC-AUC.

    Genes and pathways are scored twice from the same predictions: the HEST readout
    (metric ``pearson``) and the depth-adjusted one (``pearson_depth_adjusted``:
    a cubic in log library size regressed out of targets and predictions over the test
    spots, [`depth_adjusted`][stalign.bench.depth_adjusted]); the report leads with the
    latter and opens with an overall verdict by a rule it states.

    Splits: leave one patient out, or, with ``test_patients``, one split testing those
    patients (use it when an aligned encoder was trained on the other patients). By
    section instead: ``test_samples`` (one split testing those sections) or
    ``split_by="sample"`` (leave one section out); the MIL folds follow. Sections of one
    tumour are near-replicates, so a split by section is weaker evidence than a split
    by patient (the report says so).
    Stochastic parts are repeated over ``seeds``: random-init encoders (a new init per
    seed), the MLP probe and the MIL. Deterministic feature sets run once.

    Patches are never all in memory: every image feature set is computed once,
    streaming the store in chunks of ``chunk_rows`` patches, into a per-sample
    feature cache (``cache_dir``) that the probes read; a rerun reuses it. Peak
    memory is one chunk of patches plus the ``(n, d)`` feature matrices.

    Under ``torchrun`` (``WORLD_SIZE`` > 1; from Python or ``torchrun -m stalign
    evaluate``) the process group is joined here, as `stalign.train.fit` does: every rank
    embeds its share of the samples and rank 0 scores and writes the report.

    Parameters
    ----------
    pairs_dir
        A pairs store written by ``stalign build-pairs`` (``EvaluationSpec.pairs_dir``).
    encoders
        Encoders to compare (``EvaluationSpec.encoders``): ``"LABEL=SOURCE"`` strings or
        a mapping label → source.
    spec
        The settings; ``pairs_dir``, ``encoders`` and ``overrides`` replace its fields.
        Without it they make a new [`EvaluationSpec`][stalign.bench.EvaluationSpec]
        (``out`` is then required), whose defaults apply to every field not given.
    **overrides
        Any field of [`EvaluationSpec`][stalign.bench.EvaluationSpec], e.g. ``out=``,
        ``test_patients=``, ``seeds=``, ``references=``, ``threads=``; its docstring
        lists them with their defaults.

    Returns
    -------
    EvaluationResult | None
        [`EvaluationResult`][stalign.bench.EvaluationResult]; ``None`` on ranks other than 0 of a
        ``torch.distributed`` run (all ranks embed their share of the samples, rank 0 scores).
    """
    given = {"pairs_dir": pairs_dir, "encoders": encoders}
    changes = {k: v for k, v in given.items() if v is not None} | overrides
    return run_evaluation(evaluation_spec(spec, **changes))


def run_evaluation(spec: EvaluationSpec) -> EvaluationResult | None:
    """Run an `EvaluationSpec`: features → grid of scores → tables, figures, report.

    The run holds the lock of ``spec.out`` (a second evaluate on the same folder is
    refused up front) and publishes its outputs as one set (``_publish``): a run
    killed midway never leaves a folder mixing two runs' files. Under ``torchrun``
    it joins the process group (`stalign._distributed.distributed_group`): every rank
    embeds its share of the samples and only rank 0 locks, scores and writes the
    report (the other ranks return ``None``). ``spec.threads`` caps the threads.
    """
    from .._distributed import distributed_group
    from .._lock import folder_lock
    from ._publish import LOCK_FILE

    spec.out.mkdir(parents=True, exist_ok=True)
    with distributed_group() as (rank, _), _thread_cap(spec.threads):
        if rank != 0:
            ds, _, _ = _open_store(spec)
            embed_features(spec, ds)
            return None  # the other ranks embedded their share; rank 0 scores
        with folder_lock(spec.out / LOCK_FILE, command="stalign evaluate", what=str(spec.out)):
            return _run_locked(spec)


def _thread_cap(threads: int | None) -> contextlib.AbstractContextManager:
    """`limit_threads` to ``threads``; nothing when ``None``."""
    from .._utils import limit_threads

    return contextlib.nullcontext() if threads is None else limit_threads(threads)


def _open_store(spec: EvaluationSpec) -> tuple[Any, PairsArrays, list[str]]:
    """Open the store: dataset, spot table (only the genes used) and HEST panel."""
    from ..pairs import PairsDataset

    ds = PairsDataset(spec.pairs_dir)
    data, panel = _spot_table(ds, spec.pairs_dir, spec.marker_genes)
    release_freed_heap()
    logger.info(
        "evaluate: %d spots, %d samples, %d patients, %d pathways; HEST panel of %d genes",
        len(data.obs),
        data.obs["sample_id"].nunique(),
        data.obs["patient_id"].nunique(),
        data.pathways.shape[1],
        len(panel),
    )
    if data.pathways.shape[1] == 0:
        msg = f"{spec.pairs_dir} has no pathway scores; rebuild it with gene sets (--gene-sets)"
        raise ValueError(msg)
    return ds, data, panel


def _run_locked(spec: EvaluationSpec) -> EvaluationResult:
    from .._utils import progress_bar as tqdm
    from ._publish import publish, staging_dir
    from ._report import overall_verdict, summary_table

    ds, data, panel = _open_store(spec)
    task = _build_marker_task(data, spec, panel)  # a bad marker gene fails before embedding
    cache = embed_features(spec, ds)
    release_freed_heap()  # the patch chunks of the embedding loop
    ctx = _Context(
        spec=spec,
        data=data,
        cache=cache,
        panel=panel,
        compared=_baseline_and_aligned(spec),
        task=task,
    )
    total = len(spec.feature_sets()) * len(spec.seeds)
    with tqdm(total=total, disable=not spec.progress, desc="evaluate") as bar:
        ctx.progress_bar = bar
        scores = _score_grid(ctx)
    runs = pd.DataFrame([row for s in scores.values() for row in s.rows])
    table = summary_table(runs)
    keys = dict.fromkeys(k for s in scores.values() for k in s.per_target)
    per_target = {key: {label: s.per_target[key] for label, s in scores.items()} for key in keys}
    params = _report_params(spec, ctx)
    verdict = overall_verdict(table, params)
    stage = staging_dir(spec.out)
    try:
        figs = _write_outputs(stage, ctx, scores, runs, table, per_target, params, verdict)
        publish(stage, spec.out, {"seeds": list(spec.seeds), "split": params["split"]})
    finally:  # a stopped run leaves no staging litter (a killed one: the next run's lock)
        shutil.rmtree(stage, ignore_errors=True)
    report = spec.out / "report.md"
    logger.info("evaluation report: %s", report)
    return EvaluationResult(
        table=table,
        runs=runs,
        report=report,
        out=spec.out,
        extras={"per_target": per_target, "figures": figs, "overall_verdict": verdict},
    )
