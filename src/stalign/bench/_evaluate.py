"""``stalign evaluate``: baseline vs aligned encoders on one pairs store, with a report.

The run is split by level, as HEST's benchmark is:

* [`EvaluationSpec`][stalign.bench.EvaluationSpec] — what to run (validated once);
* [`embed_features`][stalign.bench.embed_features] — every image feature set computed once into the
  `FeatureCache` (streamed chunk by chunk, shardable);
* `_split_scores` — one probe at one seed on one feature matrix (the probes
  run their patient folds inside);
* `_score_seed` / `_score_feature_set` — the seeds of one feature set;
* `_score_grid` — feature sets × tasks;
* `_report` — tables, figures and ``report.md``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._cache import FeatureCache, FeatureSource
from ._depth_readout import depth_adjusted
from ._features import color_histogram, downsampled_pixels, library_size, squidpy_features
from ._leakage import check_no_train_test_overlap
from ._mil import marker_prediction
from ._probe import PROTOCOLS, ProbeResult, gene_prediction, pathway_prediction
from ._report import DEPTH_METRIC, MapSection
from ._retrieval import retrieval
from ._tasks import MarkerTask, bags_from_task, region_tasks

__all__ = [
    "EvaluationResult",
    "EvaluationSpec",
    "embed_features",
    "evaluate",
    "load_pairs_arrays",
    "parse_encoder_spec",
]

logger = logging.getLogger(__name__)

PROBES = ("ridge", "ridge_cv", "mlp")
_UNIT = {"patient": "patient", "sample": "section"}


@dataclass
class PairsArrays:
    """Everything the benchmark needs from a pairs store, in one row order.

    ``patches`` is ``None`` when loaded without them (the benchmark streams patches
    through its feature cache instead of holding them).
    """

    patches: np.ndarray | None
    counts: Any  # scipy.sparse csr (n, genes)
    gene_names: list[str]
    pathways: pd.DataFrame
    obs: pd.DataFrame  # sample_id, patient_id, barcode
    coords: np.ndarray


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


# --------------------------------------------------------------------------------------
# the store


def _pairs_table(ds: Any, root: str | os.PathLike, *, patches: bool) -> PairsArrays:
    """Read counts (joined on barcodes), pathway scores and spot centres in ``ds``'s order."""
    import anndata as ad
    import scipy.sparse as sp

    obs = ds.obs[["sample_id", "patient_id", "barcode"]].reset_index(drop=True)
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
        patches=np.stack([ds.read_patch(i) for i in range(len(ds))]) if patches else None,
        counts=counts,
        gene_names=[str(g) for g in genes],
        pathways=pd.DataFrame(ds.pathways, columns=ds.pathway_names),
        obs=obs,
        coords=np.vstack(coords),
    )


def load_pairs_arrays(
    root: str | os.PathLike, *, samples: Sequence[str] | None = None, patches: bool = True
) -> PairsArrays:
    """Read patches, counts, pathway scores and spot centres of a pairs store.

    Rows follow `stalign.pairs.PairsDataset` (sample by sample); counts are
    joined on barcodes, never on row position. Genes are those common to all samples.
    ``patches=False`` leaves the patches on disk (``PairsArrays.patches`` is ``None``).
    """
    from ..pairs import PairsDataset

    return _pairs_table(PairsDataset(root, samples=samples), root, patches=patches)


OTHER_COUNTS = "__other_genes__"  # column of the remaining genes' counts per spot


