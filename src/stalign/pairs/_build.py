"""``build_pairs``: manifest → sharded, resumable pairs store; ``merge_pairs``: → index."""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from .._utils import atomic_write_text
from ._manifest import Sample, read_manifest
from ._params import PairsParams
from ._sample import SampleError, build_sample
from ._store import (
    BUILD_JSON,
    FORMAT_VERSION,
    clean_stale_tmpdirs,
    dump_json,
    params_fingerprint,
    read_failure,
    read_success,
    sample_dir,
    shard_is_complete,
    write_failure,
    write_index,
)

logger = logging.getLogger(__name__)

__all__ = ["BuildResult", "build_pairs", "merge_pairs", "parse_shard", "shard_samples"]

_VERSIONED = (
    "stalign",
    "numpy",
    "scipy",
    "pandas",
    "anndata",
    "scanpy",
    "h5py",
    "imagecodecs",
    "tifffile",
    "pillow",
    "gseapy",
)


@dataclass
class BuildResult:
    """What a :func:`build_pairs` call did.

    Attributes
    ----------
    out
        Root of the pairs store.
    table
        One row per sample of this call (``sample_id``, ``patient_id``,
        ``status`` ∈ {done, skipped, failed}, ``n_spots``, ``n_pairs``,
        ``seconds``, ``reason``).
    index_path
        ``index.json`` when it was written (unsharded builds), else ``None``.
    """

    out: Path
    table: pd.DataFrame
    index_path: Path | None = None
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def n_pairs(self) -> int:
        """Pairs in the samples of this call (done + skipped)."""
        return int(self.table["n_pairs"].fillna(0).sum())

    def summary(self) -> str:
        """Return the summary table as text (what the CLI prints)."""
        cols = ["sample_id", "patient_id", "status", "n_spots", "n_pairs", "seconds", "reason"]
        table = self.table[cols].copy()
        table["reason"] = table["reason"].fillna("").astype(str).str.slice(0, 70)
        with pd.option_context("display.width", 200, "display.max_colwidth", 80):
            text = table.to_string(index=False, na_rep="-")
        counts = self.table["status"].value_counts().to_dict()
        tail = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        return f"{text}\n{len(self.table)} samples ({tail}); {self.n_pairs} pairs in {self.out}"


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"I/N"`` (0 ≤ I < N) as used by ``--shard``.

    Raises
    ------
    ValueError
        Not of the form ``I/N`` with ``0 <= I < N``.
    """
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError as e:
        msg = f"--shard must look like I/N (e.g. 0/4), got {text!r}"
        raise ValueError(msg) from e
    if n < 1 or not 0 <= i < n:
        msg = f"--shard I/N needs 0 <= I < N, got {text!r}"
        raise ValueError(msg)
    return i, n


def shard_samples(samples: Sequence[Sample], shard: tuple[int, int] | None) -> list[Sample]:
    """Return the samples job ``I`` of ``N`` builds (round-robin over sorted ids).

    Deterministic and independent of the manifest's row order, so every job of a
    scheduler array (e.g. ``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``
    with ``--array=0-(N-1)``) agrees on the split without talking to the others.
    """
    if shard is None:
        return list(samples)
    i, n = shard
    order = sorted(s.sample_id for s in samples)
    mine = {sid for k, sid in enumerate(order) if k % n == i}
    return [s for s in samples if s.sample_id in mine]


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _write_build_json(
    out: Path, samples: Sequence[Sample], params: PairsParams, fp: str, resume: bool
) -> None:
    """Record parameters + manifest once; refuse to mix builds in one store."""
    import json

    path = out / BUILD_JSON
    record = {
        "format_version": FORMAT_VERSION,
        "params": params.to_dict(),
        "params_fingerprint": fp,
        "samples": [{k: v for k, v in s.to_dict().items() if k != "line"} for s in samples],
    }
    if path.is_file() and resume:
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("params_fingerprint") != fp:
            msg = (
                f"{out} holds a build with other parameters ({path}: fingerprint "
                f"{old.get('params_fingerprint')} != {fp}); use a new --out directory, "
                "or --no-resume to rebuild it"
            )
            raise ValueError(msg)
        if old.get("samples") == record["samples"]:
            return
        msg = (
            f"{out} holds a build of a different manifest ({path}); use a new --out "
            "directory, or --no-resume to rebuild it"
        )
        raise ValueError(msg)
    atomic_write_text(path, dump_json(record))


def _run_one(
    sample: Sample, params: PairsParams, out: str, fp: str, position: int | None, progress: bool
) -> dict[str, Any]:
    """Worker entry point: build a shard, turning any error into a failure record."""
    t0 = time.perf_counter()
    try:
        rec = build_sample(
            sample, params, out, fingerprint=fp, progress_position=position, progress=progress
        )
        return {"status": "done", "record": rec, "seconds": time.perf_counter() - t0}
    except Exception as e:
        reason = str(e) if isinstance(e, SampleError) else f"{type(e).__name__}: {e}"
        record = {
            "sample_id": sample.sample_id,
            "reason": reason,
            "error_type": type(e).__name__,
            "traceback": traceback.format_exc(),
        }
        write_failure(out, sample.sample_id, record)
        return {"status": "failed", "reason": reason, "seconds": time.perf_counter() - t0}


def build_pairs(
    manifest: str | os.PathLike | Sequence[Sample],
    out: str | os.PathLike,
    *,
    mpp: float = 0.5,
    size_px: int = 224,
    tissue_threshold: float = 0.5,
    tissue_qc: str = "mask",
    min_mask_coverage: float = 0.1,
    gene_sets: str | None = "hallmark",
    method: str = "ssgsea",
    min_genes: int = 5,
    gene_panel: str = "all",
    use_in_tissue: bool = True,
    jpeg: bool = False,
    jpeg_quality: int = 90,
    workers: int = 1,
    shard: tuple[int, int] | str | None = None,
    resume: bool = True,
    keep_going: bool = False,
    report: bool = True,
    progress: bool = True,
) -> BuildResult:
    """Curate (H&E patch, expression, pathway scores) pairs from a manifest of samples.

    Every sample becomes one shard ``OUT/samples/<sample_id>/`` (patches in the
    HEST ``.h5`` layout, ``pairs.h5ad`` with the kept spots' counts and pathway
    scores keyed by barcode, a spot QC table and a thumbnail), committed
    atomically with a ``_SUCCESS`` marker. Unsharded builds then write
    ``OUT/index.json`` and the QC report ``OUT/qc/report.md`` (see
    :func:`merge_pairs`).

    Parameters
    ----------
    manifest
        Manifest CSV (see ``data/manifests/README.md``) or validated samples.
        The whole manifest is validated before any work starts.
    out
        Root of the pairs store (created).
    mpp, size_px
        Patch geometry: µm per pixel and side in px (HEST: 0.5 µm/px, 224 px).
    tissue_threshold, tissue_qc, min_mask_coverage
        Tissue QC (see :class:`~stalign.pairs.PairsParams`): ``tissue_qc="mask"``
        measures each patch's coverage by the slide's tissue mask; spots the
        platform calls in tissue are kept down to ``min_mask_coverage``, other
        samples need ``tissue_threshold``. ``"pixels"`` is the per-pixel rule.
    gene_sets, method, min_genes
        Passed to :func:`stalign.tl.score_pathways`; ``gene_sets=None`` skips scores.
    gene_panel
        Genes whose counts are stored: ``"all"``, ``"hvg:N"`` or a gene-list file.
    use_in_tissue
        Also drop spots the platform calls outside tissue.
    jpeg, jpeg_quality
        Store patches as JPEG (quality 1–100) instead of raw uint8.
    workers
        Processes building samples in parallel (one sample per process).
    shard
        ``(I, N)`` or ``"I/N"``: build only the samples of job ``I`` of ``N``
        (see :func:`shard_samples`); run :func:`merge_pairs` once all jobs are done.
    resume
        Skip samples whose shard is finished (``_SUCCESS`` with the same
        parameters). ``False`` rebuilds every sample of this call.
    keep_going
        Report a failing sample and finish the others; otherwise stop at the
        first failure (finished shards are kept) and raise.
    report
        Write ``index.json`` and the QC report at the end (unsharded builds).
    progress
        Show tqdm bars (overall and per sample).

    Returns
    -------
    BuildResult
        Per-sample table (status, spots, pairs, seconds, reason) and paths.

    Raises
    ------
    ManifestError
        The manifest is invalid (every bad row is listed with its line number).
    ValueError
        Bad parameters, or ``out`` holds a build with other parameters.
    RuntimeError
        A sample failed and ``keep_going`` is False.
    """
    from tqdm.auto import tqdm

    params = PairsParams(
        mpp=float(mpp),
        size_px=int(size_px),
        tissue_threshold=float(tissue_threshold),
        tissue_qc=str(tissue_qc),
        min_mask_coverage=float(min_mask_coverage),
        gene_sets=gene_sets,
        method=method,
        min_genes=int(min_genes),
        gene_panel=str(gene_panel),
        use_in_tissue=bool(use_in_tissue),
        jpeg=bool(jpeg),
        jpeg_quality=int(jpeg_quality),
    )
    if isinstance(shard, str):
        shard = parse_shard(shard)
    if int(workers) < 1:
        msg = f"workers must be >= 1, got {workers!r}"
        raise ValueError(msg)
    samples = (
        read_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else list(manifest)
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fp = params_fingerprint(params.to_dict())
    _write_build_json(out, samples, params, fp, resume)
    mine = shard_samples(samples, shard)
    clean_stale_tmpdirs(out, [s.sample_id for s in mine])

    rows: dict[str, dict[str, Any]] = {}
    todo: list[Sample] = []
    for s in mine:
        if resume and shard_is_complete(out, s.sample_id, fp):
            rec = read_success(out, s.sample_id) or {}
            rows[s.sample_id] = {
                "status": "skipped",
                "n_spots": rec.get("n_spots"),
                "n_pairs": rec.get("n_pairs"),
                "seconds": 0.0,
                "reason": "finished earlier (resume)",
            }
        else:
            todo.append(s)
    if rows:
        logger.info("resume: %d of %d samples already finished", len(rows), len(mine))

    failures: dict[str, str] = {}
    overall = tqdm(total=len(todo), desc="samples", unit="sample", disable=not progress)
    n_workers = min(int(workers), max(1, len(todo)))

    def record(s: Sample, res: dict[str, Any]) -> None:
        rec = res.get("record", {})
        rows[s.sample_id] = {
            "status": res["status"],
            "n_spots": rec.get("n_spots"),
            "n_pairs": rec.get("n_pairs"),
            "seconds": round(res["seconds"], 2),
            "reason": res.get("reason"),
        }
        if res["status"] == "failed":
            failures[s.sample_id] = res["reason"]
            logger.error("sample %s failed: %s", s.sample_id, res["reason"])
        overall.update(1)
        overall.set_postfix_str(f"{s.sample_id} {res['status']}")

    def stop_on_failure() -> None:
        if failures and not keep_going:
            sid, reason = next(iter(failures.items()))
            msg = (
                f"sample {sid} failed: {reason}. Finished shards are kept; fix the sample "
                "(or pass keep_going / --keep-going) and run again to resume"
            )
            raise RuntimeError(msg)

    try:
        if n_workers == 1:
            for s in todo:
                record(s, _run_one(s, params, str(out), fp, 1, progress))
                stop_on_failure()
        else:
            with ProcessPoolExecutor(max_workers=n_workers) as pool:
                pending: dict[Future, Sample] = {}
                queue = list(todo)
                slots = list(range(1, n_workers + 1))
                slot_of: dict[Future, int] = {}
                while queue or pending:
                    while queue and slots and not (failures and not keep_going):
                        s = queue.pop(0)
                        slot = slots.pop(0)
                        fut = pool.submit(_run_one, s, params, str(out), fp, slot, progress)
                        pending[fut] = s
                        slot_of[fut] = slot
                    if not pending:
                        break
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        s = pending.pop(fut)
                        slots.append(slot_of.pop(fut))
                        record(s, fut.result())
                stop_on_failure()
    finally:
        overall.close()

    table = pd.DataFrame(
        [{"sample_id": s.sample_id, "patient_id": s.patient_id, **rows[s.sample_id]} for s in mine]
    )
    result = BuildResult(out=out, table=table, failures=failures)
    if shard is None and report:
        result.index_path = merge_pairs(out, allow_missing=False, progress=progress)
    return result


def merge_pairs(
    out: str | os.PathLike,
    *,
    allow_missing: bool = False,
    report: bool = True,
    verify: bool = False,
    progress: bool = False,
) -> Path:
    """Build ``OUT/index.json`` (and the QC report) from the finished shards.

    Run it once after the jobs of a sharded build (``--shard I/N``) are done; an
    unsharded :func:`build_pairs` calls it itself.

    Parameters
    ----------
    out
        Root of the pairs store (must hold ``build.json``).
    allow_missing
        Write the index even when some manifest samples have neither a finished
        shard nor a failure record (jobs still running or never started).
    report
        Also write ``qc/report.md``, ``qc/report.html`` and the QC figures.
    verify
        Recompute every file's SHA-256 against ``_SUCCESS``.
    progress
        Show a progress bar while reading the shards.

    Returns
    -------
    Path
        ``OUT/index.json``. Its keys: ``format_version``, ``params``,
        ``params_fingerprint``, ``versions``, ``n_samples``, ``n_pairs``,
        ``samples`` (per finished sample: ids, organ, species, platform,
        ``n_spots``, ``n_pairs``, ``n_genes``, ``dropped``, ``files`` with
        sha256 + bytes), ``failed`` (sample → reason), ``missing``, ``genes``
        (union), ``pathways`` (names scored in every sample).

    Raises
    ------
    FileNotFoundError
        ``out`` has no ``build.json`` (not a pairs store).
    ValueError
        Samples are missing and ``allow_missing`` is False.
    """
    import json

    from tqdm.auto import tqdm

    out = Path(out)
    build_path = out / BUILD_JSON
    if not build_path.is_file():
        msg = f"{build_path} not found: {out} is not a pairs store written by build-pairs"
        raise FileNotFoundError(msg)
    build = json.loads(build_path.read_text(encoding="utf-8"))
    fp = build["params_fingerprint"]
    samples_meta: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    missing: list[str] = []
    genes: set[str] = set()
    pathways: list[str] | None = None
    for row in tqdm(build["samples"], desc="merge", disable=not progress):
        sid = row["sample_id"]
        if shard_is_complete(out, sid, fp, verify=verify):
            rec = read_success(out, sid) or {}
            genes.update(rec.get("genes", []))
            pw = list(rec.get("pathways", []))
            pathways = pw if pathways is None else [p for p in pathways if p in set(pw)]
            samples_meta.append(
                {
                    "sample_id": sid,
                    "patient_id": row["patient_id"],
                    "organ": row["organ"],
                    "species": row["species"],
                    "platform": row["platform"],
                    "source": row.get("source", ""),
                    "license": row.get("license", ""),
                    "path": os.path.relpath(sample_dir(out, sid), out),
                    "n_spots": rec["n_spots"],
                    "n_pairs": rec["n_pairs"],
                    "n_genes": rec["n_genes"],
                    "n_pathways": len(pw),
                    "dropped": rec.get("dropped", {}),
                    "mpp_level0": rec.get("mpp_level0"),
                    "files": rec.get("files", {}),
                }
            )
        elif (fail := read_failure(out, sid)) is not None:
            failed[sid] = fail.get("reason", "unknown")
        else:
            missing.append(sid)
    if missing and not allow_missing:
        msg = (
            f"{len(missing)} sample(s) of {out} have no finished shard yet: {missing[:10]}; "
            "finish their jobs (build-pairs --shard ...) or pass allow_missing / --allow-missing"
        )
        raise ValueError(msg)
    index = {
        "format_version": FORMAT_VERSION,
        "params": build["params"],
        "params_fingerprint": fp,
        "versions": _versions(),
        "n_samples": len(samples_meta),
        "n_pairs": int(sum(s["n_pairs"] for s in samples_meta)),
        "samples": samples_meta,
        "failed": failed,
        "missing": missing,
        "genes": sorted(genes),
        "pathways": pathways or [],
    }
    path = write_index(out, index)
    if report:
        from ._report import write_qc_report

        write_qc_report(out, index)
    return path
