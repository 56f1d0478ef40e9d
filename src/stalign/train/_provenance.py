"""What a training run records of its data and code (``model.json``'s ``provenance``).

An export carries it on ([`stalign.models.export`][stalign.models.export]), so an
evaluation can tell whether its test patients were seen in training.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["run_provenance"]


def _unwrap(dataset: Any) -> list[Any]:
    """``dataset`` and the datasets it wraps (``.dataset``), outermost first."""
    chain = [dataset]
    while getattr(chain[-1], "dataset", None) is not None and len(chain) < 16:
        chain.append(chain[-1].dataset)
    return chain


def _labels(dataset: Any) -> tuple[list[str], list[str]] | None:
    """Sorted unique sample and patient ids of a pairs dataset (``None`` if it has none)."""
    for ds in _unwrap(dataset):
        obs = getattr(ds, "obs", None)
        if obs is not None and {"sample_id", "patient_id"} <= set(obs.columns):
            return sorted(map(str, obs["sample_id"].unique())), sorted(
                map(str, obs["patient_id"].unique())
            )
        samples, patients = getattr(ds, "sample_ids", None), getattr(ds, "patient_ids", None)
        if samples is not None and patients is not None:
            return sorted(set(map(str, samples))), sorted(set(map(str, patients)))
    return None


def _store(dataset: Any) -> dict[str, Any]:
    """Describe the pairs store a dataset reads: its path and fingerprints (empty if none).

    A [`PairsDataset`][stalign.pairs.PairsDataset] holds its store's ``root`` and the
    parsed ``index.json`` (``index_json``); the digest is the SHA-256 of that index as
    canonical JSON (sorted keys), so it changes whenever a shard is rebuilt or added.
    """
    for ds in _unwrap(dataset):
        root, index = getattr(ds, "root", None), getattr(ds, "index_json", None)
        if root is None or not isinstance(index, dict):
            continue
        canonical = json.dumps(index, sort_keys=True, default=str).encode()
        return {
            "pairs_store": str(Path(root).resolve()),
            "store_fingerprint": index.get("params_fingerprint"),
            "store_index_sha256": hashlib.sha256(canonical).hexdigest(),
        }
    return {}


def run_provenance(train_dataset: Any, val_dataset: Any | None) -> dict[str, Any]:
    """Describe a run's data and code for ``model.json`` and the exports.

    Returns
    -------
    dict
        ``training_samples``, ``training_patients``, ``validation_samples``,
        ``validation_patients`` (sorted ids; ``None`` when the dataset has no labels),
        ``pairs_store``, ``store_fingerprint`` (the store's ``params_fingerprint``),
        ``store_index_sha256`` (of its ``index.json`` content) when training reads a
        pairs store,
        and ``stalign_version`` and ``git_commit``
        ([`stalign.models.code_provenance`][stalign.models.code_provenance]).
    """
    from ..models import code_provenance

    out: dict[str, Any] = {}
    for role, ds in (("training", train_dataset), ("validation", val_dataset)):
        labels = _labels(ds) if ds is not None else ([], [])
        out[f"{role}_samples"], out[f"{role}_patients"] = labels or (None, None)
    return {**out, **_store(train_dataset), **code_provenance()}
