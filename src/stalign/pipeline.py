"""The end-to-end workflow: build pairs → align (LoRA, contrastive) → export → evaluate.

`run_pipeline` is what ``stalign demo`` (the README's main job) runs on the
bundled mouse olfactory bulb sections: train on one animal, evaluate on the other,
always against the encoder the alignment started from and a shuffled-pair control
(see ``SCIENCE-NOTES``: without pretrained weights the gain is small, so an honest
report needs several seeds, a control and simple baselines in the same run).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .datasets import example_manifest

if TYPE_CHECKING:  # pragma: no cover
    from .pairs import PairsParams
    from .train import TrainConfig

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

#: The demo's training settings (her2st patient C), by `TrainConfig` field: the default
#: of `PipelineConfig.train`. Fields not named keep TrainConfig's defaults.
DEMO_TRAIN: dict[str, Any] = {
    "target_transform": "none",
    "encoder": "efficientnet_lite0",
    "img_size": 112,
    "pretrained": True,
    "checkpoint_path": None,
    "augment": True,
    "jitter_px": 4,
    "color_jitter": 0.1,
    "lora_r": 8,
    "lora_alpha": 16.0,
    "lora_target_modules": None,
    "lora_last_n_blocks": 4,
    "temperature": 0.07,
    "learn_temperature": True,
    "soft_targets": False,
    "epochs": 100,
    "max_steps": 100,
    "batch_size": 32,
    "lr": 1e-3,
    "early_stopping_patience": None,
    "eval_every_steps": 25,
}
#: The demo's pairs settings, by `PairsParams` field: the default of `PipelineConfig.pairs`
#: (112 px at 1.4 µm/px ≈ 157 µm, the 100 µm spot and its surroundings).
DEMO_PAIRS: dict[str, Any] = {
    "mpp": 1.4,
    "size_px": 112,
    "gene_sets": "hallmark",
    "method": "score_genes",  # chosen on the inner split (benchmarks/targets)
    "rarefy_depth": None,
}
#: TrainConfig fields that run_pipeline sets for each run: not settings of the pipeline
_PER_RUN = {
    "seed": "seeds",
    "out": "run_pipeline(out)",
    "progress": "run_pipeline(progress=...)",
    "resume": "nothing: every run of the pipeline starts afresh",
}


def _owner_config(owner: type, settings: dict[str, Any], where: str) -> Any:
    """``owner(**settings)``; a name ``owner`` lacks (a renamed field) is a TypeError."""
    names = {f.name for f in dataclasses.fields(owner)}
    unknown = sorted(set(settings) - names)
    if unknown:
        msg = f"{where} names {unknown}, which {owner.__name__} does not have (renamed?)"
        raise TypeError(msg)
    return owner(**settings)


def _demo_train() -> Any:
    from .train import TrainConfig

    return _owner_config(TrainConfig, DEMO_TRAIN, "stalign.pipeline.DEMO_TRAIN")


def _demo_pairs() -> Any:
    from .pairs import PairsParams

    return _owner_config(PairsParams, DEMO_PAIRS, "stalign.pipeline.DEMO_PAIRS")


def _route(
    settings: dict[str, Any], own: set[str], owners: dict[str, type]
) -> dict[str, dict[str, Any]]:
    """Sort flat keywords by the config that owns them: ``{"own", "train", "pairs"}`` → settings.

    Raises
    ------
    TypeError
        A name no config has (with the closest names), one set per run, or one two
        owner configs share.
    """
    fields = {key: {f.name: f for f in dataclasses.fields(cls)} for key, cls in owners.items()}
    routed: dict[str, dict[str, Any]] = {"own": {}} | {key: {} for key in owners}
    for name, value in settings.items():
        holders = [key for key, names in fields.items() if name in names]
        if name in own:
            routed["own"][name] = value
        elif name in _PER_RUN and "train" in holders:
            msg = f"PipelineConfig: {name!r} is set for each run; use {_PER_RUN[name]}"
            raise TypeError(msg)
        elif len(holders) == 1:
            key = holders[0]
            if isinstance(value, tuple) and str(fields[key][name].type).startswith("list"):
                value = list(value)
            routed[key][name] = value
        elif holders:
            msg = (
                f"PipelineConfig: setting {name!r} is a field of {' and '.join(holders)}; "
                "pass it inside train= or pairs= instead"
            )
            raise TypeError(msg)
        else:
            close = difflib.get_close_matches(name, sorted(own.union(*fields.values())), n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            msg = (
                f"PipelineConfig got an unknown setting {name!r}{hint}: expected a field of "
                "PipelineConfig, TrainConfig or PairsParams"
            )
            raise TypeError(msg)
    return routed


@dataclass(frozen=True, init=False)
class PipelineConfig:
    """Settings of :func:`run_pipeline`; the defaults are the README's main job (her2st C).

    Composed of the owners' configs: ``train`` ([`TrainConfig`][stalign.train.TrainConfig],
    the alignment runs) and ``pairs`` ([`PairsParams`][stalign.pairs.PairsParams], the
    pairs build), plus the pipeline's own fields below. Their defaults are the demo's
    (`DEMO_TRAIN`, `DEMO_PAIRS`). A setting of ``train`` or ``pairs`` may also be given
    flat, by its field name, as the ``stalign demo`` flags do::

        PipelineConfig(lr=1e-4, max_steps=50, mpp=2.0)  # train.lr, train.max_steps, pairs.mpp
        PipelineConfig(train=TrainConfig(encoder="resnet10t"), seeds=(0,))

    Flat settings are applied on top of ``train`` / ``pairs`` (given, or the demo's); a
    name no config has is a ``TypeError``, and each value is validated by its owner's
    rules when the config is created. ``PipelineConfig.example("mob")`` gives the mouse
    olfactory bulb settings (split by animal).

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
        Planned by [`plan_split`][stalign.pairs.plan_split] (see `plan_sections`).
    normalization
        ``"encoder"``: the encoder's own pre-training mean/std (ImageNet for
        EfficientNet-Lite); ``"cohort"``: the training sections' colour statistics;
        ``"auto"``: ``"encoder"`` with pretrained weights or a checkpoint, else
        ``"cohort"``. It replaces ``train.normalization``.
    seeds
        One aligned model (and one shuffled control) per seed (``TrainConfig.seed``); the
        evaluation's stochastic parts (random encoders, MIL) use the same seeds.
    shuffled_control
        Also train on image/pathway pairs shuffled across spots (the control whose
        result says how much of any gain comes from training alone).
    references
        Simple reference features evaluated in the same run (see
        [`evaluate`][stalign.bench.evaluate]; ``"library_size"`` is the sequencing-depth floor).
    random_encoders
        Architectures of the ``"random"`` reference rows (random init, e.g.
        "random EfficientNet-Lite0"); ``None``: ``train.encoder`` itself.
    mil_epochs
        Training epochs of the attention-MIL marker probe.
    workers
        Processes used to build the pairs.
    train
        The alignment runs' settings (default: `DEMO_TRAIN`: EfficientNet-Lite0 from its
        pretrained weights, LoRA on the last 4 stages, 100 steps of 32 pairs at
        lr 1e-3, 112 px). ``train.img_size`` is also the evaluation's input side;
        ``seed``, ``out`` and ``progress`` are set for each run, early stopping is off
        without a validation section.
    pairs
        The pairs build's settings (default: `DEMO_PAIRS`: 112 px at 1.4 µm/px, Hallmark
        pathways scored with ``score_genes``).
    """

    manifest: str = str(HER2ST_MANIFEST)
    train_patients: tuple[str, ...] | None = None
    test_patients: tuple[str, ...] | None = None
    train_samples: tuple[str, ...] | None = ("C2", "C3", "C4")
    test_samples: tuple[str, ...] | None = ("C5", "C6")
    val_samples: tuple[str, ...] | None = ("C4",)
    normalization: str = "auto"
    seeds: tuple[int, ...] = (0, 1, 2)
    shuffled_control: bool = True
    references: tuple[str, ...] = ("histogram", "pixels", "library_size", "random")
    random_encoders: tuple[str, ...] | None = ("efficientnet_lite0",)
    mil_epochs: int = 30
    workers: int = 1
    train: TrainConfig = field(default_factory=_demo_train)
    pairs: PairsParams = field(default_factory=_demo_pairs)

    def __init__(
        self,
        *,
        train: TrainConfig | None = None,
        pairs: PairsParams | None = None,
        **settings: Any,
    ) -> None:
        """Set the fields; route each flat setting to the config that owns it."""
        from .pairs import PairsParams
        from .train import TrainConfig

        composed = {"train": (train, TrainConfig), "pairs": (pairs, PairsParams)}
        own = {f.name for f in dataclasses.fields(self)} - set(composed)
        routed = _route(settings, own, {key: cls for key, (_, cls) in composed.items()})
        for f in dataclasses.fields(self):
            if f.name in composed:
                given, _ = composed[f.name]
                base = given if given is not None else f.default_factory()
                try:
                    value = dataclasses.replace(base, **routed[f.name])
                except ValueError as e:  # the owner's rules
                    msg = f"PipelineConfig: {e}"
                    raise ValueError(msg) from e
            else:
                value = routed["own"].get(f.name, f.default)
            object.__setattr__(self, f.name, value)
        self.__post_init__()

    def __getattr__(self, name: str) -> Any:
        """Read a composed setting flat (deprecated): ``config.lr`` is ``config.train.lr``."""
        for key in ("train", "pairs"):
            owner = self.__dict__.get(key)
            if owner is not None and name in {f.name for f in dataclasses.fields(owner)}:
                warnings.warn(
                    f"PipelineConfig.{name} is now PipelineConfig.{key}.{name}",
                    DeprecationWarning,
                    stacklevel=2,
                )
                return getattr(owner, name)
        msg = f"'PipelineConfig' object has no attribute {name!r}"
        raise AttributeError(msg)

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
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                if isinstance(value, str):
                    value = (value,)
                object.__setattr__(self, name, tuple(value))
        if self.normalization not in _NORMALIZATION:
            msg = (
                f"PipelineConfig.normalization: expected one of {_NORMALIZATION}, "
                f"got {self.normalization!r}"
            )
            raise ValueError(msg)
        train = dataclasses.replace(self.train, normalization=self.resolved_normalization)
        object.__setattr__(self, "train", train)
        self.validate()

    def validate(self) -> None:
        """Check the settings before any work; raise naming the first bad one.

        ``train`` and ``pairs`` were validated by their own rules when they were made.

        Raises
        ------
        ValueError
            A bad value or an unknown encoder name.
        FileNotFoundError
            ``manifest`` or ``train.checkpoint_path`` does not exist.
        ModuleNotFoundError
            ``pretrained`` weights that come from a package that is not installed.
        """

        def bad(name: str, value: Any, expected: str) -> None:
            msg = f"PipelineConfig.{name}: expected {expected}, got {value!r}"
            raise ValueError(msg)

        for name in ("mil_epochs", "workers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                bad(name, v, "a positive integer")
        if self.train.img_size is None:  # the evaluation's input side too
            bad("train.img_size", None, "a positive integer (also the evaluation's input side)")
        if self.train.resume is not None:
            bad("train.resume", self.train.resume, "None (every run starts afresh)")
        if not self.seeds:
            bad("seeds", self.seeds, "at least one seed")
        self._validate_split(bad)
        if not Path(self.manifest).is_file():
            msg = f"PipelineConfig.manifest: {self.manifest!r} does not exist (a sample CSV)"
            raise FileNotFoundError(msg)
        self._validate_encoders()

    def _validate_split(self, bad: Callable[[str, Any, str], None]) -> None:
        """Check the split: one kind, both sides, no id on both (`pairs.check_split_request`)."""
        from .pairs import check_split_request

        try:
            check_split_request(
                train_samples=self.train_samples,
                test_samples=self.test_samples,
                train_patients=self.train_patients,
                test_patients=self.test_patients,
            )
        except ValueError as e:
            msg = f"PipelineConfig.{e}"
            raise ValueError(msg) from e
        kind = "patients" if self.split_by == "patient" else "samples"
        train, test = getattr(self, f"train_{kind}"), getattr(self, f"test_{kind}")
        if not train or not test:
            bad(f"train_{kind}", train, f"non-empty train_{kind} and test_{kind}")

    def _validate_encoders(self) -> None:
        """Check that the checkpoint exists, encoder names are known, weights installed."""
        checkpoint = self.train.checkpoint_path
        if checkpoint is not None and not Path(checkpoint).exists():
            msg = (
                f"PipelineConfig.train.checkpoint_path: {checkpoint!r} does not exist "
                "(expected local encoder weights: .safetensors, .bin or .pt)"
            )
            raise FileNotFoundError(msg)
        from .models import get_encoder_config

        for name in (self.train.encoder, *(self.random_encoders or ())):
            get_encoder_config(name)  # ValueError naming an unknown encoder
        cfg = get_encoder_config(self.train.encoder)
        if self.train.pretrained and checkpoint is None and cfg.weights_package:
            from .models import packaged_weights

            spec = packaged_weights(cfg.name)
            if spec is not None:
                spec.file_path()  # ModuleNotFoundError: says which package to install

    @property
    def split_by(self) -> str:
        """``"patient"`` (``train_patients``/``test_patients``) or ``"sample"`` (sections)."""
        return "patient" if self.test_patients is not None else "sample"

    @property
    def resolved_normalization(self) -> str:
        """``"encoder"`` or ``"cohort"`` (``"auto"`` resolved)."""
        if self.normalization != "auto":
            return self.normalization
        uses_weights = self.train.pretrained or self.train.checkpoint_path is not None
        return "encoder" if uses_weights else "cohort"

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-serialisable dict (``train``, ``pairs`` nested)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("train", "pairs"):
                value = dataclasses.asdict(value)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def example_settings(name: str = "her2st") -> dict[str, Any]:
    """Return a bundled example's settings, flat, without validating them (imports no torch).

    The pipeline's own defaults, `DEMO_TRAIN`, `DEMO_PAIRS` and `EXAMPLES` ``[name]``:
    what ``stalign demo --help`` shows as defaults.
    """
    own = {
        f.name: f.default
        for f in dataclasses.fields(PipelineConfig)
        if f.default is not dataclasses.MISSING
    }
    return own | DEMO_TRAIN | DEMO_PAIRS | EXAMPLES[name]


def plan_sections(config: PipelineConfig) -> dict[str, list[str]]:
    """Split the manifest's sections into ``fit`` / ``val`` (training side) and ``test``.

    Planned by [`stalign.pairs.plan_split`][stalign.pairs.plan_split], as ``stalign
    train`` plans its split. Validation sections come from the training side only (an
    inner split by section), so nothing chosen during training ever looks at the test
    sections. With a split by patient the training side is every section of
    ``train_patients``; with a split by section it is ``train_samples``.

    Raises
    ------
    ValueError
        Patients or sections missing from the manifest, validation sections outside the
        training side, or no section left to train on.
    """
    from .pairs import plan_split, read_manifest

    rows = read_manifest(config.manifest, check_files=False)
    plan = plan_split(
        {row.sample_id: row.patient_id for row in rows},
        train_samples=config.train_samples,
        test_samples=config.test_samples,
        train_patients=config.train_patients,
        test_patients=config.test_patients,
        val_samples=config.val_samples,
        inner_validation=True,
        allow_patient_overlap=True,  # the inner split is by section, by design
        source=str(config.manifest),
    )
    return plan.as_dict()


def _check_encoder_loads(config: PipelineConfig) -> None:
    """Create the encoder once before any work: a bad checkpoint or no network fails now."""
    from . import models

    models.create_encoder(
        config.train.encoder,
        pretrained=config.train.pretrained,
        checkpoint_path=config.train.checkpoint_path,
        img_size=config.train.img_size,
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
    """Add the joint-space validation numbers of every training run to ``report``.

    The evaluation folder stays one signed set: the section, the curves and the HTML
    twin go in through `bench.amend_evaluation_outputs`, which re-signs ``outputs.json``.
    """
    from .bench import amend_evaluation_outputs, markdown_to_html

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
    files: dict[str, str | bytes] = {}
    for name, t in training.items():
        if t.get("curves_png"):
            rel = f"figures/curves_{name}.png"
            files[rel] = Path(t["curves_png"]).read_bytes()
            lines += [f"![{name} training curves]({rel})", ""]
    text = report.read_text(encoding="utf-8") + "\n".join(lines)
    amend_evaluation_outputs(report.parent, {**files, report.name: text}, command="stalign demo")
    # report.html follows the markdown it was made from (its images are in place now)
    html = markdown_to_html(text, root=report.parent)
    amend_evaluation_outputs(report.parent, {report.with_suffix(".html").name: html})


def pairs_params(config: PipelineConfig) -> PairsParams:
    """Return ``config.pairs`` (deprecated: read ``config.pairs``)."""
    warnings.warn(
        "stalign.pipeline.pairs_params(config) is now config.pairs",
        DeprecationWarning,
        stacklevel=2,
    )
    return config.pairs


def train_config(
    config: PipelineConfig,
    *,
    seed: int,
    out: str | os.PathLike | None,
    progress: bool = False,
    early_stopping: bool = True,
) -> TrainConfig:
    """Return the `stalign.train.TrainConfig` of one alignment run of ``config``.

    ``config.train`` with the run's ``seed``, ``out`` and ``progress``;
    ``early_stopping=False`` trains all epochs (there is no validation section).
    """
    changes: dict[str, Any] = {
        "seed": seed,
        "out": str(out) if out is not None else None,
        "progress": progress,
    }
    if not early_stopping:
        changes["early_stopping_patience"] = None
    return config.train.replace(**changes)


def _build_pairs(config: PipelineConfig, pairs_dir: Path, progress: bool) -> None:
    """Build the pairs store of ``config.pairs`` into ``pairs_dir`` (`pairs.build_pairs`)."""
    from . import pairs

    logger.info("building pairs from %s into %s", config.manifest, pairs_dir)
    pairs.build_pairs(
        config.manifest, pairs_dir, config.pairs, workers=config.workers, progress=progress
    )


def _export_run(result: Any, name: str, seed: int, shuffled: bool, folder: Path) -> dict[str, Path]:
    """Export a trained run and, for an aligned one, the encoder it started from.

    Returns ``{name: timm folder}``, plus ``baseline_seed<seed>`` (LoRA removed, the
    same normalisation) for an aligned run.
    """
    from . import models

    encoder = result.model.image_tower.encoder
    provenance = result.extra["meta"].get("provenance")  # training data and commit
    written = models.export(encoder, folder / name, provenance=provenance)
    exports = {name: written["timm"]}
    if not shuffled:
        base_name = f"baseline_seed{seed}"
        base = models.export(models.remove_lora(encoder), folder / base_name, adapter=False)
        exports[base_name] = base["timm"]
    return exports


def _align(
    config: PipelineConfig,
    pairs_dir: Path,
    sections: dict[str, list[str]],
    out: Path,
    *,
    progress: bool,
    seconds: dict[str, float],
) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """Train and export one aligned run per seed, and the shuffled-pair controls.

    Returns the exports (run name → timm folder, baselines included) and each run's
    training summary; the time of each run goes into ``seconds``.
    """
    from . import pairs, pl, train

    train_ds = pairs.PairsDataset(pairs_dir, samples=sections["fit"])
    val_ds = pairs.PairsDataset(pairs_dir, samples=sections["val"]) if sections["val"] else None
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
        exports |= _export_run(result, name, seed, shuffled, out / "exports")
        curves = pl.save_training_curves(result.history, out / "train" / name / "curves.png")
        training[name] = _training_summary(result, curves)
        seconds[f"train_{name}"] = time.perf_counter() - t0
    return exports, training


def _test_split(config: PipelineConfig) -> dict[str, list[str]]:
    """Return the evaluation's held-out side: ``test_patients`` or ``test_samples``."""
    if config.split_by == "patient":
        return {"test_patients": list(config.test_patients)}
    return {"test_samples": list(config.test_samples)}