@dataclass
class _SampleFile:
    """One sample's ``pairs.h5ad`` opened with h5py: names, and counts read on demand.

    Reading ``X`` (and ``obsm/spatial``) element by element instead of
    ``anndata.read_h5ad`` keeps the heap flat when hundreds of samples are read several
    times; the matrices are the same objects ``read_h5ad`` would build.
    """

    path: Path
    rows: np.ndarray  # row of each requested barcode, in the dataset's order
    var_names: pd.Index

    @classmethod
    def open(cls, ds: Any, root: Path, sid: str) -> _SampleFile:
        import h5py
        from anndata.io import read_elem

        entry = next(s for s in ds.index_json["samples"] if s["sample_id"] == sid)
        path = Path(root) / entry["path"] / "pairs.h5ad"
        with h5py.File(path, "r") as f:
            obs_names = read_elem(f["obs"][f["obs"].attrs["_index"]])
            var_names = read_elem(f["var"][f["var"].attrs["_index"]])
        bc = ds.obs.loc[ds.obs["sample_id"] == sid, "barcode"].to_numpy()
        rows = pd.Index(np.asarray(obs_names).astype(str)).get_indexer(bc)
        return cls(path, rows, pd.Index(np.asarray(var_names).astype(str)))

    def read_x(self):
        """Read the whole stored counts matrix (all rows and genes), as ``read_h5ad`` does."""
        import h5py
        from anndata.io import read_elem

        with h5py.File(self.path, "r") as f:
            return read_elem(f["X"])

    def subset(self, X: Any, genes: Sequence[str]):
        """Barcodes' rows and ``genes``' columns of ``X``, indexed as anndata's views do."""
        cols = self.var_names.get_indexer(list(genes))
        if hasattr(X, "toarray"):  # anndata's sparse subset: rows as a column vector
            return X[self.rows.reshape(-1, 1), cols]
        return X[np.ix_(self.rows, cols)]

    def counts(self, genes: Sequence[str]):
        """Read the barcodes' rows and ``genes``' columns of the counts (one file read)."""
        return self.subset(self.read_x(), genes)

    def coords(self) -> np.ndarray:
        """Spot centres (``obsm["spatial"]``) of the barcodes' rows, float64."""
        import h5py
        from anndata.io import read_elem

        with h5py.File(self.path, "r") as f:
            return np.asarray(read_elem(f["obsm"]["spatial"])[self.rows], dtype=float)


def _row_blocks(X, rows: int = 512):
    """Dense float64 row blocks of a (sparse) matrix."""
    for start in range(0, X.shape[0], rows):
        block = X[start : start + rows]
        yield np.asarray(block.toarray() if hasattr(block, "toarray") else block, np.float64)


def _streamed_panel(ds: Any, root: Path, genes: list[str], n_genes: int = 50) -> list[str]:
    """Choose the HEST panel (`hest_gene_panel`), reading one sample at a time.

    Three passes (detection, mean, variance of ``log1p``) accumulate row by row, which
    is the order numpy's column reductions use, so the variances, and the panel, are
    bit-identical to the in-memory rule.
    """
    files = [_SampleFile.open(ds, root, sid) for sid in dict.fromkeys(ds.obs["sample_id"])]
    n = len(ds.obs)
    detected = np.zeros(len(genes))
    for file in files:
        X = file.counts(genes)
        if (X.min() if hasattr(X, "toarray") else np.nanmin(X)) < 0:
            msg = f"{file.path}: counts must be non-negative raw counts"
            raise ValueError(msg)
        detected += np.asarray((X > 0).sum(axis=0), dtype=np.float64).ravel()
    keep = np.flatnonzero(detected / n >= 0.1)
    if keep.size == 0:
        msg = f"no gene is detected in >= 10% of the {n} spots among {len(genes)} genes"
        raise ValueError(msg)
    kept = [genes[i] for i in keep]
    total = np.zeros(keep.size)
    for file in files:
        for block in _row_blocks(file.counts(kept)):
            total = np.add.reduce(np.vstack([total, np.log1p(block)]), axis=0)
    mean = total / n
    sq = np.zeros(keep.size)
    for file in files:
        for block in _row_blocks(file.counts(kept)):
            d = np.log1p(block) - mean
            sq = np.add.reduce(np.vstack([sq, d * d]), axis=0)
    order = np.argsort(-(sq / n), kind="stable")
    return [kept[i] for i in order[:n_genes]]


