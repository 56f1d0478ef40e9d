"""The end-to-end workflow: build pairs → align (LoRA, contrastive) → export → evaluate.

:func:`run_pipeline` is what ``stalign demo`` (the README's main job) runs on the
bundled mouse olfactory bulb sections: train on one animal, evaluate on the other,
always against the encoder the alignment started from and a shuffled-pair control
(see ``SCIENCE-NOTES``: without pretrained weights the gain is small, so an honest
report needs several seeds, a control and simple baselines in the same run).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import example_manifest

logger = logging.getLogger(__name__)

EXAMPLE_MANIFEST = example_manifest()  # the installed package's copy, else the checkout's


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of :func:`run_pipeline` (defaults: the MOB demo, ~9 min on 2 CPU cores).

    Attributes
    ----------
    manifest
        Sample manifest (``data/manifests`` schema).
    train_patients, test_patients
        Patient ids used to align the encoder / to evaluate it (never seen in training).
    mpp, size_px
        Patch geometry: µm per pixel and side in px. MOB's H&E is ~4.4 µm/px, so the
        demo reads patches at native resolution (64 px ≈ 280 µm of tissue) rather than
        up-sampling 224 px at 0.5 µm/px.
    gene_sets, method
        Pathway collection and scoring method (:func:`stalign.tl.score_pathways`).
    encoder, img_size
        Registry / timm name of the image encoder and its input side (px).
    jitter_px
        Random-crop jitter during training (px). The demo uses 0 so that training and
        evaluation see exactly the same field of view (flips and 90° rotations remain).
    lora_last_n_blocks
        Put LoRA adapters only in the last N transformer blocks (``None``: all blocks).
    epochs, batch_size, lr
        Training schedule (AdamW, cosine).
    seeds
        One aligned model (and one shuffled control) per seed; the evaluation's
        stochastic parts (random encoders, MIL) use the same seeds.
    shuffled_control
        Also train on image/pathway pairs shuffled across spots (the control whose
        result says how much of any gain comes from training alone).
    references
        Simple reference features evaluated in the same run (see
        :func:`stalign.bench.evaluate`).
    mil_epochs
        Training epochs of the attention-MIL marker probe.
    workers
        Processes used to build the pairs.
    """

    manifest: str = str(EXAMPLE_MANIFEST)
    train_patients: tuple[str, ...] = ("mouse1",)
    test_patients: tuple[str, ...] = ("mouse2",)
    mpp: float = 4.4
    size_px: int = 64
    gene_sets: str = "hallmark"
    method: str = "ssgsea"
    encoder: str = "vit_tiny_patch16_224"
    img_size: int = 64
    jitter_px: int = 0
    lora_last_n_blocks: int | None = None
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    seeds: tuple[int, ...] = (0, 1, 2)
    shuffled_control: bool = True
    references: tuple[str, ...] = ("histogram", "pixels", "squidpy", "random")
    mil_epochs: int = 30
    workers: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-serialisable dict."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


@dataclass
class PipelineResult:
    """Paths written by :func:`run_pipeline` and the headline numbers."""

    out: Path
    pairs_dir: Path
    report: Path
    exports: dict[str, Path] = field(default_factory=dict)
    training: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class ShuffledPairs:
    """A view of a pairs dataset whose pathway profiles are permuted across spots.

    Images stay in place; ``pathways`` of item ``i`` comes from item ``perm[i]``. This is
    the shuffled-pair control: same images, same profiles, no true correspondence.
    A dataset with a ``pathways`` array (:class:`stalign.pairs.PairsDataset`) serves the
    permuted profile from it, without reading a second patch.
    """

    def __init__(self, dataset: Any, seed: int = 0) -> None:
        self.dataset = dataset
        self.perm = np.random.default_rng(seed).permutation(len(dataset))
        self.pathway_names = getattr(dataset, "pathway_names", None)
        self._profiles = getattr(dataset, "pathways", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.dataset[i])
        j = int(self.perm[i])
        if self._profiles is None:
            item["pathways"] = self.dataset[j]["pathways"]
        else:
            import torch

            item["pathways"] = torch.from_numpy(self._profiles[j])
        return item


