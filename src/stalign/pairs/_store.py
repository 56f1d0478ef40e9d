"""The on-disk pairs store: layout, per-shard atomic commits, checksums, the index.

Layout (see ``docs/architecture.md``)::

    OUT/
      .lock                            advisory lock: one writer at a time (see below)
      build.json                       parameters + manifest rows of the build (for merge)
      index.json                       dataset index, written by build/merge
      samples/<sample_id>/patches.h5   HEST layout: img, coords, barcode
      samples/<sample_id>/pairs.h5ad   kept spots: counts (sparse), obsm['pathway_scores']
      samples/<sample_id>/spots.csv    every spot of the sample with its keep/drop reason (QC)
      samples/<sample_id>/thumbnail.png  the H&E, down-sampled (QC)
      samples/<sample_id>/_SUCCESS     JSON with checksums and input identities; written last
      samples/<sample_id>/.stat.json   size + mtime of its files and inputs at commit (a cache)
      samples/<sample_id>/_FAILED      JSON with the reason when the sample failed
      qc/report.md, qc/*.png           QC report

A shard is built in a hidden temporary directory next to its final place and
renamed onto it only once ``_SUCCESS`` is inside, so a process killed at any
moment leaves either a complete shard or none. All files are byte-deterministic
(HDF5 without timestamps, PNG without metadata), so checksums compare runs.

A finished shard is trusted on resume only if its parameters fingerprint, the
identity of its input files (`input_identity`) and its files' content match.
Content is checked against the SHA-256 recorded at commit; a file whose size and
mtime are those recorded in ``.stat.json`` is not re-hashed (the cache git and make
use), so resuming a store of hundreds of GB stays fast while any write to a shard
file (which changes its mtime) is caught. Input files are likewise re-read only
when their size or mtime changed. ``verify=True`` re-hashes everything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._lock import pid_alive as _pid_alive
from .._utils import atomic_write_text

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_JSON = "index.json"
BUILD_JSON = "build.json"
SAMPLES_DIR = "samples"
QC_DIR = "qc"
PATCHES_H5 = "patches.h5"
PAIRS_H5AD = "pairs.h5ad"
SPOTS_CSV = "spots.csv"
THUMBNAIL_PNG = "thumbnail.png"
SUCCESS = "_SUCCESS"
FAILED = "_FAILED"
STAT_CACHE = ".stat.json"
LOCK_FILE = ".lock"
_TMP_PREFIX = ".tmp-"

#: files every finished shard holds (all are checksummed in ``_SUCCESS``)
SHARD_FILES = (PATCHES_H5, PAIRS_H5AD, SPOTS_CSV, THUMBNAIL_PNG)


def sample_dir(out: str | os.PathLike, sample_id: str) -> Path:
    """Return ``OUT/samples/<sample_id>``."""
    return Path(out) / SAMPLES_DIR / sample_id


def file_sha256(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def params_fingerprint(params: dict[str, Any]) -> str:
    """Return a short stable hash of the build parameters (JSON, sorted keys)."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dump_json(obj: Any) -> str:
    """Serialise ``obj`` the way every stalign JSON file is written (stable, readable)."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (mode ``0666 & ~umask``).

    Raises
    ------
    OSError
        The file cannot be written (the message names it, e.g. disk full).
    """
    try:
        atomic_write_text(path, dump_json(obj))
    except OSError as e:
        msg = f"cannot write {path}: {e.strerror or e}"
        raise OSError(e.errno, msg) from e


