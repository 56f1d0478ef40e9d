"""Feature sets as cache entries: their identity (cache keys) and chunk functions.

One `FeatureSource` per (feature set, seed); [`embed_features`][stalign.bench.embed_features]
fills the `FeatureCache` with every image feature set of an evaluation.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._distributed import rank_and_world
from ._cache import FeatureCache, FeatureSource
from ._spec import REFERENCE_FEATURES, EvaluationSpec, FeatureSet

__all__ = ["embed_features"]


def _files_digest(path: Path) -> str:
    """SHA-256 over the files of an export directory (names and contents)."""
    files = sorted(q for q in path.iterdir() if q.is_file())
    stats = tuple((q.name, q.stat().st_size, q.stat().st_mtime_ns) for q in files)
    return _files_digest_cached(str(path), stats)


@functools.lru_cache(maxsize=64)
def _files_digest_cached(path: str, stats: tuple) -> str:
    from ..pairs import file_sha256

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
    cache = FeatureCache(spec.feature_cache_dir, dataset, chunk_rows=spec.chunk_rows)
    samples = cache.samples
    rank, world = rank_and_world()
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
