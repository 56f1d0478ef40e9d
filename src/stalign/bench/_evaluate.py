"""``stalign evaluate``: baseline vs aligned encoders on one pairs store, with a report."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._features import (
    color_histogram,
    downsampled_pixels,
    encoder_features,
    library_size,
    squidpy_features,
)
from ._mil import marker_prediction
from ._probe import ProbeResult, gene_prediction, pathway_prediction
from ._retrieval import retrieval
from ._tasks import bags_from_task, region_tasks

__all__ = ["EvaluationResult", "evaluate", "load_pairs_arrays", "parse_encoder_spec"]

logger = logging.getLogger(__name__)

REFERENCES = ("histogram", "pixels", "squidpy", "library_size", "random")
_REFERENCE_LABELS = {
    "histogram": "colour histogram",
    "pixels": "8×8 pixels",
    "squidpy": "squidpy features",
    "library_size": "library size only",
    "random": "random-weights encoder",
}


def _random_label(name: str) -> str:
    """Report row of a random-init encoder: ``"random ViT-Tiny"``, ``"random resnet10t"``."""
    from ..models import get_encoder_config

    return f"random {get_encoder_config(name).label}"


@dataclass
class PairsArrays:
    """Everything the benchmark needs from a pairs store, in one row order."""

    patches: np.ndarray
    counts: Any  # scipy.sparse csr (n, genes)
    gene_names: list[str]
    pathways: pd.DataFrame
    obs: pd.DataFrame  # sample_id, patient_id, barcode
    coords: np.ndarray


@dataclass
class EvaluationResult:
    """Outcome of :func:`evaluate`.

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


def parse_encoder_spec(spec: str) -> tuple[str, str]:
    """Split ``"label=source"`` (or a bare source) into ``(label, source)``."""
    label, sep, source = spec.partition("=")
    if not sep:
        source = spec
        label = Path(spec.rstrip("/")).name if os.path.exists(spec) else spec
    if not label or not source:
        msg = f"encoder spec {spec!r}: expected LABEL=SOURCE or SOURCE"
        raise ValueError(msg)
    return label, source


def load_pairs_arrays(
    root: str | os.PathLike, *, samples: Sequence[str] | None = None
) -> PairsArrays:
    """Read patches, counts, pathway scores and spot centres of a pairs store.

    Rows follow :class:`stalign.pairs.PairsDataset` (sample by sample); counts are
    joined on barcodes, never on row position. Genes are those common to all samples.
    """
    import anndata as ad
    import scipy.sparse as sp

    from ..pairs import PairsDataset

    ds = PairsDataset(root, samples=samples)
    obs = ds.obs[["sample_id", "patient_id", "barcode"]].reset_index(drop=True)
    patches = np.stack([ds.read_patch(i) for i in range(len(ds))])
    parts, coords, genes = [], [], None
    index = {s["sample_id"]: s for s in ds.index_json["samples"]}
    for sid in dict.fromkeys(obs["sample_id"]):
        a = ad.read_h5ad(Path(root) / index[sid]["path"] / "pairs.h5ad")
        bc = obs.loc[obs["sample_id"] == sid, "barcode"].to_numpy()
        a = a[pd.Index(a.obs_names.astype(str)).get_indexer(bc)]
        parts.append(a)
        genes = list(a.var_names) if genes is None else [g for g in genes if g in set(a.var_names)]
        coords.append(np.asarray(a.obsm["spatial"], dtype=float))
    if not genes:
        msg = f"the samples of {root} share no gene"
        raise ValueError(msg)
    counts = sp.vstack([sp.csr_matrix(a[:, genes].X) for a in parts]).tocsr()
    return PairsArrays(
        patches=patches,
        counts=counts,
        gene_names=[str(g) for g in genes],
        pathways=pd.DataFrame(ds.pathways, columns=ds.pathway_names),
        obs=obs,
        coords=np.vstack(coords),
    )


