"""What `evaluate` runs: the settings, the reference feature sets and the compared rows.

* [`EvaluationSpec`][stalign.bench.EvaluationSpec] — every setting, validated once;
* [`REFERENCE_FEATURES`][stalign.bench.REFERENCE_FEATURES] — reference feature sets by name;
* `FeatureSet` — one group of rows in the report: a reference, or an encoder.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._features import color_histogram, downsampled_pixels, library_size, squidpy_features
from ._leakage import check_no_train_test_overlap
from ._probe import PROTOCOLS
from ._spot_table import PairsArrays

__all__ = [
    "PROBES",
    "REFERENCES",
    "REFERENCE_FEATURES",
    "EvaluationSpec",
    "FeatureSet",
    "Reference",
    "encoder_specs",
    "evaluation_spec",
    "parse_encoder_spec",
    "random_encoder_label",
]


PROBES = ("ridge", "ridge_cv", "mlp")


_UNIT = {"patient": "patient", "sample": "section"}


@dataclass(frozen=True)
class Reference:
    """A reference feature set of the benchmark.

    Exactly one way of computing it is given:

    Attributes
    ----------
    label
        Row label in the tables and report.
    patch_features
        ``(b, H, W, 3)`` uint8 → ``(b, d)``, row-wise: streamed over the store in
        chunks and cached.
    spot_features
        `PairsArrays` (without patches) → ``(n, d)``: features of the spot
        table itself (e.g. of its counts), computed in memory.
    random_encoder
        The ``random_encoder`` with new random weights per seed (an encoder row).
    """

    label: str
    patch_features: Callable[[np.ndarray], np.ndarray] | None = None
    spot_features: Callable[[PairsArrays], np.ndarray] | None = None
    random_encoder: bool = False


#: Reference feature sets by name (``references=`` / ``--references``); add one here.
REFERENCE_FEATURES: dict[str, Reference] = {
    "histogram": Reference("colour histogram", patch_features=color_histogram),
    "pixels": Reference("8×8 pixels", patch_features=functools.partial(downsampled_pixels, size=8)),
    "squidpy": Reference("squidpy features", patch_features=squidpy_features),
    # log total counts only: the sequencing-depth floor of the HEST panel
    "library_size": Reference("library size only", spot_features=lambda d: library_size(d.counts)),
    "random": Reference("random-weights encoder", random_encoder=True),
}


REFERENCES = tuple(REFERENCE_FEATURES)


def random_encoder_label(name: str) -> str:
    """Report row of a random-init encoder, named after it: ``"random ViT-Tiny"``."""
    from ..models import get_encoder_config

    try:
        return f"random {get_encoder_config(name).label}"
    except ValueError:  # not a registered or timm name: it fails later, with its own message
        return f"random {name}"


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


def encoder_specs(encoders: Sequence[str] | Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``"LABEL=SOURCE"`` strings or a label → source mapping as ``(label, source)`` pairs."""
    if isinstance(encoders, Mapping):
        return [(str(k), v) for k, v in encoders.items()]
    return [e if isinstance(e, tuple) else parse_encoder_spec(e) for e in encoders]


