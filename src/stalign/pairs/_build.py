"""``build_pairs``: manifest → sharded, resumable pairs store; ``merge_pairs``: → index."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from .. import StalignError
from .._lock import folder_lock
from ._manifest import Sample, read_manifest
from ._params import PairsParams
from ._sample import SampleError, build_sample, shard_pathway_depth
from ._store import (
    BUILD_JSON,
    FORMAT_VERSION,
    LOCK_FILE,
    SAMPLES_DIR,
    SUCCESS,
    ShardInputs,
    clean_stale_tmpdirs,
    input_identity,
    known_inputs,
    read_failure,
    read_json,
    read_success,
    refresh_input_stats,
    remove_index,
    remove_shard,
    sample_dir,
    shard_problem,
    shard_tmpdir,
    write_failure,
    write_index,
    write_json,
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
    """What a [`build_pairs`][stalign.pairs.build_pairs] call did.

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


# ----------------------------------------------------------------------------- locking
@contextlib.contextmanager
def store_lock(
    out: str | os.PathLike, *, shard: tuple[int, int] | None = None, command: str = "build-pairs"
) -> Iterator[None]:
    """Hold the lock of the pairs store ``out`` (refusing at once if another run has it).

    An unsharded build and `merge_pairs` take the whole store. The jobs of a
    sharded build (``shard=(I, N)``) share it with each other, each holding job
    ``I``'s own lock, so two copies of one job, or a job and an unsharded build or a
    merge, never run at once. Locks die with their process (no stale locks).

    Raises
    ------
    FolderLockedError
        (a ``RuntimeError``) another run holds the store; the message names the
        folder and the holder's pid.
    """
    out = Path(out)
    what = f"pairs store {out}"
    with folder_lock(out / LOCK_FILE, command=command, shared=shard is not None, what=what):
        if shard is None:
            yield
            return
        i, n = shard
        job = out / f"{LOCK_FILE}.shard-{i}-of-{n}"
        with folder_lock(job, command=command, what=f"{what} (job {i}/{n})"):
            yield


def _prepare_out(out: Path) -> Path:
    """Create the store folder; a path that cannot be one is a one-line error."""
    if out.exists() and not out.is_dir():
        msg = f"output folder {out} exists and is not a folder"
        raise NotADirectoryError(errno.ENOTDIR, msg)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        msg = f"cannot create the output folder {out}: {e.strerror or e}"
        raise OSError(e.errno, msg) from e
    if not os.access(out, os.W_OK | os.X_OK):
        msg = f"output folder {out} is not writable"
        raise PermissionError(errno.EACCES, msg)
    return out


# ----------------------------------------------------------------------------- build record
def _has_finished_shards(out: Path) -> bool:
    return any(not p.parent.name.startswith(".") for p in (out / SAMPLES_DIR).glob(f"*/{SUCCESS}"))


def _write_build_json(
    out: Path, samples: Sequence[Sample], params: PairsParams, fp: str, resume: bool
) -> None:
    """Record parameters + manifest once; refuse to mix builds in one store.

    Another record is replaced without asking when ``resume`` is off or when no
    shard of it was ever finished (e.g. a run that failed on a bad parameter).
    """
    path = out / BUILD_JSON
    record = {
        "format_version": FORMAT_VERSION,
        "fingerprint_version": FINGERPRINT_VERSION,
        "params": params.to_dict(),
        "params_fingerprint": fp,
        "samples": [{k: v for k, v in s.to_dict().items() if k != "line"} for s in samples],
    }
    # the jobs of a sharded build share the store: one at a time reads and writes the record
    with folder_lock(out / f"{LOCK_FILE}.build", command="write build.json", wait_s=60):
        if path.is_file() and resume and _has_finished_shards(out):
            old = read_json(path, what="the build record of a pairs store")
            if not isinstance(old, dict):
                msg = f"{path} is not a build record (expected a JSON object)"
                raise ValueError(msg)
            if old.get("params_fingerprint") != fp and _older_fingerprint_of(old, record):
                logger.warning(
                    "%s was fingerprinted by an older stalign (fingerprint v%s, now v%s); "
                    "rebuilding its shards with the same parameters",
                    out,
                    old.get("fingerprint_version", 1),
                    FINGERPRINT_VERSION,
                )
                _remove_shards_built_with(out, old, str(old["params_fingerprint"]))
                write_json(path, record)
                return
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
        if path.is_file():
            remove_index(out)  # the old index describes another build
        write_json(path, record)