# --------------------------------------------------------------------------------------
# features


def _reference_features(name: str, patches: np.ndarray, counts: Any = None) -> np.ndarray:
    if name == "library_size":
        return library_size(counts)
    if name == "histogram":
        return color_histogram(patches)
    if name == "pixels":
        return downsampled_pixels(patches, size=8)
    if name == "squidpy":
        return squidpy_features(patches)
    msg = f"unknown reference {name!r}; choose from {REFERENCES}"
    raise ValueError(msg)


def _load_encoder(source: Any, *, image_size: int | None, seed: int, seed_index: int = 0):
    """Load an export dir, or create a registry name with random weights.

    A list of sources holds one model per seed: seed number ``seed_index`` uses
    ``source[seed_index]``, so the spread over seeds is the spread over trained models.
    """
    import torch

    from .. import models

    if isinstance(source, list | tuple):
        # one trained model per seed (e.g. the aligned exports of seeds 0, 1, ...)
        encoder, _ = _load_encoder(
            source[seed_index % len(source)], image_size=image_size, seed=seed
        )
        return encoder, True
    if isinstance(source, torch.nn.Module):
        return source, False
    path = Path(str(source))
    if path.is_dir():
        if not (path / "config.json").is_file():
            msg = f"encoder {source!r}: directory without config.json (not a timm export)"
            raise FileNotFoundError(msg)
        return models.load_exported(path), False
    if path.suffix in (".safetensors", ".pt", ".pth", ".bin"):
        msg = (
            f"encoder {source!r}: a bare checkpoint needs its architecture; "
            "use a `stalign export` directory or a registry name"
        )
        raise ValueError(msg)
    torch.manual_seed(seed)
    return models.create_encoder(str(source), pretrained=False, img_size=image_size), True


# --------------------------------------------------------------------------------------
# tasks


def _probe_rows(res: ProbeResult, label: str, seed: int, task: str) -> list[dict]:
    return [
        {
            "features": label,
            "seed": seed,
            "task": task,
            "metric": "pearson",
            "fold": r.test_groups,
            "value": r.pearson_mean,
        }
        for r in res.per_fold.itertuples()
    ]


def _retrieval_from_probe(res: ProbeResult, samples: np.ndarray, max_k: int):
    """Predicted vs measured profiles of the test spots, retrieved within each section."""
    tested = ~np.isnan(res.predictions).any(axis=1)
    truth = res.targets[tested]
    mu, sd = truth.mean(0), truth.std(0)
    sd[sd == 0] = 1.0
    z = (truth - mu) / sd
    return retrieval(
        (res.predictions[tested] - mu) / sd,
        z,
        groups=samples[tested],
        profiles=z,
        max_k=max_k,
    )


def _marker_task(data, samples, patients, marker_genes, panel, n_genes, n_paths, window):
    """Region tasks; default targets are balanced (both classes >= 20 %) in every patient.

    A target whose label follows the patient (a batch effect) cannot be learned across
    patients and would leave a fold with one class, so it is passed over.
    """
    if marker_genes is not None:
        genes = list(marker_genes)
    else:
        genes = [data.gene_names[i] for i in panel]
    pw = list(data.pathways.var(axis=0).sort_values(ascending=False).index)
    full = region_tasks(
        data.coords,
        samples,
        patients,
        counts=data.counts,
        gene_names=data.gene_names,
        genes=genes,
        pathway_scores=data.pathways,
        pathways=pw,
        window=window,
    )
    pat = full.bag_obs["patient_id"].to_numpy()
    frac = full.labels.groupby(pat).mean()
    ok = ((frac >= 0.2) & (frac <= 0.8)).all(axis=0)
    keep_g = [f"gene:{g}" for g in genes if marker_genes is not None or ok[f"gene:{g}"]]
    keep_g = keep_g if marker_genes is not None else keep_g[:n_genes]
    keep_p = [f"pathway:{q}" for q in pw if ok[f"pathway:{q}"]][:n_paths]
    cols = keep_g + keep_p
    if not cols:
        msg = "no marker target is balanced within every patient"
        raise ValueError(msg)
    full.labels = full.labels[cols]
    full.values = full.values[cols]
    full.definition += (
        "; default targets: the most variable panel genes / pathways whose label is "
        "balanced (20–80 % positive) within every patient"
    )
    return full