def read_json(path: str | os.PathLike, *, what: str) -> Any:
    """Read a JSON file of the store; a malformed file is an error naming it.

    Parameters
    ----------
    path
        The file.
    what
        What the file should be, for the message (e.g. ``"the build record"``).

    Raises
    ------
    ValueError
        The file is not valid UTF-8 JSON.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = f"{path} is not valid JSON ({e}); expected {what} written by stalign"
        raise ValueError(msg) from e


#: inputs up to this size get a full content SHA-256; larger ones (whole-slide
#: images) a digest of their size, first and last MiB (see `file_identity`)
FULL_DIGEST_MAX_BYTES = 64 << 20
_EDGE_BYTES = 1 << 20


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """Return ``{'bytes', 'sha256', 'digest'}`` identifying an input file's content.

    Files up to `FULL_DIGEST_MAX_BYTES` (counts, tables, gene lists, small
    images) are hashed whole. Larger ones (multi-GB whole-slide images) are
    identified by their size and the SHA-256 of their first and last MiB
    (``digest='size+head+tail'``): 2 MiB read instead of GBs whenever the file's
    size or mtime changed (otherwise resume reuses the recorded identity). Any
    re-save of a compressed (JPEG/TIFF) slide changes its size, header or tail
    (TIFF directories, JPEG end markers); only an in-place same-size overwrite of
    the middle of a large file is missed, which no imaging tool does. The mtime is
    deliberately not part of the identity: copying data without preserving
    timestamps must not force a rebuild of unchanged samples.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= FULL_DIGEST_MAX_BYTES:
            while block := fh.read(1 << 20):
                digest.update(block)
            kind = "full"
        else:
            digest.update(f"{size}\0".encode())
            digest.update(fh.read(_EDGE_BYTES))
            fh.seek(size - _EDGE_BYTES)
            digest.update(fh.read(_EDGE_BYTES))
            kind = "size+head+tail"
    return {"bytes": size, "sha256": digest.hexdigest(), "digest": kind}