@dataclass
class EvaluationSpec:
    """Every setting of [`evaluate`][stalign.bench.evaluate], with its default; validated.

    The one source of the defaults: `evaluate` takes this object and/or keyword
    overrides of its fields, and ``stalign evaluate``'s flags are unset unless given
    (their help shows these defaults).

    Attributes
    ----------
    pairs_dir
        A pairs store written by ``stalign build-pairs``.
    encoders
        ``"LABEL=SOURCE"`` strings (or a mapping label → source / ``Encoder``), kept as
        a list of ``(label, source)``. SOURCE is a ``stalign export`` timm directory, a
        training run, or a registry / timm name created with random weights
        (``pretrained=False``: nothing is downloaded). A list of sources under one label
        holds one trained model per seed (seed ``i`` uses source ``i``), so its mean ± sd
        is over independently trained models. Order matters for the figures: the first
        is the baseline, the last the aligned model.
    out
        Output directory: ``report.md``, ``summary.csv``, ``runs.csv``,
        ``per_target_*.csv``, ``results.json``, ``figures/*.png``, published as one
        set with the manifest ``outputs.json`` written last
        ([`check_evaluation_outputs`][stalign.bench.check_evaluation_outputs] checks
        it); the run holds the folder's lock (a second evaluate on it is refused).
    test_patients
        Fixed test patients (``None``: leave one patient out over all patients).
    test_samples
        Fixed test sections (``sample_id``), instead of ``test_patients``: a split by
        section. Give one of the two, not both.
    split_by
        ``"patient"`` or ``"sample"`` (section): the unit of the folds. ``None``:
        ``"sample"`` with ``test_samples``, else ``"patient"`` (the resolved unit is
        `split_level`); ``"sample"`` without ``test_samples`` is leave one section out.
    references
        Reference feature sets, names of [`REFERENCE_FEATURES`][stalign.bench.REFERENCE_FEATURES]:
        ``"histogram"``, ``"pixels"``, ``"squidpy"``, ``"library_size"`` (log total
        counts only: the sequencing-depth floor) and ``"random"`` (``random_encoder``
        with random weights).
    random_encoder
        Registry name(s) of the random-weights reference(s), kept as a tuple; each is a
        row named after the architecture (``"random ViT-Tiny"``).
    image_size
        Input side (px) for encoders created by name (``None``: their config's).
    seeds
        Seeds of the stochastic parts.
    probes
        Spot probes to run: any of ``"ridge"`` (HEST), ``"ridge_cv"``, ``"mlp"``.
    protocol
        Feature pipeline of the probes: ``"hest_robust"`` (HEST's, but columns constant
        on the training spots are dropped and test features clipped to their training
        range) or ``"hest"`` (HEST-Benchmark's exactly, comparable with published HEST
        numbers); see [`gene_prediction`][stalign.bench.gene_prediction].
    marker_genes
        Marker genes of the MIL tasks (``None``: the ``n_marker_genes`` most variable
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
    device
        Where encoders run: ``"auto"`` (CUDA if available; bf16 autocast there),
        ``"cpu"``, ``"cuda"``... ([`stalign.tl.iter_embeddings`][stalign.tl.iter_embeddings]).
    cache_dir
        Feature cache (``None``: ``out/cache``, see `feature_cache_dir`); share it
        between runs on the same store, or fill it in parallel first with
        [`embed_features`][stalign.bench.embed_features].
    chunk_rows
        Patches read and featurised at once (bounds memory).
    threads
        Cap BLAS/OpenMP and torch threads during the run (restored afterwards);
        ``1`` is several times faster on a small, shared CPU machine where the
        probes' small matrices oversubscribe the cores. ``None`` leaves them alone.
    progress
        Progress bars.
    allow_patient_overlap
        Evaluate even when an export records training or validation on a test patient
        (or, split by section, a test section); refused by default, before any work.
    """

    pairs_dir: Path
    encoders: Sequence[Any] | Mapping[str, Any]
    out: Path
    test_patients: Sequence[str] | None = None
    test_samples: Sequence[str] | None = None
    split_by: str | None = None
    references: Sequence[str] = REFERENCES
    random_encoder: str | Sequence[str] = "vit_tiny_patch16_224"
    image_size: int | None = None
    seeds: Sequence[int] = (0, 1, 2)
    probes: Sequence[str] = ("ridge",)
    protocol: str = "hest_robust"
    marker_genes: Sequence[str] | None = None
    n_marker_genes: int = 2
    n_marker_pathways: int = 2
    mil_epochs: int = 30
    region_window: int = 5
    n_maps: int = 3
    max_k: int = 50
    batch_size: int = 64
    device: str = "auto"
    cache_dir: Path | None = None
    chunk_rows: int = 1024
    threads: int | None = None
    progress: bool = True
    allow_patient_overlap: bool = False

    def __post_init__(self) -> None:
        # only idempotent conversions: dataclasses.replace(spec, ...) gives the same spec
        # as building it from the changed arguments (derived values are properties)
        self.encoders = encoder_specs(self.encoders)
        if isinstance(self.random_encoder, str):
            self.random_encoder = (self.random_encoder,)
        self.random_encoder = tuple(self.random_encoder)
        self.pairs_dir, self.out = Path(self.pairs_dir), Path(self.out)
        self.cache_dir = Path(self.cache_dir) if self.cache_dir else None
        unknown = [r for r in self.references if r not in REFERENCE_FEATURES]
        if unknown:
            msg = f"references {unknown} unknown; choose from {REFERENCES}"
            raise ValueError(msg)
        _check_encoder_names(self)
        labels = [lab for lab, _ in self.encoders]
        if len(set(labels)) != len(labels):
            msg = f"encoder labels must be unique, got {labels}"
            raise ValueError(msg)
        if not self.seeds:
            msg = "seeds must name at least one seed"
            raise ValueError(msg)
        bad = [q for q in self.probes if q not in PROBES]
        if bad or "ridge" not in self.probes:
            msg = (
                "probes must include 'ridge' and be among ridge, ridge_cv, mlp; "
                f"got {list(self.probes)}"
            )
            raise ValueError(msg)
        split_level = self.split_level  # checks split_by against the fixed test set
        if self.protocol not in PROTOCOLS:
            msg = f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}"
            raise ValueError(msg)
        for name in ("batch_size", "threads"):
            value = getattr(self, name)
            if value is not None and int(value) <= 0:
                msg = f"{name} must be a positive integer, got {value!r}"
                raise ValueError(msg)
        check_no_train_test_overlap(
            dict(self.encoders),
            split_by=split_level,
            test_groups=self.test_groups,
            allow_overlap=self.allow_patient_overlap,
        )

    @property
    def split_level(self) -> str:
        """The unit of the folds: ``"patient"`` or ``"sample"`` (resolved from `split_by`)."""
        return _split_by(self.split_by, self.test_patients, self.test_samples)

    @property
    def feature_cache_dir(self) -> Path:
        """Where the feature cache lives: ``cache_dir``, else ``out/cache``."""
        return self.cache_dir if self.cache_dir is not None else self.out / "cache"

    @property
    def test_groups(self) -> list[str] | None:
        """The fixed test patients or sections (``None``: leave one group out)."""
        test = self.test_samples if self.split_level == "sample" else self.test_patients
        return None if test is None else [str(t) for t in test]

    @property
    def encoder_labels(self) -> list[str]:
        """Labels of the compared encoders, in order (first baseline, last aligned)."""
        return [lab for lab, _ in self.encoders]

    def feature_sets(self) -> list[FeatureSet]:
        """Return the feature sets in report order: references, then encoders."""
        return [
            *self.reference_sets(),
            *(FeatureSet(lab, "encoder", s) for lab, s in self.encoders),
        ]

    def reference_sets(self) -> list[FeatureSet]:
        """Return the reference rows; ``"random"`` gives one row per ``random_encoder``."""
        sets = []
        for r in self.references:
            if REFERENCE_FEATURES[r].random_encoder:
                sets += [
                    FeatureSet(random_encoder_label(name), "encoder", name)
                    for name in self.random_encoder
                ]
            else:
                sets.append(FeatureSet(REFERENCE_FEATURES[r].label, "reference", r))
        return sets