def _spot_table(
    ds: Any, root: str | os.PathLike, marker_genes: Sequence[str] | None
) -> tuple[PairsArrays, list[str]]:
    """Spot table with only the counts the benchmark uses, and the HEST gene panel.

    Counts keep the panel and marker genes plus one column holding each spot's other
    counts (``OTHER_COUNTS``), so library sizes stay exact (integer counts sum exactly
    in float64) while memory is ``n × (panel + 1)`` instead of ``n × genes``. Samples are
    read one at a time.
    """
    import scipy.sparse as sp

    root = Path(root)
    obs = ds.obs[["sample_id", "patient_id", "barcode"]].reset_index(drop=True)
    files = [_SampleFile.open(ds, root, sid) for sid in dict.fromkeys(obs["sample_id"])]
    genes: list[str] | None = None
    for file in files:  # genes common to all samples, in the first sample's order
        names = list(file.var_names)
        genes = names if genes is None else [g for g in genes if g in set(names)]
    if not genes:
        msg = f"the samples of {root} share no gene"
        raise ValueError(msg)
    panel = _streamed_panel(ds, root, genes)
    wanted = set(panel) | set(marker_genes or ())
    used = [g for g in genes if g in wanted]
    parts, coords = [], []
    for file in files:
        X = file.read_x()  # one read for both subsets
        every = sp.csr_matrix(file.subset(X, genes), dtype=np.float64)
        some = sp.csr_matrix(file.subset(X, used), dtype=np.float64)
        del X
        other = np.asarray(every.sum(axis=1)).ravel() - np.asarray(some.sum(axis=1)).ravel()
        del every
        parts.append(sp.hstack([some, sp.csr_matrix(other[:, None])]).tocsr())
        coords.append(file.coords())
    data = PairsArrays(
        patches=None,
        counts=sp.vstack(parts).tocsr(),
        gene_names=[*used, OTHER_COUNTS],
        pathways=pd.DataFrame(ds.pathways, columns=ds.pathway_names),
        obs=obs,
        coords=np.vstack(coords),
    )
    return data, panel


# --------------------------------------------------------------------------------------
# spec