def _evaluate(
    config: PipelineConfig, pairs_dir: Path, exports: dict[str, Path], out: Path, progress: bool
) -> Path:
    """Evaluate baseline, shuffled control and aligned exports on the test side; the report."""
    from . import bench

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
        out=out,
        **_test_split(config),
        random_encoder=list(config.random_encoders or (config.train.encoder,)),
        image_size=config.train.img_size,
        seeds=list(config.seeds),
        references=list(config.references),
        mil_epochs=config.mil_epochs,
        progress=progress,
    )
    return Path(evaluation.report)


def _log_plan(config: PipelineConfig, sections: dict[str, list[str]]) -> None:
    """Log the split, and that early stopping is off without a validation section."""
    if config.train.early_stopping_patience is not None and not sections["val"]:
        logger.warning(
            "no validation section among the training patients' %s: early stopping is off, "
            "every run trains all %d epochs",
            sections["fit"],
            config.train.epochs,
        )
    logger.info(
        "sections: fit %s, validate %s (training patients), test %s",
        sections["fit"],
        sections["val"],
        sections["test"],
    )


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
        (``report.md`` with tables and figures), ``pipeline.json`` (the settings, with
        ``train`` and ``pairs`` nested, the sections, training summaries, times).
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
    config = config or PipelineConfig()
    sections = plan_sections(config)
    _check_encoder_loads(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _log_plan(config, sections)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    pairs_dir = out / "pairs"
    _build_pairs(config, pairs_dir, progress)  # 1. curate
    seconds["build_pairs"] = time.perf_counter() - t0
    exports, training = _align(  # 2. align, with the shuffled-pair control
        config, pairs_dir, sections, out, progress=progress, seconds=seconds
    )
    t0 = time.perf_counter()
    report = _evaluate(config, pairs_dir, exports, out / "eval", progress)  # 3. held-out side
    seconds["evaluate"] = time.perf_counter() - t0
    _append_training_section(report, training, sections)
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
    return PipelineResult(
        out=out,
        pairs_dir=pairs_dir,
        report=report,
        exports=exports,
        training=training,
        seconds=seconds,
    )