def evaluation_spec(spec: EvaluationSpec | None = None, **changes: Any) -> EvaluationSpec:
    """``spec`` with ``changes`` to its fields, or a new `EvaluationSpec` of ``changes``.

    Unknown names are refused with the list of fields; without ``spec``, ``pairs_dir``,
    ``encoders`` and ``out`` are required.
    """
    fields = [f.name for f in dataclasses.fields(EvaluationSpec)]
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        msg = f"evaluate: unknown setting(s) {unknown}; EvaluationSpec's fields are {fields}"
        raise TypeError(msg)
    if spec is not None:
        return dataclasses.replace(spec, **changes)
    missing = [k for k in ("pairs_dir", "encoders", "out") if k not in changes]
    if missing:
        msg = f"evaluate: {', '.join(missing)} required (or spec=EvaluationSpec(...))"
        raise TypeError(msg)
    return EvaluationSpec(**changes)


def _check_encoder_names(spec: EvaluationSpec) -> None:
    """Refuse an encoder name that is neither a path, a registry nor a timm name, up front."""
    from ..models import get_encoder_config

    named = [
        (label, src)
        for label, source in spec.encoders
        for src in (source if isinstance(source, list | tuple) else [source])
        if isinstance(src, str) and not os.path.exists(src)
    ]
    if "random" in spec.references:
        named += [("random", name) for name in spec.random_encoder]
    for label, name in named:
        try:
            get_encoder_config(name)
        except (ValueError, FileNotFoundError) as e:
            msg = f"encoder {label}={name}: {e}"
            raise ValueError(msg) from None


def _split_by(
    split_by: str | None, test_patients: Sequence[str] | None, test_samples: Sequence[str] | None
) -> str:
    """Resolve the split level: ``"sample"`` (section) with ``test_samples``, else patient."""
    if test_patients is not None and test_samples is not None:
        msg = "give test_patients or test_samples (a split by patient or by section), not both"
        raise ValueError(msg)
    for name, value in (("test_patients", test_patients), ("test_samples", test_samples)):
        if isinstance(value, str):
            msg = f"{name} must be a list of ids, got the string {value!r}"
            raise TypeError(msg)
    inferred = "sample" if test_samples is not None else "patient"
    if split_by is None:
        return inferred
    if split_by not in ("patient", "sample"):
        msg = f"split_by must be 'patient' or 'sample' (section), got {split_by!r}"
        raise ValueError(msg)
    given = test_samples if split_by == "patient" else test_patients
    if given is not None:
        msg = f"split_by={split_by!r} does not match the fixed test set given ({inferred}s)"
        raise ValueError(msg)
    return split_by


@dataclass(frozen=True)
class FeatureSet:
    """One group of rows in the report: a reference, or an encoder (source per seed)."""

    label: str
    kind: str  # "reference" | "encoder"
    source: Any

    def source_at(self, seed_index: int) -> Any:
        """Return the source used at seed number ``seed_index`` (lists hold one per seed)."""
        if isinstance(self.source, list | tuple):
            return self.source[seed_index % len(self.source)]
        return self.source

    @property
    def stochastic(self) -> bool:
        """Whether the features change with the seed (random init, one model per seed)."""
        if self.kind == "reference":
            return False
        if isinstance(self.source, list | tuple):
            return True
        return isinstance(self.source, str) and not Path(self.source).is_dir()
