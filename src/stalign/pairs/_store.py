"""The on-disk pairs store: layout, per-shard atomic commits, checksums, the index.

Layout (see ``docs/architecture.md``)::

    OUT/
      build.json                       parameters + manifest rows of the build (for merge)
      index.json                       dataset index, written by build/merge
      samples/<sample_id>/patches.h5   HEST layout: img, coords, barcode
      samples/<sample_id>/pairs.h5ad   kept spots: counts (sparse), obsm['pathway_scores']
      samples/<sample_id>/spots.csv    every spot of the sample with its keep/drop reason (QC)
      samples/<sample_id>/thumbnail.png  the H&E, down-sampled (QC)
      samples/<sample_id>/_SUCCESS     JSON with checksums; written last
      samples/<sample_id>/_FAILED      JSON with the reason when the sample failed
      qc/report.md, qc/*.png           QC report

A shard is built in a hidden temporary directory next to its final place and
renamed onto it only once ``_SUCCESS`` is inside, so a process killed at any
moment leaves either a complete shard or none. All files are byte-deterministic
(HDF5 without timestamps, PNG without metadata), so checksums compare runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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


# --------------------------------------------------------------------------- shards
def new_shard_tmpdir(out: str | os.PathLike, sample_id: str) -> Path:
    """Create and return an empty private directory to build a shard in."""
    parent = Path(out) / SAMPLES_DIR
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f"{_TMP_PREFIX}{sample_id}.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def clean_stale_tmpdirs(out: str | os.PathLike, sample_ids: Sequence[str]) -> int:
    """Remove temporary shard directories left by killed runs for ``sample_ids``.

    Only directories of the given samples are touched, so concurrent shard jobs
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
        sid = entry.name[len(_TMP_PREFIX) :].rsplit(".", 1)[0]
        if sid in wanted:
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


def commit_shard(tmp: Path, final: Path, success: dict[str, Any]) -> None:
    """Checksum the files in ``tmp``, write ``_SUCCESS`` last, move ``tmp`` onto ``final``.

    ``success`` is extended with ``files`` (name → sha256 and bytes). A previous
    (incomplete or failed) ``final`` directory is removed first; a crash between
    the removal and the rename leaves no shard, which the next run redoes.
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
    record = {**success, "files": files}
    atomic_write_text(tmp / SUCCESS, dump_json(record))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def write_failure(out: str | os.PathLike, sample_id: str, record: dict[str, Any]) -> None:
    """Record why a sample failed in ``samples/<id>/_FAILED`` (replacing older shards)."""
    d = sample_dir(out, sample_id)
    if (d / SUCCESS).exists():  # pragma: no cover - a finished shard is never re-failed
        return
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / FAILED, dump_json(record))


def read_success(out: str | os.PathLike, sample_id: str) -> dict[str, Any] | None:
    """Return the ``_SUCCESS`` record of a finished shard, or ``None``."""
    p = sample_dir(out, sample_id) / SUCCESS
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def read_failure(out: str | os.PathLike, sample_id: str) -> dict[str, Any] | None:
    """Return the ``_FAILED`` record of a sample, or ``None``."""
    p = sample_dir(out, sample_id) / FAILED
    if not p.is_file() or (sample_dir(out, sample_id) / SUCCESS).exists():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def shard_is_complete(
    out: str | os.PathLike, sample_id: str, fingerprint: str, *, verify: bool = False
) -> bool:
    """Whether ``samples/<id>`` is a finished shard built with parameters ``fingerprint``.

    Files must exist with the sizes recorded in ``_SUCCESS``; with ``verify`` their
    SHA-256 is recomputed too.

    Raises
    ------
    ValueError
        The shard is finished but was built with different parameters (mixing
        parameter sets in one store would silently corrupt it).
    """
    record = read_success(out, sample_id)
    if record is None:
        return False
    if record.get("params_fingerprint") != fingerprint:
        msg = (
            f"shard {sample_dir(out, sample_id)} was built with different parameters "
            f"(fingerprint {record.get('params_fingerprint')} != {fingerprint}); "
            "use a new --out directory, or --no-resume to rebuild every shard"
        )
        raise ValueError(msg)
    d = sample_dir(out, sample_id)
    for name, info in record.get("files", {}).items():
        p = d / name
        if not p.is_file() or p.stat().st_size != info["bytes"]:
            logger.warning("shard %s: %s missing or truncated; rebuilding", sample_id, name)
            return False
        if verify and file_sha256(p) != info["sha256"]:
            logger.warning("shard %s: %s checksum mismatch; rebuilding", sample_id, name)
            return False
    return True


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
    samples' ``license`` entries (see :func:`licence_summary`); a mixed store is
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
    atomic_write_text(path, dump_json(index))
    return path


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
    index = json.loads(path.read_text(encoding="utf-8"))
    if index.get("format_version") != FORMAT_VERSION:
        msg = (
            f"{path}: format_version {index.get('format_version')!r} is not supported "
            f"(this stalign reads {FORMAT_VERSION})"
        )
        raise ValueError(msg)
    return index