# --------------------------------------------------------------------------------------
# main entry


def evaluate(
    pairs_dir: str | os.PathLike,
    encoders: Sequence[str] | Mapping[str, Any],
    *,
    out: str | os.PathLike,
    test_patients: Sequence[str] | None = None,
    references: Sequence[str] = REFERENCES,
    random_encoder: str | Sequence[str] = "vit_tiny_patch16_224",
    image_size: int | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    probes: Sequence[str] = ("ridge",),
    marker_genes: Sequence[str] | None = None,
    n_marker_genes: int = 2,
    n_marker_pathways: int = 2,
    mil_epochs: int = 30,
    region_window: int = 5,
    n_maps: int = 3,
    max_k: int = 50,
    batch_size: int = 64,
    threads: int | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Compare encoders (e.g. a baseline and its aligned export) on one pairs store.

    Every feature set is scored in the same run, on the same spots and splits:

    * **genes** — :func:`gene_prediction` (HEST protocol: 50 HVGs, log1p, PCA 256,
      ridge), Pearson per gene;
    * **pathways** — :func:`pathway_prediction` on the store's pathway scores;
    * **retrieval** — the pathway ridge probe's predicted profile of each test spot
      retrieves its measured profile among all spots of the same section (recall@1/5/10,
      plus the Pearson between the retrieved and true profile). Exports hold the image
      backbone only, so retrieval runs in the predicted-profile space for every
      feature set alike;
    * **markers** — gated ABMIL over 5 × 5-spot regions (:func:`region_tasks`), label =
      pseudo-bulk marker gene / pathway above the cohort median, ROC-AUC.

    Splits: leave one patient out, or, with ``test_patients``, one split testing those
    patients (use it when an aligned encoder was trained on the other patients).
    Stochastic parts are repeated over ``seeds``: random-init encoders (a new init per
    seed), the MLP probe and the MIL. Deterministic feature sets run once.

    Parameters
    ----------
    pairs_dir
        A pairs store written by ``stalign build-pairs``.
    encoders
        ``"LABEL=SOURCE"`` strings (or a mapping label → source / ``Encoder``). SOURCE
        is a ``stalign export`` timm directory, or a registry / timm name created with
        random weights (``pretrained=False``: nothing is downloaded). A list of sources
        under one label holds one trained model per seed (seed ``i`` uses source ``i``),
        so its mean ± sd is over independently trained models. Order matters for
        the figures: the first is the baseline, the last the aligned model.
    out
        Output directory: ``report.md``, ``summary.csv``, ``runs.csv``,
        ``per_target_*.csv``, ``results.json``, ``figures/*.png``.
    test_patients
        Fixed test patients (default: leave-one-patient-out over all patients).
    references
        Reference feature sets among ``"histogram"``, ``"pixels"``, ``"squidpy"``,
        ``"library_size"`` (log total counts only: the sequencing-depth floor) and
        ``"random"`` (``random_encoder`` with random weights).
    random_encoder
        Registry name(s) of the random-weights reference(s); each is a row named
        after the architecture (``"random ViT-Tiny"``).
    image_size
        Input side (px) for encoders created by name (default: their config's).
    seeds
        Seeds of the stochastic parts.
    probes
        Spot probes to run: any of ``"ridge"`` (HEST), ``"ridge_cv"``, ``"mlp"``.
    marker_genes
        Marker genes of the MIL tasks (default: the ``n_marker_genes`` most variable
        genes of the HEST panel).
    n_marker_genes, n_marker_pathways
        Number of gene / pathway MIL tasks (pathways: largest variance across spots).
    mil_epochs
        ABMIL training epochs.
    region_window
        Region side in spot pitches for the MIL bags.
    n_maps
        Targets shown in the measured-vs-predicted maps.
    max_k
        Length of the recall@k curves.
    batch_size
        Patches per encoder forward pass.
    threads
        Cap BLAS/OpenMP and torch threads during the run (restored afterwards);
        ``1`` is several times faster on a small, shared CPU machine where the
        probes' small matrices oversubscribe the cores. ``None`` leaves them alone.
    progress
        Progress bars.

    Returns
    -------
    :class:`EvaluationResult`.
    """
    kwargs = {k: v for k, v in locals().items() if k not in ("pairs_dir", "encoders", "threads")}
    if threads is None:
        return _evaluate(pairs_dir, encoders, **kwargs)
    from .._utils import limit_threads

    with limit_threads(threads):
        return _evaluate(pairs_dir, encoders, **kwargs)


def _evaluate(
    pairs_dir,
    encoders,
    *,
    out,
    test_patients,
    references,
    random_encoder,
    image_size,
    seeds,
    probes,
    marker_genes,
    n_marker_genes,
    n_marker_pathways,
    mil_epochs,
    region_window,
    n_maps,
    max_k,
    batch_size,
    progress,
) -> EvaluationResult:
    from tqdm.auto import tqdm

    from .. import pl
    from .._utils import atomic_write_text

    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    unknown = [r for r in references if r not in REFERENCES]
    if unknown:
        msg = f"references {unknown} unknown; choose from {REFERENCES}"
        raise ValueError(msg)
    if isinstance(encoders, Mapping):
        enc_specs = [(str(k), v) for k, v in encoders.items()]
    else:
        enc_specs = [parse_encoder_spec(s) for s in encoders]
    labels = [lab for lab, _ in enc_specs]
    if len(set(labels)) != len(labels):
        msg = f"encoder labels must be unique, got {labels}"
        raise ValueError(msg)
    if not seeds:
        msg = "seeds must name at least one seed"
        raise ValueError(msg)
    bad = [q for q in probes if q not in ("ridge", "ridge_cv", "mlp")]
    if bad or "ridge" not in probes:
        msg = f"probes must include 'ridge' and be among ridge, ridge_cv, mlp; got {list(probes)}"
        raise ValueError(msg)

    data = load_pairs_arrays(pairs_dir)
    n = len(data.obs)
    patients = data.obs["patient_id"].to_numpy(str)
    samples = data.obs["sample_id"].to_numpy(str)
    logger.info(
        "evaluate: %d spots, %d samples, %d patients, %d genes, %d pathways",
        n,
        len(set(samples)),
        len(set(patients)),
        len(data.gene_names),
        data.pathways.shape[1],
    )
    if data.pathways.shape[1] == 0:
        msg = f"{pairs_dir} has no pathway scores; rebuild it with gene sets (--gene-sets)"
        raise ValueError(msg)

    # marker tasks (built once, from measured data)
    from ._genes import hest_gene_panel

    panel = hest_gene_panel(data.counts, data.gene_names)
    task = None
    if marker_genes is not None or n_marker_genes or n_marker_pathways:
        try:
            task = _marker_task(
                data,
                samples,
                patients,
                marker_genes,
                panel,
                n_marker_genes,
                n_marker_pathways,
                region_window,
            )
        except ValueError as e:
            logger.warning("marker tasks skipped: %s", e)

    # feature sets: (label, kind, seed-dependent source)
    jobs: list[tuple[str, str, Any]] = []
    random_names = [random_encoder] if isinstance(random_encoder, str) else list(random_encoder)
    for r in references:
        if r == "random":
            jobs += [(_random_label(name), "random", name) for name in random_names]
        else:
            jobs.append((_REFERENCE_LABELS[r], "reference", r))
    for lab, src in enc_specs:
        jobs.append((lab, "encoder", src))

    rows: list[dict] = []
    per_target: dict[str, dict[str, pd.Series]] = {"genes": {}, "pathways": {}}
    preds: dict[str, dict[str, ProbeResult]] = {"genes": {}, "pathways": {}}
    curves: dict[str, np.ndarray] = {}
    chance_curve = None
    bar = tqdm(total=len(jobs) * len(seeds), disable=not progress, desc="evaluate")
    for label, kind, src in jobs:
        X, stochastic = None, kind == "random"
        for si, seed in enumerate(seeds):
            bar.set_postfix_str(f"{label} seed {seed}")
            if kind == "reference":
                X = X if X is not None else _reference_features(src, data.patches, data.counts)
            elif X is None or stochastic:
                enc, stochastic = _load_encoder(
                    src, image_size=image_size, seed=seed, seed_index=si
                )
                X = encoder_features(enc, data.patches, batch_size=batch_size)
                del enc
            first = si == 0
            for probe in probes:
                if si > 0 and not stochastic and probe != "mlp":
                    continue
                g = gene_prediction(
                    X,
                    data.counts,
                    patients,
                    gene_names=data.gene_names,
                    samples=samples,
                    probe=probe,
                    test_groups=test_patients,
                    random_state=seed,
                )
                p = pathway_prediction(
                    X,
                    data.pathways,
                    patients,
                    samples=samples,
                    probe=probe,
                    test_groups=test_patients,
                    random_state=seed,
                )
                suffix = "" if probe == "ridge" else f" ({probe})"
                rows += _probe_rows(g, label, seed, "genes" + suffix)
                rows += _probe_rows(p, label, seed, "pathways" + suffix)
                if probe == "ridge":
                    if first:
                        preds["genes"][label], preds["pathways"][label] = g, p
                    for key, res in (("genes", g), ("pathways", p)):
                        s = res.target_means()
                        prev = per_target[key].get(label)
                        per_target[key][label] = s if prev is None else (prev * si + s) / (si + 1)
                    ret = _retrieval_from_probe(p, samples, max_k)
                    for k, v in ret.recall.items():
                        rows.append(
                            {
                                "features": label,
                                "seed": seed,
                                "task": "retrieval",
                                "metric": f"recall@{k}",
                                "fold": "all",
                                "value": v,
                            }
                        )
                    rows.append(
                        {
                            "features": label,
                            "seed": seed,
                            "task": "retrieval",
                            "metric": "profile_corr",
                            "fold": "all",
                            "value": ret.profile_corr,
                        }
                    )
                    curves[label] = (
                        ret.curve if first else (curves[label] * si + ret.curve) / (si + 1)
                    )
                    if chance_curve is None:
                        pool = pd.Series(samples[~np.isnan(p.predictions).any(1)]).value_counts()
                        w = pool.to_numpy(float)
                        chance_curve = np.array(
                            [
                                np.average(np.minimum(k / w, 1), weights=w)
                                for k in range(1, max_k + 1)
                            ]
                        )
                        rows += [
                            {
                                "features": "chance",
                                "seed": 0,
                                "task": "retrieval",
                                "metric": f"recall@{k}",
                                "fold": "all",
                                "value": v,
                            }
                            for k, v in ret.chance.items()
                        ]
                        rows.append(
                            {
                                "features": "chance",
                                "seed": 0,
                                "task": "retrieval",
                                "metric": "profile_corr",
                                "fold": "all",
                                "value": ret.profile_corr_chance,
                            }
                        )
            if task is not None:
                bags = bags_from_task(X, task)
                for col in task.labels.columns:
                    y = task.labels[col].to_numpy()
                    mres = marker_prediction(
                        bags,
                        y,
                        task.bag_obs["patient_id"].to_numpy(),
                        seeds=[seed],
                        test_groups=test_patients,
                        epochs=mil_epochs,
                    )
                    rows += [
                        {
                            "features": label,
                            "seed": seed,
                            "task": f"marker {col}",
                            "metric": "roc_auc",
                            "fold": r.test_groups,
                            "value": r.auc,
                        }
                        for r in mres.per_fold.itertuples()
                    ]
            bar.update(1)
    bar.close()

    runs = pd.DataFrame(rows)
    table = (
        runs.groupby(["task", "metric", "features"], sort=False)["value"]
        .agg(mean="mean", std=lambda v: float(np.nanstd(v)), n="count")
        .reset_index()
    )
    runs.to_csv(out / "runs.csv", index=False)
    table.to_csv(out / "summary.csv", index=False)
    for key in ("genes", "pathways"):
        pd.DataFrame(per_target[key]).to_csv(out / f"per_target_{key}.csv")

    # ---------------------------------------------------------------- figures
    figs: dict[str, str] = {}
    feat_labels = [j[0] for j in jobs]
    base = labels[0] if labels else feat_labels[0]
    aligned = (
        labels[-1]
        if len(labels) >= 2
        else (
            _random_label(random_names[0])
            if labels and "random" in references and random_names
            else feat_labels[-1]
        )
    )
    if base == aligned and len(feat_labels) > 1:
        base = feat_labels[0]
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
        res_a, res_b = preds[key][base], preds[key][aligned]
        tested = ~np.isnan(res_b.predictions).any(axis=1)
        smp = pd.Series(samples[tested]).value_counts().index[0]
        rows_s = np.flatnonzero(tested & (samples == smp))
        best = per_target[key][aligned].sort_values(ascending=False).index[:n_maps]
        cols = [res_b.target_names.index(t) for t in best]
        sc = {
            lab: [
                float(np.corrcoef(res.targets[rows_s, c], res.predictions[rows_s, c])[0, 1])
                for c in cols
            ]
            for lab, res in ((base, res_a), (aligned, res_b))
        }
        f = f"figures/maps_{key}.png"
        pl.bench_maps(
            data.coords[rows_s],
            res_b.targets[rows_s][:, cols],
            {base: res_a.predictions[rows_s][:, cols], aligned: res_b.predictions[rows_s][:, cols]},
            [str(t) for t in best],
            scores=sc,
            title=f"{smp}: measured vs predicted (best {unit}s of {aligned})",
            save=out / f,
        )
        figs[f"maps_{key}"] = f
    f = "figures/retrieval_curves.png"
    pl.bench_retrieval_curves(
        curves,
        chance=chance_curve,
        title="predicted → measured pathway profile, within section",
        save=out / f,
    )
    figs["retrieval"] = f

    # ---------------------------------------------------------------- report
    from ._report import write_report

    params = {
        "pairs_dir": str(pairs_dir),
        "n_spots": n,
        "samples": sorted(set(samples)),
        "patients": sorted(set(patients)),
        "split": "leave one patient out"
        if test_patients is None
        else f"train on {sorted(str(p) for p in set(patients) - set(test_patients))}, "
        f"test on {list(test_patients)}",
        "seeds": list(seeds),
        "probes": list(probes),
        "encoders": {lab: str(src) for lab, src in enc_specs},
        "references": [j[0] for j in jobs if j[1] != "encoder"],
        "random_encoder": ", ".join(random_names),
        "gene_panel": preds["genes"][feat_labels[0]].target_names,
        "marker_task": None if task is None else task.definition,
        "marker_targets": [] if task is None else list(task.labels.columns),
        "n_bags": 0 if task is None else len(task.bags),
        "baseline": base,
        "aligned": aligned,
    }
    report = write_report(out, table, params, figs)
    atomic_write_text(
        out / "results.json",
        json.dumps(
            {"params": params, "summary": table.to_dict(orient="records")}, indent=2, default=float
        ),
    )
    logger.info("evaluation report: %s", report)
    return EvaluationResult(
        table=table,
        runs=runs,
        report=report,
        out=out,
        extras={"per_target": per_target, "figures": figs},
    )