#: 2: gene-set file content in the fingerprint, input identities in every shard;
#: 3: the tissue mask's settings in the fingerprint (tissue_qc="mask")
FINGERPRINT_VERSION = 3

#: fingerprint version -> the parameter keys it added
_KEYS_ADDED = {2: ("gene_sets_sha256",), 3: ("tissue_mask_settings",)}


def _older_fingerprint_of(old: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether ``old`` records the same build under an older fingerprint version.

    Same parameters once the keys added since its version are left out of both, and
    the same samples: its shards are rebuilt rather than the build refused.
    """
    version = int(old.get("fingerprint_version", 1))
    if version >= FINGERPRINT_VERSION:
        return False
    added = {k for v, keys in _KEYS_ADDED.items() if v > version for k in keys}

    def without_added(params: Any) -> Any:
        params = json.loads(json.dumps(params, default=str))
        return {k: v for k, v in params.items() if k not in added}

    same = without_added(old.get("params") or {}) == without_added(record["params"])
    return same and old.get("samples") == record["samples"]


def _remove_shards_built_with(out: Path, old: dict[str, Any], fingerprint: str) -> None:
    remove_index(out)
    for row in old.get("samples", []):
        rec = read_success(out, row["sample_id"])
        if rec is not None and rec.get("params_fingerprint") == fingerprint:
            remove_shard(out, row["sample_id"])


# ----------------------------------------------------------------------------- inputs
def sample_inputs(sample: Sample) -> list[Path]:
    """Return the files (or folders) a sample's reader uses: its path, image and sidecars.

    Platforms with a ``stalign.io.find_<platform>_files`` helper (legacy ST: the
    alignment table and gene names next to the counts; HEST: the sample's
    ``.h5ad``, slide and metadata) contribute what it finds; other platforms
    contribute their ``path`` (a whole folder for Visium/Xenium outputs).
    """
    from .. import io as st_io

    found: dict[str, Any] = {}
    finder = getattr(st_io, f"find_{sample.platform}_files", None)
    if finder is not None:
        try:
            found = finder(sample.path)
        except (OSError, ValueError):  # the reader reports it, naming the file
            found = {}
    # what the finder names, or the path (never walk e.g. a whole HEST root)
    paths = [Path(v) for v in found.values() if isinstance(v, (str, os.PathLike))]
    paths = paths or [Path(sample.path)]
    if sample.image:
        paths.append(Path(sample.image))
    return list(dict.fromkeys(paths))


# ----------------------------------------------------------------------------- workers
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _is_disk_error(e: BaseException) -> bool:
    """Out of disk / quota or a read-only store: the environment's fault, not the sample's."""
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
        return True
    text = str(e)  # h5py reports the C library's errno in its message only, also in a
    # RuntimeError ("Can't decrement id ref count (file write failed: …, errno = 28, …")
    found = re.search(r"\berrno = (\d+)", text)
    if found and int(found.group(1)) in _DISK_ERRNOS:
        return True
    return isinstance(e, OSError) and ("No space left" in text or "Disk quota" in text)


def _run_one(
    sample: Sample,
    params: PairsParams,
    out: str,
    fp: str,
    inputs: ShardInputs,
    position: int | None,
    progress: bool,
    orphan_check: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Build a shard, turning a sample's error into a failure record.

    ``inputs`` is the identity of the sample's input files and their stat
    (`_inputs_of`), recorded in the shard. ``orphan_check`` runs right before the
    shard (or its failure record) is written: `_exit_if_orphaned` in worker
    processes, ``None`` in the build process itself.

    A full or read-only disk stops the whole build (re-raised, naming the sample
    and the store) instead of failing every remaining sample; the partial shard is
    removed at once to free the space.
    """
    t0 = time.perf_counter()
    try:
        rec = build_sample(
            sample,
            params,
            out,
            fingerprint=fp,
            inputs=inputs,
            orphan_check=orphan_check,
            progress_position=position,
            progress=progress,
        )
        return {"status": "done", "record": rec, "seconds": time.perf_counter() - t0}
    except Exception as e:
        if _is_disk_error(e):
            shutil.rmtree(shard_tmpdir(out, sample.sample_id), ignore_errors=True)
            why = getattr(e, "strerror", None) or str(e)
            msg = f"sample {sample.sample_id}: cannot write its shard in {out}: {why}"
            raise OSError(getattr(e, "errno", None) or errno.ENOSPC, msg) from e
        reason = str(e) if isinstance(e, SampleError) else f"{type(e).__name__}: {e}"
        record = {
            "sample_id": sample.sample_id,
            "reason": reason,
            "error_type": type(e).__name__,
            "traceback": traceback.format_exc(),
        }
        write_failure(out, sample.sample_id, record, orphan_check=orphan_check)
        return {"status": "failed", "reason": reason, "seconds": time.perf_counter() - t0}


def _set_death_signal() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (``PR_SET_PDEATHSIG``)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no prctl: the watcher remains
        pass


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:  # re-parented: the build is gone
            os._exit(1)
        time.sleep(0.5)


#: a worker process's parent when the pool started it (set once per worker by
#: `_worker_init`; ``None`` in the build process)
_worker_parent: int | None = None


def _exit_if_orphaned() -> None:
    """Exit this worker at once if the build that started it is gone (it was re-parented).

    The ``orphan_check`` that pool workers pass to `build_sample` and `write_failure`:
    nobody owns the store once the build is gone, so nothing may be committed.
    """
    if _worker_parent is not None and os.getppid() != _worker_parent:
        os._exit(1)


def _worker_init(build_pid: int) -> None:
    """Tie a worker's life to the build: it dies with it and never commits after it.

    ``PR_SET_PDEATHSIG`` (Linux) kills the worker the moment its parent dies; a
    watcher thread does the same within 0.5 s elsewhere, and `_exit_if_orphaned`
    (the ``orphan_check`` of the worker's tasks) makes a last check right before a
    shard is committed.
    """
    global _worker_parent
    parent = os.getppid()
    _set_death_signal()
    try:
        os.kill(build_pid, 0)
    except ProcessLookupError:  # the build died before this worker got going
        os._exit(1)
    except PermissionError:  # pragma: no cover
        pass
    _worker_parent = parent
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def build_pairs(
    manifest: str | os.PathLike | Sequence[Sample],
    out: str | os.PathLike,
    params: PairsParams | None = None,
    *,
    workers: int = 1,
    shard: tuple[int, int] | str | None = None,
    resume: bool = True,
    verify: bool = False,
    keep_going: bool = False,
    report: bool = True,
    progress: bool = True,
    **overrides: Any,
) -> BuildResult:
    """Curate (H&E patch, expression, pathway scores) pairs from a manifest of samples.

    Every sample becomes one shard ``OUT/samples/<sample_id>/`` (patches in the
    HEST ``.h5`` layout, ``pairs.h5ad`` with the kept spots' counts and pathway
    scores keyed by barcode, a spot QC table and a thumbnail), committed
    atomically with a ``_SUCCESS`` marker. Unsharded builds then write
    ``OUT/index.json`` and the QC report ``OUT/qc/report.md`` (see
    [`merge_pairs`][stalign.pairs.merge_pairs]).

    What a shard holds is set by [`PairsParams`][stalign.pairs.PairsParams], whose
    fields hold the defaults; keyword overrides replace single fields, e.g.
    ``build_pairs(manifest, out, mpp=4.4, size_px=64)`` or
    ``build_pairs(manifest, out, params, jpeg=True)``.

    Parameters
    ----------
    manifest
        Manifest CSV (see ``data/manifests/README.md``) or validated samples.
        The whole manifest is validated before any work starts.
    out
        Root of the pairs store (created).
    params
        The build parameters; ``None``: ``PairsParams()`` (its defaults).
    workers
        Processes building samples in parallel (one sample per process).
    shard
        ``(I, N)`` or ``"I/N"``: build only the samples of job ``I`` of ``N``
        (see `shard_samples`); run `merge_pairs` once all jobs are done.
    resume
        Skip samples whose shard is finished: ``_SUCCESS`` with the same parameters,
        the same input files (content digests, see
        `file_identity`) and files that match their
        checksums; stale shards are rebuilt. ``False`` rebuilds every sample of this
        call: ``index.json`` and the old shards go first, so a rebuild killed
        half-way never leaves a store that looks finished.
    verify
        Re-hash every file of a finished shard instead of trusting the size and
        mtime recorded at commit (what ``merge-pairs --verify`` does).
    keep_going
        Report a failing sample and finish the others; otherwise stop at the
        first failure (finished shards are kept) and raise.
    report
        Write ``index.json`` and the QC report at the end (unsharded builds).
    progress
        Show tqdm bars (overall and per sample).
    **overrides
        Fields of ``PairsParams`` replacing those of ``params`` (see
        `PairsParams.with_overrides`); the most used are below.

    Other Parameters
    ----------------
    mpp, size_px
        Patch geometry: µm per pixel and side in px (HEST: 0.5 µm/px, 224 px).
    tissue_threshold, tissue_qc, min_mask_coverage
        Tissue QC (see [`PairsParams`][stalign.pairs.PairsParams]): ``tissue_qc="mask"``
        measures each patch's coverage by the slide's tissue mask; spots the
        platform calls in tissue are kept down to ``min_mask_coverage``, other
        samples need ``tissue_threshold``. ``"pixels"`` is the per-pixel rule.
    gene_sets, method, min_genes, ties
        Passed to `stalign.tl.score_pathways`; ``gene_sets=None`` skips scores.
        ``ties`` is ssGSEA's tie mode: ``"average"`` (scores independent of the
        gene order) or ``"gseapy"`` (gseapy's order-dependent walk).
    rarefy_depth, rarefy_draws, random_state
        Score pathways on counts rarefied to ``rarefy_depth`` per spot (averaged over
        ``rarefy_draws`` seeded draws); spots with fewer counts are dropped and counted
        (see [`PairsParams`][stalign.pairs.PairsParams]). ``random_state`` also seeds
        ``method="score_genes"``'s control genes.
    gene_panel
        Genes whose counts are stored: ``"all"``, ``"hvg:N"`` or a gene-list file.
    use_in_tissue
        Also drop spots the platform calls outside tissue.
    jpeg, jpeg_quality
        Store patches as JPEG (quality 1–100) instead of raw uint8.

    Returns
    -------
    BuildResult
        Per-sample table (status, spots, pairs, seconds, reason) and paths.

    Raises
    ------
    ManifestError
        The manifest is invalid (every bad row is listed with its line number).
    TypeError
        ``params`` is not a ``PairsParams``, or an override names none of its fields.
    ValueError
        Bad parameters (checked before any work), or ``out`` holds a build with
        other parameters.
    RuntimeError
        A sample failed and ``keep_going`` is False, or another run holds ``out``
        (`FolderLockedError`, naming its pid).
    OSError
        ``out`` cannot be created or written (e.g. the disk is full); nothing
        partial is committed.
    """
    if params is not None and not isinstance(params, PairsParams):
        msg = f"params must be a PairsParams (or None), got {type(params).__name__}"
        raise TypeError(msg)
    params = (params if params is not None else PairsParams()).with_overrides(**overrides)
    if isinstance(shard, str):
        shard = parse_shard(shard)
    if int(workers) < 1:
        msg = f"workers must be >= 1, got {workers!r}"
        raise ValueError(msg)
    samples = (
        read_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else list(manifest)
    )
    out = _prepare_out(Path(out))
    fp = params.fingerprint()
    mine = shard_samples(samples, shard)
    with store_lock(out, shard=shard, command=_command_line(shard)):
        if not resume:  # the old index and shards go before anything new is committed
            remove_index(out)
            for s in mine:
                remove_shard(out, s.sample_id)
        _write_build_json(out, samples, params, fp, resume)
        clean_stale_tmpdirs(out, [s.sample_id for s in mine])
        inputs = {s.sample_id: _inputs_of(out, s, use_cache=not verify) for s in mine}
        rows, todo = _plan(out, mine, fp, inputs, verify=verify)
        if todo:
            remove_index(out)  # shards are about to change: the index would be stale
        failures = _run_all(
            todo,
            params,
            out,
            fp,
            inputs,
            rows,
            workers=int(workers),
            keep_going=keep_going,
            progress=progress,
        )
        table = pd.DataFrame(
            [
                {"sample_id": s.sample_id, "patient_id": s.patient_id, **rows[s.sample_id]}
                for s in mine
            ]
        )
        result = BuildResult(out=out, table=table, failures=failures)
        if shard is None and report:
            result.index_path = _merge(out, allow_missing=False, progress=progress)
    return result


def _inputs_of(out: Path, sample: Sample, *, use_cache: bool) -> ShardInputs:
    """Return the identity of a sample's input files and their ``[size, mtime_ns]``."""
    known = known_inputs(out, sample.sample_id) if use_cache else None
    stats: dict[str, list[int]] = {}
    identity = input_identity(sample_inputs(sample), known=known, stats=stats)
    return ShardInputs(identity, stats)


def _command_line(shard: tuple[int, int] | None) -> str:
    job = f" --shard {shard[0]}/{shard[1]}" if shard else ""
    return f"build-pairs{job}"


def _plan(
    out: Path, mine: Sequence[Sample], fp: str, inputs: dict[str, ShardInputs], *, verify: bool
) -> tuple[dict[str, dict[str, Any]], list[Sample]]:
    """Split the samples into finished shards (rows 'skipped') and those to build."""
    rows: dict[str, dict[str, Any]] = {}
    todo: list[Sample] = []
    for s in mine:
        mine_inputs = inputs[s.sample_id]
        problem = shard_problem(out, s.sample_id, fp, inputs=mine_inputs.identity, verify=verify)
        if problem is None:
            refresh_input_stats(out, s.sample_id, mine_inputs.stats)
            rec = read_success(out, s.sample_id) or {}
            rows[s.sample_id] = {
                "status": "skipped",
                "n_spots": rec.get("n_spots"),
                "n_pairs": rec.get("n_pairs"),
                "seconds": 0.0,
                "reason": "finished earlier (resume)",
            }
        else:
            if problem != "not finished":
                logger.warning("shard %s is stale (%s): rebuilding it", s.sample_id, problem)
            todo.append(s)
    if rows:
        logger.info("resume: %d of %d samples already finished", len(rows), len(mine))
    return rows, todo


def _run_all(
    todo: Sequence[Sample],
    params: PairsParams,
    out: Path,
    fp: str,
    inputs: dict[str, ShardInputs],
    rows: dict[str, dict[str, Any]],
    *,
    workers: int,
    keep_going: bool,
    progress: bool,
) -> dict[str, str]:
    """Build ``todo`` (in ``workers`` processes), fill ``rows``; return the failures."""
    from .._utils import progress_bar as tqdm

    failures: dict[str, str] = {}
    overall = tqdm(total=len(todo), desc="samples", unit="sample", disable=not progress)
    n_workers = min(workers, max(1, len(todo)))

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
            raise StalignError(msg)

    def args(s: Sample, slot: int, orphan_check: Callable[[], None] | None = None) -> tuple:
        return (s, params, str(out), fp, inputs[s.sample_id], slot, progress, orphan_check)

    try:
        if n_workers == 1:
            for s in todo:
                record(s, _run_one(*args(s, 1)))
                stop_on_failure()
        else:
            _run_pool(todo, n_workers, args, record, stop=lambda: bool(failures and not keep_going))
            stop_on_failure()
    finally:
        overall.close()
    return failures


def _run_pool(
    todo: Sequence[Sample],
    n_workers: int,
    args: Callable[[Sample, int, Callable[[], None]], tuple],
    record: Callable[[Sample, dict[str, Any]], None],
    *,
    stop: Callable[[], bool],
) -> None:
    """Run ``_run_one(*args(sample, slot, _exit_if_orphaned))`` in workers dying with this one."""
    pool = ProcessPoolExecutor(
        max_workers=n_workers, initializer=_worker_init, initargs=(os.getpid(),)
    )
    try:
        pending: dict[Future, Sample] = {}
        queue = list(todo)
        slots = list(range(1, n_workers + 1))
        slot_of: dict[Future, int] = {}
        while queue or pending:
            while queue and slots and not stop():
                s = queue.pop(0)
                slot = slots.pop(0)
                fut = pool.submit(_run_one, *args(s, slot, _exit_if_orphaned))
                pending[fut] = s
                slot_of[fut] = slot
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                s = pending.pop(fut)
                slots.append(slot_of.pop(fut))
                try:
                    res = fut.result()
                except BrokenProcessPool as e:
                    busy = sorted({s.sample_id, *(x.sample_id for x in pending.values())})
                    msg = (
                        f"a worker process died (killed, e.g. for memory?) while samples {busy} "
                        "were being built; finished shards are kept: run again (with fewer "
                        "--workers if memory is short) to resume"
                    )
                    raise StalignError(msg) from e
                record(s, res)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


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
    unsharded [`build_pairs`][stalign.pairs.build_pairs] calls it itself.

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
        Recompute every file's SHA-256 against ``_SUCCESS`` and the identity of
        every sample's input files: a shard that fails is stale, exactly as
        [`build_pairs`][stalign.pairs.build_pairs] (which then rebuilds it) would find.
    progress
        Show a progress bar while reading the shards.

    Returns
    -------
    Path
        ``OUT/index.json``. Its keys: ``format_version``, ``params``,
        ``params_fingerprint``, ``versions``, ``n_samples``, ``n_pairs``,
        ``samples`` (per finished sample: ids, organ, species, platform,
        ``n_spots``, ``n_pairs``, ``n_genes``, ``dropped``, ``pathway_depth``
        (median and max |r| of the scores on log total counts and log detected
        genes over pathways, the most depth-driven pathway, how many exceed
        ``pathway_depth_threshold``), ``files`` with sha256 + bytes), ``failed``
        (sample → reason), ``missing``, ``genes`` (union), ``pathways`` (names
        scored in every sample), ``pathway_depth_threshold``.

    Raises
    ------
    FileNotFoundError
        ``out`` has no ``build.json`` (not a pairs store).
    ValueError
        Samples are missing (or stale) and ``allow_missing`` is False, or a
        store file is malformed (named).
    RuntimeError
        A build or another merge is running on ``out``.
    """
    out = Path(out)
    build_path = out / BUILD_JSON
    if not build_path.is_file():
        msg = f"{build_path} not found: {out} is not a pairs store written by build-pairs"
        raise FileNotFoundError(msg)
    with store_lock(out, command="merge-pairs"):
        return _merge(
            out, allow_missing=allow_missing, report=report, verify=verify, progress=progress
        )


def _depth_threshold() -> float:
    """Return the median |r| above which a section's scores are flagged as depth-driven."""
    from ..tl import DEPTH_WARN_ABS_R

    return DEPTH_WARN_ABS_R


def _sample_of(row: dict[str, Any]) -> Sample:
    """Return the [`Sample`][stalign.pairs.Sample] of a ``build.json`` manifest row."""
    return Sample(**{k: v for k, v in row.items() if k in Sample.__dataclass_fields__})


def _merge(
    out: Path,
    *,
    allow_missing: bool = False,
    report: bool = True,
    verify: bool = False,
    progress: bool = False,
) -> Path:
    """[`merge_pairs`][stalign.pairs.merge_pairs] for a caller that holds the store's lock."""
    from .._utils import progress_bar as tqdm

    build_path = out / BUILD_JSON
    build = read_json(build_path, what="the build record of a pairs store")
    try:
        fp = build["params_fingerprint"]
        rows = list(build["samples"])
    except (KeyError, TypeError) as e:
        msg = f"{build_path} lacks {e}; expected the build record written by stalign build-pairs"
        raise ValueError(msg) from e
    samples_meta: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    missing: list[str] = []
    stale: dict[str, str] = {}
    genes: set[str] = set()
    pathways: list[str] | None = None
    for row in tqdm(rows, desc="merge", disable=not progress):
        sid = row["sample_id"]
        inputs = input_identity(sample_inputs(_sample_of(row))) if verify else None
        problem = shard_problem(out, sid, fp, inputs=inputs, verify=verify)
        if problem is None:
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
                    "pathway_depth": shard_pathway_depth(out, sid, rec).get("summary"),
                    "mpp_level0": rec.get("mpp_level0"),
                    "files": rec.get("files", {}),
                }
            )
        elif (fail := read_failure(out, sid)) is not None:
            failed[sid] = fail.get("reason", "unknown")
        else:
            missing.append(sid)
            if problem != "not finished":
                stale[sid] = problem
                logger.warning("shard %s is stale: %s; build-pairs rebuilds it", sid, problem)
    if missing and not allow_missing:
        why = "; ".join(f"{sid}: {reason}" for sid, reason in list(stale.items())[:5])
        msg = (
            f"{len(missing)} sample(s) of {out} have no finished shard yet: {missing[:10]}"
            + (f" (stale shards, which build-pairs rebuilds: {why})" if stale else "")
            + "; finish their jobs (build-pairs --shard ...) or pass allow_missing / "
            "--allow-missing"
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
        "pathway_depth_threshold": _depth_threshold(),
    }
    path = write_index(out, index)
    if report:
        from ._report import write_qc_report

        write_qc_report(out, index)
    return path