@dataclass
class EvaluationSpec:
    """What [`evaluate`][stalign.bench.evaluate] runs; see its docstring for every field.

    ``encoders`` is a list of ``(label, source)`` (``"LABEL=SOURCE"`` strings and a
    label → source mapping are converted); a source is an export / training
    directory, a registry name (random weights), a module, or a list of those (one
    trained model per seed). Validated on creation.
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
    progress: bool = True
    allow_patient_overlap: bool = False

    def __post_init__(self) -> None:
        self.encoders = encoder_specs(self.encoders)
        if isinstance(self.random_encoder, str):
            self.random_encoder = (self.random_encoder,)
        self.random_encoder = tuple(self.random_encoder)
        self.pairs_dir, self.out = Path(self.pairs_dir), Path(self.out)
        self.cache_dir = Path(self.cache_dir) if self.cache_dir else self.out / "cache"
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
        self.split_by = _split_by(self.split_by, self.test_patients, self.test_samples)
        if self.protocol not in PROTOCOLS:
            msg = f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}"
            raise ValueError(msg)
        if int(self.batch_size) <= 0:
            msg = f"batch_size must be a positive integer, got {self.batch_size!r}"
            raise ValueError(msg)
        check_no_train_test_overlap(
            dict(self.encoders),
            split_by=self.split_by,
            test_groups=self.test_groups,
            allow_overlap=self.allow_patient_overlap,
        )

    @property
    def test_groups(self) -> list[str] | None:
        """The fixed test patients or sections (``None``: leave one group out)."""
        test = self.test_samples if self.split_by == "sample" else self.test_patients
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


# --------------------------------------------------------------------------------------
# features: one FeatureSource per (feature set, seed), cached


def _files_digest(path: Path) -> str:
    """SHA-256 over the files of an export directory (names and contents)."""
    files = sorted(q for q in path.iterdir() if q.is_file())
    stats = tuple((q.name, q.stat().st_size, q.stat().st_mtime_ns) for q in files)
    return _files_digest_cached(str(path), stats)


@functools.lru_cache(maxsize=64)
def _files_digest_cached(path: str, stats: tuple) -> str:
    from ..pairs._store import file_sha256

    h = hashlib.sha256()
    for name, _, _ in stats:
        h.update(f"{name}:{file_sha256(Path(path) / name)}".encode())
    return h.hexdigest()


def _encoder_key(source: Any, spec: EvaluationSpec, seed: int) -> dict[str, Any]:
    """Identity of an encoder's features: its weights and the embedding arithmetic.

    The weights (`_weights_key`) and the arithmetic the embedding loop uses on
    ``spec.device`` (bf16 autocast on CUDA, float32 on the CPU).
    """
    from ..tl import embedding_precision

    return {**_weights_key(source, spec, seed), "precision": embedding_precision(spec.device)}


def _weights_key(source: Any, spec: EvaluationSpec, seed: int) -> dict[str, Any]:
    """Weights digest of an encoder, or its random-init name, seed and input size."""
    import timm
    import torch

    from ..tl import encoder_digest

    if isinstance(source, torch.nn.Module):
        return {"module_sha256": encoder_digest(source)}
    path = Path(str(source))
    if path.is_dir() and (path / "stalign.json").is_file():
        return {"export_sha256": _files_digest(path)}
    if path.is_dir():  # a training run: digest of the image tower it resolves to
        from ..tl import resolve_encoder

        return {"module_sha256": encoder_digest(resolve_encoder(path)[0])}
    return {
        "random_init": str(source),
        "seed": int(seed),
        "image_size": spec.image_size,
        "versions": {"timm": timm.__version__, "torch": torch.__version__},
    }


def _encoder_chunk_fn(source: Any, spec: EvaluationSpec, seed: int) -> Callable:
    """Load the encoder once; return chunk → embeddings through the one embedding loop."""
    from ..tl import iter_embeddings, resolve_encoder

    module, _, input_px = resolve_encoder(source, image_size=spec.image_size, seed=seed)
    bs = int(spec.batch_size)

    def embed_chunk(chunk: np.ndarray) -> np.ndarray:
        batches = (chunk[s : s + bs] for s in range(0, chunk.shape[0], bs))
        out = list(iter_embeddings(module, batches, device=spec.device, image_size=input_px))
        return np.concatenate(out)

    return embed_chunk


def _code_digest(fn: Callable) -> str:
    """Hash of a feature function's source and bound arguments (cache invalidation)."""
    base = fn.func if isinstance(fn, functools.partial) else fn
    bound = fn.keywords if isinstance(fn, functools.partial) else {}
    text = inspect.getsource(base) + json.dumps(bound, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _feature_source(fs: FeatureSet, spec: EvaluationSpec, seed_index: int) -> FeatureSource:
    seed = int(spec.seeds[seed_index])
    if fs.kind == "reference":
        fn = REFERENCE_FEATURES[fs.source].patch_features
        key = {"reference": fs.source, "code_sha256": _code_digest(fn)}
        return FeatureSource(fs.label, key, lambda: fn)
    src = fs.source_at(seed_index)
    key = _encoder_key(src, spec, seed)
    return FeatureSource(fs.label, key, lambda: _encoder_chunk_fn(src, spec, seed))


def _seed_indices(fs: FeatureSet, spec: EvaluationSpec) -> list[int]:
    """Seed numbers whose features differ (all seeds when stochastic, else the first)."""
    return list(range(len(spec.seeds))) if fs.stochastic else [0]


def _cached(fs: FeatureSet) -> bool:
    return fs.kind == "encoder" or REFERENCE_FEATURES[fs.source].patch_features is not None


def embed_features(
    spec: EvaluationSpec,
    dataset: Any,
    *,
    shard: tuple[int, int] | None = None,
) -> FeatureCache:
    """Compute every image feature set of ``spec`` into its cache (resumable).

    Parameters
    ----------
    spec
        The evaluation.
    dataset
        The store as a [`stalign.pairs.PairsDataset`][stalign.pairs._dataset.PairsDataset].
    shard
        ``(i, n)``: only samples ``i, i + n, ...`` (array jobs filling one cache in
        parallel; run `evaluate` afterwards to score). Default: all samples, or,
        inside an initialised ``torch.distributed`` group (``torchrun``), this rank's
        share followed by a barrier.

    Returns
    -------
    FeatureCache
        The `FeatureCache`.
    """
    cache = FeatureCache(spec.cache_dir, dataset, chunk_rows=spec.chunk_rows)
    samples = cache.samples
    rank, world = _distributed_rank()
    if shard is None and world > 1:
        shard = (rank, world)
    if shard is not None:
        i, n = shard
        if not (0 <= i < n):
            msg = f"shard must be I/N with 0 <= I < N, got {i}/{n}"
            raise ValueError(msg)
        samples = samples[i::n]
    for fs in spec.feature_sets():
        if not _cached(fs):
            continue
        for si in _seed_indices(fs, spec):
            cache.fill(_feature_source(fs, spec, si), samples=samples, progress=spec.progress)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank's samples are cached before anyone reads them
    return cache


def _distributed_rank() -> tuple[int, int]:
    """``(rank, world size)`` of an initialised ``torch.distributed`` group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _features(fs: FeatureSet, seed_index: int, ctx: _Context) -> np.ndarray:
    if not _cached(fs):
        return np.asarray(REFERENCE_FEATURES[fs.source].spot_features(ctx.data), np.float32)
    return ctx.cache.load(_feature_source(fs, ctx.spec, seed_index))


# --------------------------------------------------------------------------------------
# tasks built once from the measured data


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
        return self.samples if self.spec.split_by == "sample" else self.patients

    @functools.cached_property
    def log_depth(self) -> np.ndarray:
        """Log library size of each spot (all genes: the store keeps the others' total)."""
        from ..pp import log_depth

        return log_depth(self.data.counts)


def _marker_task(data: PairsArrays, spec: EvaluationSpec, panel: Sequence[str]) -> MarkerTask:
    """Region tasks; default targets are balanced (both classes >= 20 %) in every group.

    A group is a patient, or a section with ``split_by="sample"``. A target whose label
    follows the group (a batch effect) cannot be learned across groups and would leave
    a fold with one class, so it is passed over.
    """
    marker_genes = spec.marker_genes
    genes = list(marker_genes) if marker_genes is not None else list(panel)
    pw = list(data.pathways.var(axis=0).sort_values(ascending=False).index)
    full = region_tasks(
        data.coords,
        data.obs["sample_id"].to_numpy(str),
        data.obs["patient_id"].to_numpy(str),
        counts=data.counts,
        gene_names=data.gene_names,
        genes=genes,
        pathway_scores=data.pathways,
        pathways=pw,
        window=spec.region_window,
    )
    unit = "sample_id" if spec.split_by == "sample" else "patient_id"
    frac = full.labels.groupby(full.bag_obs[unit].to_numpy()).mean()
    ok = ((frac >= 0.2) & (frac <= 0.8)).all(axis=0)
    keep_g = [f"gene:{g}" for g in genes if marker_genes is not None or ok[f"gene:{g}"]]
    keep_g = keep_g if marker_genes is not None else keep_g[: spec.n_marker_genes]
    keep_p = [f"pathway:{q}" for q in pw if ok[f"pathway:{q}"]][: spec.n_marker_pathways]
    cols = keep_g + keep_p
    if not cols:
        msg = f"no marker target is balanced within every {_UNIT[spec.split_by]}"
        raise ValueError(msg)
    full.labels = full.labels[cols]
    full.values = full.values[cols]
    full.definition += (
        "; default targets: the most variable panel genes / pathways whose label is "
        f"balanced (20–80 % positive) within every {_UNIT[spec.split_by]}"
    )
    return full


def _build_marker_task(
    data: PairsArrays, spec: EvaluationSpec, panel: Sequence[str]
) -> MarkerTask | None:
    if spec.marker_genes is None and not spec.n_marker_genes and not spec.n_marker_pathways:
        return None
    try:
        return _marker_task(data, spec, panel)
    except ValueError as e:
        logger.warning("marker tasks skipped: %s", e)
        return None


# --------------------------------------------------------------------------------------
# scoring, one level per function


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
    unit = "sample_id" if ctx.spec.split_by == "sample" else "patient_id"
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
    curve: np.ndarray  # recall@k curve, mean over seeds
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
        curve=np.mean(curves, axis=0),
        chance_curve=chance,
    )


def _score_grid(ctx: _Context) -> dict[str, _FeatureSetScores]:
    """Every feature set (references, then encoders) × every task, in report order."""
    scores: dict[str, _FeatureSetScores] = {}
    for i, fs in enumerate(ctx.spec.feature_sets()):
        scores[fs.label] = _score_feature_set(fs, ctx, with_chance=i == 0)
        _release_freed_heap()  # its per-fold matrices
    return scores


# --------------------------------------------------------------------------------------
# main entry


def evaluate(
    pairs_dir: str | os.PathLike,
    encoders: Sequence[str] | Mapping[str, Any],
    *,
    out: str | os.PathLike,
    test_patients: Sequence[str] | None = None,
    test_samples: Sequence[str] | None = None,
    split_by: str | None = None,
    references: Sequence[str] = REFERENCES,
    random_encoder: str | Sequence[str] = "vit_tiny_patch16_224",
    image_size: int | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    probes: Sequence[str] = ("ridge",),
    protocol: str = "hest_robust",
    marker_genes: Sequence[str] | None = None,
    n_marker_genes: int = 2,
    n_marker_pathways: int = 2,
    mil_epochs: int = 30,
    region_window: int = 5,
    n_maps: int = 3,
    max_k: int = 50,
    batch_size: int = 64,
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    chunk_rows: int = 1024,
    threads: int | None = None,
    progress: bool = True,
    allow_patient_overlap: bool = False,
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

    Parameters
    ----------
    pairs_dir
        A pairs store written by ``stalign build-pairs``.
    encoders
        ``"LABEL=SOURCE"`` strings (or a mapping label → source / ``Encoder``). SOURCE
        is a ``stalign export`` timm directory, a training run, or a registry / timm
        name created with random weights (``pretrained=False``: nothing is
        downloaded). A list of sources under one label holds one trained model per
        seed (seed ``i`` uses source ``i``), so its mean ± sd is over independently
        trained models. Order matters for the figures: the first is the baseline,
        the last the aligned model.
    out
        Output directory: ``report.md``, ``summary.csv``, ``runs.csv``,
        ``per_target_*.csv``, ``results.json``, ``figures/*.png``, published as one
        set with the manifest ``outputs.json`` written last
        ([`check_evaluation_outputs`][stalign.bench.check_evaluation_outputs] checks
        it); the run holds the folder's lock (a second evaluate on it is refused).
    test_patients
        Fixed test patients (default: leave-one-patient-out over all patients).
    test_samples
        Fixed test sections (``sample_id``), instead of ``test_patients``: a split by
        section. Give one of the two, not both.
    split_by
        ``"patient"`` or ``"sample"`` (section): the unit of the folds. Default:
        ``"sample"`` with ``test_samples``, else ``"patient"``; ``"sample"`` without
        ``test_samples`` is leave one section out.
    references
        Reference feature sets, names of [`REFERENCE_FEATURES`][stalign.bench.REFERENCE_FEATURES]:
        ``"histogram"``, ``"pixels"``, ``"squidpy"``, ``"library_size"`` (log total
        counts only: the sequencing-depth floor) and ``"random"`` (``random_encoder``
        with random weights).
    random_encoder
        Registry name(s) of the random-weights reference(s); each is a row named
        after the architecture (``"random ViT-Tiny"``).
    image_size
        Input side (px) for encoders created by name (default: their config's).
    seeds
        Seeds of the stochastic parts.
    probes
        Spot probes to run: any of ``"ridge"`` (HEST), ``"ridge_cv"``, ``"mlp"``.
    protocol
        Feature pipeline of the probes: ``"hest_robust"`` (default: HEST's, but columns
        constant on the training spots are dropped and test features clipped to their
        training range) or ``"hest"`` (HEST-Benchmark's exactly, comparable with
        published HEST numbers); see [`gene_prediction`][stalign.bench.gene_prediction].
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
    device
        Where encoders run: ``"auto"`` (CUDA if available; bf16 autocast there),
        ``"cpu"``, ``"cuda"``... ([`stalign.tl.iter_embeddings`][stalign.tl.iter_embeddings]).
    cache_dir
        Feature cache (default ``out/cache``); share it between runs on the same
        store, or fill it in parallel first with [`embed_features`][stalign.bench.embed_features].
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

    Returns
    -------
    EvaluationResult | None
        [`EvaluationResult`][stalign.bench.EvaluationResult]; ``None`` on ranks other than 0 of a
        ``torch.distributed`` run (``torchrun -m stalign evaluate ...``: all ranks embed
        their share of the samples, rank 0 scores).
    """
    spec = EvaluationSpec(
        pairs_dir=Path(pairs_dir),
        encoders=encoders,
        out=Path(out),
        test_patients=test_patients,
        test_samples=test_samples,
        split_by=split_by,
        references=references,
        random_encoder=random_encoder,
        image_size=image_size,
        seeds=seeds,
        probes=probes,
        protocol=protocol,
        marker_genes=marker_genes,
        n_marker_genes=n_marker_genes,
        n_marker_pathways=n_marker_pathways,
        mil_epochs=mil_epochs,
        region_window=region_window,
        n_maps=n_maps,
        max_k=max_k,
        batch_size=batch_size,
        device=device,
        cache_dir=Path(cache_dir) if cache_dir is not None else None,
        chunk_rows=chunk_rows,
        progress=progress,
        allow_patient_overlap=allow_patient_overlap,
    )
    if threads is None:
        return run_evaluation(spec)
    from .._utils import limit_threads

    with limit_threads(threads):
        return run_evaluation(spec)


def encoder_specs(encoders: Sequence[str] | Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``"LABEL=SOURCE"`` strings or a label → source mapping as ``(label, source)`` pairs."""
    if isinstance(encoders, Mapping):
        return [(str(k), v) for k, v in encoders.items()]
    return [e if isinstance(e, tuple) else parse_encoder_spec(e) for e in encoders]


def _release_freed_heap() -> None:
    """Hand heap pages freed by the per-sample reads back to the OS (glibc only).

    glibc raises its mmap threshold after each large free, so later buffers of the
    same size (patch chunks, per-sample counts, per-fold matrices) land in the heap
    and, once freed, stay resident; the large matrices allocated later never reuse
    them. After the spot table alone this returns ~70 MiB at 100 k pairs. Elsewhere
    (no glibc) it does nothing.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        return


def _open_store(spec: EvaluationSpec) -> tuple[Any, PairsArrays, list[str]]:
    """Open the store: dataset, spot table (only the genes used) and HEST panel."""
    from ..pairs import PairsDataset

    ds = PairsDataset(spec.pairs_dir)
    data, panel = _spot_table(ds, spec.pairs_dir, spec.marker_genes)
    _release_freed_heap()
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
    unit = _UNIT[spec.split_by]
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
        "split_by": spec.split_by,
        "patients_on_both_sides": _shared_patients(ctx, test) if spec.split_by == "sample" else [],
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


def run_evaluation(spec: EvaluationSpec) -> EvaluationResult | None:
    """Run an `EvaluationSpec`: features → grid of scores → tables, figures, report.

    The run holds the lock of ``spec.out`` (a second evaluate on the same folder is
    refused up front) and publishes its outputs as one set (``_publish``): a run
    killed midway never leaves a folder mixing two runs' files. Under ``torchrun``
    every rank embeds its share of the samples and only rank 0 locks, scores and
    writes the report (the other ranks return ``None``).
    """
    from .._lock import folder_lock
    from ._publish import LOCK_FILE

    spec.out.mkdir(parents=True, exist_ok=True)
    if _distributed_rank()[0] != 0:
        ds, _, _ = _open_store(spec)
        embed_features(spec, ds)
        return None  # the other ranks embedded their share; rank 0 scores
    with folder_lock(spec.out / LOCK_FILE, command="stalign evaluate", what=str(spec.out)):
        return _run_locked(spec)


def _run_locked(spec: EvaluationSpec) -> EvaluationResult:
    from .._utils import progress_bar as tqdm
    from ._publish import publish, staging_dir
    from ._report import overall_verdict, summary_table

    ds, data, panel = _open_store(spec)
    cache = embed_features(spec, ds)
    _release_freed_heap()  # the patch chunks of the embedding loop
    ctx = _Context(
        spec=spec,
        data=data,
        cache=cache,
        panel=panel,
        compared=_baseline_and_aligned(spec),
        task=_build_marker_task(data, spec, panel),
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