def input_identity(
    paths: Sequence[str | os.PathLike],
    *,
    known: dict[str, tuple[list[int], dict[str, Any]]] | None = None,
    stats: dict[str, list[int]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Return `file_identity` of every file in ``paths`` (folders walked), by path.

    Parameters
    ----------
    paths
        Files or folders.
    known
        Identities computed earlier, with the ``[size, mtime_ns]`` the file had
        then (see `known_inputs`): a file whose size and mtime are unchanged
        is not read again.
    stats
        If given, filled with each file's ``[size, mtime_ns]``.

    Returns
    -------
    dict
        Path → identity; a path that does not exist is ``{'missing': True}``.
    """
    files: dict[str, Path] = {}
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, names in os.walk(p):
                dirs.sort()
                for name in sorted(names):
                    files[os.path.join(root, name)] = Path(root) / name
        else:
            files[str(p)] = p
    known = known or {}
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(files):
        f = files[key]
        if not f.is_file():
            out[key] = {"missing": True}
            continue
        stat = _stat_key(f)
        if stats is not None:
            stats[key] = stat
        hit = known.get(key)
        out[key] = hit[1] if hit is not None and hit[0] == stat else file_identity(f)
    return out


def known_inputs(
    out: str | os.PathLike, sample_id: str
) -> dict[str, tuple[list[int], dict[str, Any]]]:
    """Return the input identities a finished shard recorded, with their files' stat then."""
    record = read_success(out, sample_id) or {}
    recorded = record.get("inputs") or {}
    cache = _read_stat_cache(sample_dir(out, sample_id))["inputs"]
    return {k: (stat, recorded[k]) for k, stat in cache.items() if k in recorded}


def shard_tmpdir(out: str | os.PathLike, sample_id: str) -> Path:
    """Return this process's private directory for building ``sample_id``'s shard."""
    return Path(out) / SAMPLES_DIR / f"{_TMP_PREFIX}{sample_id}.{os.getpid()}"


def new_shard_tmpdir(out: str | os.PathLike, sample_id: str) -> Path:
    """Create and return an empty private directory to build a shard in."""
    tmp = shard_tmpdir(out, sample_id)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def clean_stale_tmpdirs(out: str | os.PathLike, sample_ids: Sequence[str]) -> int:
    """Remove temporary shard directories left by killed runs for ``sample_ids``.

    Directories of other samples are removed only when the process named in them is
    gone (e.g. a sample since dropped from the manifest), so concurrent shard jobs
    (``--shard I/N``) working on other samples are never disturbed.
    """
    parent = Path(out) / SAMPLES_DIR
    if not parent.is_dir():
        return 0
    wanted = set(sample_ids)
    removed = 0
    for entry in parent.iterdir():
        if not entry.name.startswith(_TMP_PREFIX):
            continue
        sid, _, owner = entry.name[len(_TMP_PREFIX) :].rpartition(".")
        pid = owner.removeprefix("old")  # .tmp-<id>.<pid> or, being deleted, .tmp-<id>.old<pid>
        if sid in wanted or (pid.isdigit() and not _pid_alive(int(pid))):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


@dataclass(frozen=True)
class ShardInputs:
    """What a shard records of its sample's input files (see `input_identity`).

    Attributes
    ----------
    identity
        Path → `file_identity` (or ``{'missing': True}``), written to ``_SUCCESS['inputs']``.
    stats
        Path → ``[size, mtime_ns]`` of the files then, cached in ``.stat.json`` so a
        resume re-reads only files whose size or mtime changed.
    """

    identity: dict[str, dict[str, Any]]
    stats: dict[str, list[int]] = field(default_factory=dict)


def refresh_input_stats(out: str | os.PathLike, sample_id: str, stats: dict[str, list]) -> None:
    """Cache the inputs' current size + mtime of a shard that matched them (after a copy)."""
    d = sample_dir(out, sample_id)
    cache = _read_stat_cache(d)
    if cache["inputs"] != stats:
        with contextlib.suppress(OSError):  # a cache only: read-only stores stay usable
            write_json(d / STAT_CACHE, {**cache, "inputs": stats})


def commit_shard(
    tmp: Path,
    final: Path,
    success: dict[str, Any],
    *,
    inputs: ShardInputs | None = None,
    orphan_check: Callable[[], None] | None = None,
) -> None:
    """Checksum the files in ``tmp``, write ``_SUCCESS`` last, move ``tmp`` onto ``final``.

    ``success`` is extended with ``files`` (name → sha256 and bytes) and, with
    ``inputs``, the input identity (``inputs``); ``.stat.json`` caches the size and
    mtime of the files and the inputs. A previous (incomplete or failed) ``final``
    directory is removed first; a crash between the removal and the rename leaves no
    shard, which the next run redoes. ``orphan_check`` is called right before the
    rename: a worker whose build process is gone exits there instead of committing.
    """
    files = {}
    for name in sorted(os.listdir(tmp)):
        p = tmp / name
        if p.is_file():
            files[name] = {"sha256": file_sha256(p), "bytes": p.stat().st_size}
    missing = [f for f in SHARD_FILES if f not in files]
    if missing:
        msg = f"internal error: shard {tmp} lacks {missing} before commit"
        raise RuntimeError(msg)
    if inputs is not None:
        success["inputs"] = inputs.identity
    record = {**success, "files": files}
    cache = {"files": {name: _stat_key(tmp / name) for name in files}}
    write_json(tmp / STAT_CACHE, {**cache, "inputs": inputs.stats if inputs is not None else {}})
    write_json(tmp / SUCCESS, record)
    _fsync_dir(tmp)
    if orphan_check is not None:
        orphan_check()
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def remove_shard(out: str | os.PathLike, sample_id: str) -> None:
    """Remove ``samples/<id>`` (renamed away first, so a crash never leaves half of it)."""
    d = sample_dir(out, sample_id)
    if not d.exists():
        return
    trash = d.parent / f"{_TMP_PREFIX}{sample_id}.old{os.getpid()}"  # see clean_stale_tmpdirs
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(d, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_index(out: str | os.PathLike) -> bool:
    """Remove ``OUT/index.json``: the store stops being a finished, usable store."""
    path = Path(out) / INDEX_JSON
    if not path.exists():
        return False
    path.unlink()
    _fsync_dir(path.parent)
    return True


def write_failure(
    out: str | os.PathLike,
    sample_id: str,
    record: dict[str, Any],
    *,
    orphan_check: Callable[[], None] | None = None,
) -> None:
    """Record why a sample failed in ``samples/<id>/_FAILED`` (replacing older shards).

    ``orphan_check`` is called first (a worker whose build is gone exits there).
    """
    if orphan_check is not None:
        orphan_check()
    d = sample_dir(out, sample_id)
    if (d / SUCCESS).exists():  # pragma: no cover - a finished shard is never re-failed
        return
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / FAILED, record)


def read_success(out: str | os.PathLike, sample_id: str) -> dict[str, Any] | None:
    """Return the ``_SUCCESS`` record of a finished shard, or ``None``.

    A malformed ``_SUCCESS`` (e.g. a disk that filled up under another tool) makes
    the shard unfinished: it is rebuilt.
    """
    p = sample_dir(out, sample_id) / SUCCESS
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning("%s is unreadable; the shard counts as unfinished", p)
        return None


def read_failure(out: str | os.PathLike, sample_id: str) -> dict[str, Any] | None:
    """Return the ``_FAILED`` record of a sample, or ``None``."""
    p = sample_dir(out, sample_id) / FAILED
    if not p.is_file() or (sample_dir(out, sample_id) / SUCCESS).exists():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"reason": f"{p} is unreadable"}


def check_fingerprint(out: str | os.PathLike, sample_id: str, record: dict, fp: str) -> None:
    """Refuse a finished shard built with other parameters than ``fp``.

    Raises
    ------
    ValueError
        Mixing parameter sets in one store would silently corrupt it.
    """
    if record.get("params_fingerprint") != fp:
        msg = (
            f"shard {sample_dir(out, sample_id)} was built with different parameters "
            f"(fingerprint {record.get('params_fingerprint')} != {fp}); "
            "use a new --out directory, or --no-resume to rebuild every shard"
        )
        raise ValueError(msg)


def shard_problem(
    out: str | os.PathLike,
    sample_id: str,
    fingerprint: str,
    *,
    inputs: dict[str, Any] | None = None,
    verify: bool = False,
) -> str | None:
    """Return why ``samples/<id>`` is not a usable finished shard, or ``None`` if it is.

    A shard is usable when ``_SUCCESS`` exists, was written with parameters
    ``fingerprint``, records the input identity ``inputs`` (when given) and every
    file has the SHA-256 recorded at commit. Files whose size and mtime match the
    ``.stat.json`` cache are not re-hashed unless ``verify``; a file that passes a
    re-hash refreshes the cache. ``build-pairs`` and ``merge-pairs --verify`` use
    this same test, so what one calls stale the other rebuilds.

    Raises
    ------
    ValueError
        The shard is finished but was built with different parameters.
    """
    record = read_success(out, sample_id)
    if record is None:
        return "not finished"
    check_fingerprint(out, sample_id, record, fingerprint)
    if inputs is not None and record.get("inputs") != inputs:
        changed = _first_change(record.get("inputs") or {}, inputs)
        return f"its input files changed since it was built ({changed})"
    return files_problem(sample_dir(out, sample_id), record, verify=verify)


def files_problem(d: Path, record: dict[str, Any], *, verify: bool = False) -> str | None:
    """Return why a file of the shard ``d`` differs from its ``_SUCCESS`` ``record``.

    Sizes are always compared; a file whose size and mtime match the ``.stat.json``
    cache is trusted, any other (or every file, with ``verify``) is re-hashed
    (SHA-256) and, when it passes, its stat cached again. ``None``: every file matches.
    """
    cache = _read_stat_cache(d)
    refreshed = False
    for name, info in record.get("files", {}).items():
        p = d / name
        if not p.is_file() or p.stat().st_size != info["bytes"]:
            return f"{name} is missing or truncated"
        if not verify and cache["files"].get(name) == _stat_key(p):
            continue
        if file_sha256(p) != info["sha256"]:
            (d / STAT_CACHE).unlink(missing_ok=True)  # so no later check trusts the stat
            return f"{name} does not match its checksum (corrupted or modified)"
        cache["files"][name] = _stat_key(p)
        refreshed = True
    if refreshed:
        with contextlib.suppress(OSError):  # a cache only: read-only stores stay usable
            write_json(d / STAT_CACHE, cache)
    return None


def _read_stat_cache(d: Path) -> dict[str, dict[str, Any]]:
    """Return ``.stat.json`` as ``{'files': {...}, 'inputs': {...}}`` (empty if unusable)."""
    try:
        cache = json.loads((d / STAT_CACHE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    return {k: v if isinstance(v := cache.get(k), dict) else {} for k in ("files", "inputs")}


def _first_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if key not in old:
                return f"new input {key}"
            if key not in new:
                return f"{key} no longer used"
            return f"{key} differs"
    return "no input identity recorded"


def shard_is_complete(
    out: str | os.PathLike,
    sample_id: str,
    fingerprint: str,
    *,
    inputs: dict[str, Any] | None = None,
    verify: bool = False,
) -> bool:
    """Whether ``samples/<id>`` is a usable finished shard (see `shard_problem`).

    A shard that is finished but stale (changed inputs, a file that fails its
    checksum) is logged as a warning and reported incomplete, so it is rebuilt.

    Raises
    ------
    ValueError
        The shard is finished but was built with different parameters.
    """
    problem = shard_problem(out, sample_id, fingerprint, inputs=inputs, verify=verify)
    if problem is None:
        return True
    if problem != "not finished":
        logger.warning("shard %s is stale: %s; build-pairs rebuilds it", sample_id, problem)
    return False


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- patches.h5
class PatchWriter:
    """Append patches to a new ``patches.h5`` in the HEST layout, batch by batch.

    Datasets: ``img``, ``coords`` ``(n, 2)`` int64 level-0 ``(x, y)`` of each
    patch's top-left corner (HEST convention; ``attrs['coords_origin']``), and
    ``barcode`` ``(n, 1)`` bytes. With ``encoding="raw"`` ``img`` is
    ``(n, H, W, 3)`` uint8, one patch per chunk (what HEST reads); with
    ``encoding="jpeg"`` it is ``(n,)`` variable-length uint8 JPEG streams and
    ``img.attrs['shape'] = (H, W, 3)`` (not readable by HEST itself).
    ``img.attrs`` also records ``encoding``, ``mpp`` (µm/px) and ``quality``.

    Parameters
    ----------
    path
        Output file (overwritten).
    size_px
        Patch side, px.
    mpp
        µm per pixel of the patches.
    encoding
        ``"raw"`` or ``"jpeg"``.
    jpeg_quality
        JPEG quality 1–100.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        size_px: int,
        mpp: float,
        encoding: str = "raw",
        jpeg_quality: int = 90,
    ) -> None:
        import h5py

        if encoding not in ("raw", "jpeg"):
            msg = f"encoding must be 'raw' or 'jpeg', got {encoding!r}"
            raise ValueError(msg)
        self.encoding = encoding
        self.quality = int(jpeg_quality)
        self.size_px = int(size_px)
        self.n = 0
        self._f = h5py.File(path, "w")
        s = self.size_px
        if encoding == "raw":
            self._img = self._f.create_dataset(
                "img",
                shape=(0, s, s, 3),
                maxshape=(None, s, s, 3),
                dtype=np.uint8,
                chunks=(1, s, s, 3),
            )
        else:
            self._img = self._f.create_dataset(
                "img",
                shape=(0,),
                maxshape=(None,),
                dtype=h5py.vlen_dtype(np.uint8),
                chunks=(256,),
            )
            self._img.attrs["quality"] = self.quality
        self._img.attrs["encoding"] = encoding
        self._img.attrs["shape"] = np.asarray([s, s, 3], dtype=np.int64)
        self._img.attrs["mpp"] = float(mpp)
        self._coords = self._f.create_dataset(
            "coords", shape=(0, 2), maxshape=(None, 2), dtype=np.int64, chunks=(4096, 2)
        )
        self._coords.attrs["coords_origin"] = "top_left"
        self._coords.attrs["units"] = "level-0 px"
        self._barcode = self._f.create_dataset(
            "barcode",
            shape=(0, 1),
            maxshape=(None, 1),
            dtype=h5py.string_dtype("utf-8"),
            chunks=(4096, 1),
        )

    def append(self, images: np.ndarray, topleft: np.ndarray, barcodes: Sequence[str]) -> None:
        """Append ``(b, H, W, 3)`` uint8 patches with their top-left coords and barcodes."""
        from ._codec import encode_jpeg

        b = len(barcodes)
        if images.shape != (b, self.size_px, self.size_px, 3) or np.shape(topleft) != (b, 2):
            msg = (
                f"expected {b} patches of ({self.size_px}, {self.size_px}, 3) and ({b}, 2) "
                f"coords; got {images.shape} and {np.shape(topleft)}"
            )
            raise ValueError(msg)
        if b == 0:
            return
        lo, hi = self.n, self.n + b
        for ds in (self._img, self._coords, self._barcode):
            ds.resize(hi, axis=0)
        if self.encoding == "raw":
            self._img[lo:hi] = images
        else:
            for i in range(b):
                data = encode_jpeg(images[i], quality=self.quality)
                self._img[lo + i] = np.frombuffer(data, np.uint8)
        self._coords[lo:hi] = np.rint(topleft).astype(np.int64)
        self._barcode[lo:hi, 0] = [str(x) for x in barcodes]
        self.n = hi

    def close(self) -> None:
        """Flush and close the file."""
        self._f.close()

    def __enter__(self) -> PatchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_patch(f: Any, i: int) -> np.ndarray:
    """Return patch ``i`` of an open ``patches.h5`` as ``(H, W, 3)`` uint8 (decoding JPEG)."""
    from ._codec import decode_jpeg

    img = f["img"]
    if img.attrs.get("encoding", "raw") == "jpeg":
        return decode_jpeg(np.asarray(img[i]).tobytes())
    return np.asarray(img[i])


def patches_digest(path: str | os.PathLike) -> str:
    """SHA-256 over the decoded array contents of a ``patches.h5`` (format independent)."""
    import h5py

    digest = hashlib.sha256()
    with h5py.File(path, "r") as f:
        for i in range(f["img"].shape[0]):
            digest.update(np.ascontiguousarray(read_patch(f, i)).tobytes())
        digest.update(np.asarray(f["coords"][:]).tobytes())
        for b in f["barcode"][:, 0]:  # vlen strings: hash the text, not object pointers
            digest.update((b.decode() if isinstance(b, bytes) else str(b)).encode() + b"\0")
    return digest.hexdigest()


# --------------------------------------------------------------------------- index
def licence_summary(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return ``{'licenses': {licence: [sample ids]}, 'mixed_licenses': bool}``.

    A sample without a ``license`` entry counts under ``"unknown"``; a store whose
    samples carry more than one licence is *mixed* (its use is bound by all of them).
    """
    by_licence: dict[str, list[str]] = {}
    for s in samples:
        key = str(s.get("license") or "").strip() or "unknown"
        by_licence.setdefault(key, []).append(str(s.get("sample_id")))
    return {"licenses": dict(sorted(by_licence.items())), "mixed_licenses": len(by_licence) > 1}


def write_index(out: str | os.PathLike, index: dict[str, Any]) -> Path:
    """Write ``OUT/index.json`` atomically and return its path.

    Adds ``licenses`` (licence → sample ids) and ``mixed_licenses`` from the
    samples' ``license`` entries (see `licence_summary`); a mixed store is
    also logged as a warning. ``index`` is updated in place with both keys.
    """
    summary = licence_summary(index.get("samples", []))
    index.update(summary)
    if summary["mixed_licenses"]:
        logger.warning(
            "pairs store %s mixes %d licences: %s",
            out,
            len(summary["licenses"]),
            ", ".join(summary["licenses"]),
        )
    path = Path(out) / INDEX_JSON
    write_json(path, index)
    return path


def check_indexed_shard(
    root: str | os.PathLike, index: dict[str, Any], entry: dict, *, verify: bool = False
) -> None:
    """Refuse a shard that is not the one ``index.json`` describes.

    Parameters
    ----------
    root
        The pairs store.
    index
        Its ``index.json``.
    entry
        The sample's entry of ``index['samples']``.
    verify
        Re-hash (SHA-256) every file of the shard; by default only a file whose size
        or mtime differs from those recorded is re-hashed (see `files_problem`).

    Raises
    ------
    ValueError
        The shard is unfinished, was built with other parameters (a store mixing
        two builds, e.g. after an interrupted rebuild), changed after the index
        was written, has a file that no longer matches its checksum, or the index
        entry disagrees with the shard's ``_SUCCESS`` (e.g. an edited
        ``patient_id``); the message says how to repair the store.
    """
    sid = entry["sample_id"]
    record = read_success(root, sid)
    d = sample_dir(root, sid)
    if record is None:
        msg = (
            f"shard {d} listed in {Path(root) / INDEX_JSON} is not finished (no valid {SUCCESS}); "
            "a build is running or was interrupted: run build-pairs again to finish it"
        )
        raise ValueError(msg)
    if record.get("params_fingerprint") != index.get("params_fingerprint"):
        msg = (
            f"{root} mixes two builds: shard {sid} ({d}) was built with different parameters "
            f"(fingerprint {record.get('params_fingerprint')}) than {INDEX_JSON} describes "
            f"({index.get('params_fingerprint')}); finish the interrupted build with "
            "build-pairs and its parameters, or rebuild the store with --no-resume"
        )
        raise ValueError(msg)
    if record.get("files") != entry.get("files"):
        msg = (
            f"shard {sid} ({d}) changed after {Path(root) / INDEX_JSON} was written; "
            f"run `stalign merge-pairs --out {root}` (or build-pairs) to index what is there"
        )
        raise ValueError(msg)
    _check_entry(Path(root), entry, record)
    problem = files_problem(d, record, verify=verify)
    if problem is not None:
        msg = (
            f"shard {sid} ({d}): {problem}; run build-pairs again with the same parameters "
            "to rebuild it"
        )
        raise ValueError(msg)


def check_index_entry(root: str | os.PathLike, entry: dict[str, Any]) -> None:
    """Refuse an ``index.json`` entry whose fields differ from its shard's ``_SUCCESS``.

    Cheap (no file is hashed): for every sample a patient split reads, not only those
    loaded. A shard without ``_SUCCESS`` is left to `check_indexed_shard`.

    Raises
    ------
    ValueError
        E.g. a ``patient_id`` edited in ``index.json``: a split could put one patient
        on both sides.
    """
    record = read_success(root, entry["sample_id"])
    if record is not None:
        _check_entry(Path(root), entry, record)


#: fields of an ``index.json`` sample entry copied verbatim from the shard's ``_SUCCESS``
#: that splits and filters read
_ENTRY_FIELDS = ("sample_id", "patient_id", "organ", "species", "platform", "n_pairs")


def _check_entry(root: Path, entry: dict[str, Any], record: dict[str, Any]) -> None:
    """Refuse an ``index.json`` entry whose fields differ from the shard's ``_SUCCESS``."""
    for key in _ENTRY_FIELDS:
        if key in entry and key in record and record[key] != entry[key]:
            msg = (
                f"{root / INDEX_JSON}: sample {entry['sample_id']} has {key}={entry[key]!r} but "
                f"its shard's {SUCCESS} says {record[key]!r} (was the index edited?); run "
                f"`stalign merge-pairs --out {root}` to rewrite the index from the shards"
            )
            raise ValueError(msg)


def read_index(root: str | os.PathLike) -> dict[str, Any]:
    """Read ``ROOT/index.json`` of a pairs store.

    Raises
    ------
    FileNotFoundError
        ``index.json`` is absent (the build has not finished, or its shards were
        never merged: run ``stalign merge-pairs ROOT``).
    """
    path = Path(root) / INDEX_JSON
    if not path.is_file():
        msg = (
            f"{path} not found: {root} is not a finished pairs store "
            "(run `stalign build-pairs`, or `stalign merge-pairs` after sharded builds)"
        )
        raise FileNotFoundError(msg)
    index = read_json(path, what="the index of a pairs store")
    version = index.get("format_version") if isinstance(index, dict) else None
    if version != FORMAT_VERSION:
        msg = (
            f"{path}: format_version {version!r} is not supported "
            f"(this stalign reads {FORMAT_VERSION})"
        )
        raise ValueError(msg)
    return index