def _without_lora(encoder: Any) -> Any:
    """Return a copy of a LoRA-wrapped encoder whose adapters are zeroed (= its base model).

    LoRA keeps the base weights frozen, so the encoder an alignment started from is the
    trained one with every ``lora_B`` set to zero; merging then gives the base weights
    bit for bit, with the same colour normalisation as the aligned export.
    """
    import torch

    base = copy.deepcopy(encoder)
    with torch.no_grad():
        for name, param in base.named_parameters():
            if "lora_B" in name:
                param.zero_()
    return base


def _training_summary(result: Any, curves_png: Path | None) -> dict[str, Any]:
    """Summarise the validation numbers of one :func:`stalign.train.fit` run (joint space)."""
    history = result.history
    val = history.dropna(subset=["val_loss"]) if "val_loss" in history else history.iloc[:0]
    summary: dict[str, Any] = {
        "steps": result.steps,
        "curves_png": str(curves_png) if curves_png else None,
    }
    if len(val):
        first, last = val.iloc[0], val.iloc[-1]
        summary |= {
            "val_loss_first": float(first["val_loss"]),
            "val_loss_last": float(last["val_loss"]),
            "val_loss_min": float(val["val_loss"].min()),
            "val_recall@5_first": float(first["val_recall@5"]),
            "val_recall@5_last": float(last["val_recall@5"]),
            "val_recall@5_best": float(val["val_recall@5"].max()),
            "val_chance@5": float(last["val_chance@5"]),
            "val_profile_r_last": float(last["val_profile_r"]),
        }
    return summary


