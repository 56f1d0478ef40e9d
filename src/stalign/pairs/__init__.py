"""Curated (H&E patch, expression, pathway) pairs: manifest, build, store, torch dataset.

* `read_manifest` — validate a sample manifest (every bad row, with its line).
* `build_pairs` — manifest → sharded, resumable store (``stalign build-pairs``).
* [`merge_pairs`][stalign.pairs.merge_pairs] — finished shards → ``index.json`` + QC report
  (``stalign merge-pairs``).
* `PairsDataset` — the store as a torch ``Dataset``.
* `plan_split` — which sections train, validate and test, with the patient leak check
  (`check_disjoint_split`); `split_by_patient`.

The store layout is described in ``docs/architecture.md``.
"""

from ._augment import Augment
from ._build import BuildResult, build_pairs, merge_pairs, parse_shard, shard_samples
from ._codec import decode_jpeg, encode_jpeg, psnr
from ._manifest import PLATFORMS, ManifestError, Sample, read_manifest
from ._params import PairsParams
from ._report import write_qc_report
from ._split import (
    SplitPlan,
    check_disjoint_split,
    check_split_request,
    plan_split,
    split_by_patient,
)
from ._store import (
    PAIRS_H5AD,
    THUMBNAIL_PNG,
    PatchWriter,
    file_sha256,
    patches_digest,
    read_index,
    read_success,
    sample_dir,
)

__all__ = [
    "PAIRS_H5AD",
    "PLATFORMS",
    "THUMBNAIL_PNG",
    "Augment",
    "BuildResult",
    "ManifestError",
    "PairsDataset",
    "PairsParams",
    "PatchWriter",
    "Sample",
    "SplitPlan",
    "build_pairs",
    "check_disjoint_split",
    "check_split_request",
    "decode_jpeg",
    "encode_jpeg",
    "file_sha256",
    "merge_pairs",
    "parse_shard",
    "patches_digest",
    "plan_split",
    "psnr",
    "read_index",
    "read_manifest",
    "read_success",
    "sample_dir",
    "shard_samples",
    "split_by_patient",
    "write_qc_report",
]

_LAZY = {"PairsDataset"}  # needs torch: imported on first use


def __getattr__(name: str):
    if name in _LAZY:
        from . import _dataset

        return getattr(_dataset, name)
    msg = f"module 'stalign.pairs' has no attribute {name!r}"
    raise AttributeError(msg)