def _append_training_section(report: Path, training: dict[str, dict[str, Any]]) -> None:
    """Add the joint-space validation numbers of every training run to ``report``."""
    import shutil

    figures = report.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    lines = [
        "",
        "## Alignment training (joint embedding space, held-out patients)",
        "",
        "Validation during training: the image tower's embedding of each held-out spot "
        "retrieves the molecular tower's embedding of its own pathway profile among all "
        "held-out spots. First = before training, last = after the last epoch; the last "
        "epoch's weights are the ones exported (no selection on the held-out patients).",
        "",
        "| run | steps | val loss first → last (min) | recall@5 first → last (best) "
        "| chance@5 | retrieved-profile r (last) |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in training.items():
        if "val_loss_first" not in t:
            continue
        lines.append(
            f"| {name} | {t['steps']} | {t['val_loss_first']:.3f} → {t['val_loss_last']:.3f} "
            f"({t['val_loss_min']:.3f}) | {t['val_recall@5_first']:.4f} → "
            f"{t['val_recall@5_last']:.4f} ({t['val_recall@5_best']:.4f}) | "
            f"{t['val_chance@5']:.4f} | {t['val_profile_r_last']:.3f} |"
        )
    lines.append("")
    for name, t in training.items():
        if t.get("curves_png"):
            target = figures / f"curves_{name}.png"
            shutil.copyfile(t["curves_png"], target)
            lines += [f"![{name} training curves](figures/{target.name})", ""]
    with open(report, "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


def run_pipeline(
    out: str | os.PathLike, config: PipelineConfig | None = None, *, progress: bool = True
) -> PipelineResult:
    """Build pairs, align an encoder, export it and evaluate it against its baseline.

    Parameters
    ----------
    out
        Output directory. Written: ``pairs/`` (the pairs store and its QC report),
        ``train/<run>/`` (config, log, curves, checkpoints), ``exports/<run>/``
        (merged timm model + peft adapter), ``exports/baseline_seed<s>/`` (the
        encoder each alignment started from, same normalisation), ``eval/``
        (``report.md`` with tables and figures), ``pipeline.json``.
    config
        Settings (default: :class:`PipelineConfig`).
    progress
        Show progress bars.

    Returns
    -------
    :class:`PipelineResult` with the paths and the time spent per stage (s).
    """
    from . import bench, models, pairs, pl, train

    config = config or PipelineConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    # 1. curate ------------------------------------------------------------------------
    t0 = time.perf_counter()
    pairs_dir = out / "pairs"
    logger.info("building pairs from %s into %s", config.manifest, pairs_dir)
    pairs.build_pairs(
        config.manifest,
        pairs_dir,
        mpp=config.mpp,
        size_px=config.size_px,
        gene_sets=config.gene_sets,
        method=config.method,
        workers=config.workers,
        progress=progress,
    )
    seconds["build_pairs"] = time.perf_counter() - t0

    train_ds = pairs.PairsDataset(pairs_dir, patients=list(config.train_patients))
    val_ds = pairs.PairsDataset(pairs_dir, patients=list(config.test_patients))

    # 2. align (one run per seed, and the shuffled-pair control with the same seeds) ------
    runs: list[tuple[str, int, bool]] = [(f"aligned_seed{s}", s, False) for s in config.seeds]
    if config.shuffled_control:
        runs += [(f"shuffled_seed{s}", s, True) for s in config.seeds]
    exports: dict[str, Path] = {}
    training: dict[str, dict[str, Any]] = {}
    for name, seed, shuffled in runs:
        t0 = time.perf_counter()
        tcfg = train.TrainConfig(
            encoder=config.encoder,
            img_size=config.img_size,
            jitter_px=config.jitter_px,
            lora_last_n_blocks=config.lora_last_n_blocks,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=seed,
            output_dir=str(out / "train" / name),
            progress=progress,
        )
        data = ShuffledPairs(train_ds, seed=seed) if shuffled else train_ds
        logger.info("training %s (%d train / %d val pairs)", name, len(data), len(val_ds))
        result = train.fit(tcfg, data, val_ds)
        encoder = result.model.image_tower.encoder
        exports[name] = models.export(encoder, out / "exports" / name)["timm"]
        if not shuffled:
            base_name = f"baseline_seed{seed}"
            exports[base_name] = models.export(
                _without_lora(encoder), out / "exports" / base_name, adapter=False
            )["timm"]
        curves = pl.save_training_curves(result.history, out / "train" / name / "curves.png")
        training[name] = _training_summary(result, curves)
        seconds[f"train_{name}"] = time.perf_counter() - t0

    # 3. evaluate on the held-out patients ------------------------------------------------
    t0 = time.perf_counter()
    # one label per role, one trained model per seed: mean ± sd is over trained models
    encoders: dict[str, list[str]] = {
        "baseline": [str(exports[f"baseline_seed{s}"]) for s in config.seeds]
    }
    if config.shuffled_control:
        encoders["shuffled control"] = [str(exports[f"shuffled_seed{s}"]) for s in config.seeds]
    encoders["aligned"] = [str(exports[f"aligned_seed{s}"]) for s in config.seeds]
    evaluation = bench.evaluate(
        pairs_dir,
        encoders,
        out=out / "eval",
        test_patients=list(config.test_patients),
        random_encoder=config.encoder,
        image_size=config.img_size,
        seeds=list(config.seeds),
        references=list(config.references),
        mil_epochs=config.mil_epochs,
        progress=progress,
    )
    seconds["evaluate"] = time.perf_counter() - t0

    report = Path(evaluation.report)
    _append_training_section(report, training)
    result = PipelineResult(
        out=out,
        pairs_dir=pairs_dir,
        report=report,
        exports=exports,
        training=training,
        seconds=seconds,
    )
    summary = {
        "config": config.to_dict(),
        "training": training,
        "exports": {k: str(v) for k, v in exports.items()},
        "report": str(report),
        "seconds": seconds,
    }
    (out / "pipeline.json").write_text(json.dumps(summary, indent=2, default=str))
    return result
