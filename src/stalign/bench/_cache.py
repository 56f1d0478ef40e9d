"""Chunked, resumable cache of per-spot features of a pairs store (one file per sample).

The benchmark computes every image feature set (reference features, encoder
embeddings) once, streaming the store chunk by chunk, and the probes, retrieval and
MIL tasks read the ``(n, d)`` matrices back from here. Layout::

    CACHE/<label>-<key hash>/<sample_id>.h5     features (n, d) float32, attrs key, rows_done

The directory name hashes the feature's identity (reference definition, or encoder
weights digest, seed and input size) and the store's image geometry; each file also
records its sample's ``patches.h5`` SHA-256 (from ``index.json``), so a rebuilt
sample is recomputed, never mixed in. An interrupted sample resumes at the last
written chunk (``<sample_id>.h5.partial``); a finished one is renamed into place.
Peak memory is one chunk of patches plus its features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._utils import write_error

__all__ = ["FeatureCache", "FeatureSource"]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass(frozen=True)
class FeatureSource:
    """One feature set: its identity and a factory of its chunk function.

    Attributes
    ----------
    label
        Human-readable name (directory prefix; the row label in reports).
    key
        JSON-serialisable identity: two sources with equal keys compute the same
        features (e.g. ``{"encoder": digest, "input_px": 224}``).
    make
        Called once, only when some sample is missing from the cache; returns the
        function mapping a ``(b, H, W, 3)`` uint8 chunk to ``(b, d)`` features.
    """

    label: str
    key: dict[str, Any]
    make: Callable[[], Callable[[np.ndarray], np.ndarray]] = field(compare=False)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")[:40] or "features"


class FeatureCache:
    """Per-sample feature files of one pairs store.

    Parameters
    ----------
    root
        Cache directory (created).
    dataset
        The store as a `stalign.pairs.PairsDataset` (rows sample by sample).
    chunk_rows
        Patches read and featurised at once (bounds memory: ``chunk_rows`` × patch
        bytes, e.g. 1,024 × 147 kB at 224 px).
    """

    def __init__(self, root: str | os.PathLike, dataset: Any, *, chunk_rows: int = 1024) -> None:
        if int(chunk_rows) <= 0:
            msg = f"chunk_rows must be a positive integer, got {chunk_rows!r}"
            raise ValueError(msg)
        self.root = Path(root)
        self.dataset = dataset
        self.chunk_rows = int(chunk_rows)
        params = dataset.index_json.get("params", {})
        self.geometry = {
            k: params.get(k) for k in ("size_px", "mpp", "jpeg", "jpeg_quality") if k in params
        }
        files = {s["sample_id"]: s.get("files", {}) for s in dataset.index_json["samples"]}
        sids = dataset.obs["sample_id"].to_numpy()
        self.samples = list(dict.fromkeys(sids.tolist()))
        self._rows = {s: np.flatnonzero(sids == s) for s in self.samples}
        self._digest = {
            s: files.get(s, {}).get("patches.h5", {}).get("sha256") for s in self.samples
        }

    # ------------------------------------------------------------------ layout
    def directory(self, source: FeatureSource) -> Path:
        """Directory of ``source``'s files (its identity and the image geometry hashed)."""
        ident = {"format": CACHE_FORMAT, "source": source.key, "geometry": self.geometry}
        return self.root / f"{_slug(source.label)}-{_hash(ident)[:16]}"

    def _file_key(self, source: FeatureSource, sample: str) -> str:
        return json.dumps(
            {
                "format": CACHE_FORMAT,
                "source": source.key,
                "geometry": self.geometry,
                "sample": sample,
                "patches_sha256": self._digest[sample],
                "n": int(self._rows[sample].size),
            },
            sort_keys=True,
            default=str,
        )

    def _path(self, source: FeatureSource, sample: str) -> Path:
        return self.directory(source) / f"{sample}.h5"

    def is_complete(self, source: FeatureSource, sample: str) -> bool:
        """Whether ``sample``'s features of ``source`` are cached with the current key."""
        import h5py

        path = self._path(source, sample)
        if not path.is_file():
            return False
        try:
            with h5py.File(path, "r") as f:
                ok = f.attrs.get("key") == self._file_key(source, sample)
        except OSError:
            return False
        if not ok:
            logger.info("cache %s is stale (store or source changed); recomputing", path)
        return ok

    # ------------------------------------------------------------------ writing
    def fill(
        self,
        source: FeatureSource,
        *,
        samples: Sequence[str] | None = None,
        progress: bool = False,
    ) -> int:
        """Compute the missing samples of ``source`` (all, or ``samples``); return how many.

        ``samples=[]`` computes nothing (e.g. a rank's empty share of the samples).
        """
        chosen = self.samples if samples is None else samples
        todo = [s for s in chosen if not self.is_complete(source, s)]
        if not todo:
            return 0
        from .._utils import progress_bar as tqdm

        fn = source.make()
        self.directory(source).mkdir(parents=True, exist_ok=True)
        n = sum(self._rows[s].size for s in todo)
        with tqdm(total=n, desc=source.label, unit="patch", disable=not progress) as bar:
            for s in todo:
                self._fill_sample(source, s, fn, bar)
        return len(todo)

    def _fill_sample(self, source: FeatureSource, sample: str, fn: Callable, bar: Any) -> None:

        final = self._path(source, sample)
        partial = final.with_name(final.name + ".partial")
        key = self._file_key(source, sample)
        rows = self._rows[sample]
        f = self._open_partial(partial, key)
        try:
            done = int(f.attrs.get("rows_done", 0))
            bar.update(done)
            for start in range(done, rows.size, self.chunk_rows):
                chunk = self.dataset.read_patches(rows[start : start + self.chunk_rows])
                feats = np.asarray(fn(chunk), dtype=np.float32)
                if feats.shape[0] != chunk.shape[0] or feats.ndim != 2:
                    msg = (
                        f"{source.label}: features of {chunk.shape[0]} patches have shape "
                        f"{feats.shape}, expected ({chunk.shape[0]}, d)"
                    )
                    raise ValueError(msg)
                self._write_chunk(f, start, feats, rows.size)
                bar.update(feats.shape[0])
            f.close()
        except Exception as e:
            _close_quietly(f, partial)  # the first error is the one to report
            named = write_error(e, partial)
            if named is None:
                raise
            raise named from e
        finally:
            if hasattr(self.dataset, "close"):
                self.dataset.close()  # one sample's patch file open at a time
        os.replace(partial, final)

    def _write_chunk(self, f: Any, start: int, feats: np.ndarray, n_rows: int) -> None:
        """Write ``feats`` at row ``start`` of the partial file ``f`` and record progress."""
        if "features" not in f:
            f.create_dataset(
                "features",
                (n_rows, feats.shape[1]),
                dtype="float32",
                chunks=(min(n_rows, self.chunk_rows), feats.shape[1]),
            )
        f["features"][start : start + feats.shape[0]] = feats
        f.attrs["rows_done"] = start + feats.shape[0]
        f.flush()

    @staticmethod
    def _open_partial(partial: Path, key: str) -> Any:
        """Open ``partial`` to resume it when its key matches, else start it afresh."""
        import h5py

        if partial.is_file():
            try:
                f = h5py.File(partial, "r+")
                if f.attrs.get("key") == key:
                    logger.info("resuming %s at row %d", partial, f.attrs.get("rows_done", 0))
                    return f
                f.close()
            except OSError:
                logger.warning("unreadable partial cache file %s; recomputing", partial)
        f = h5py.File(partial, "w")
        f.attrs["key"] = key
        f.attrs["rows_done"] = 0
        return f

    # ------------------------------------------------------------------ reading
    def load(self, source: FeatureSource) -> np.ndarray:
        """Return ``source``'s ``(n, d)`` float32 features in dataset row order.

        Raises
        ------
        FileNotFoundError
            A sample has not been computed (call `fill` first).
        """
        import h5py

        out: np.ndarray | None = None
        for s in self.samples:
            if not self.is_complete(source, s):
                msg = f"{self._path(source, s)}: features of {source.label!r} not cached yet"
                raise FileNotFoundError(msg)
            with h5py.File(self._path(source, s), "r") as f:
                feats = f["features"]
                if out is None:
                    out = np.empty((len(self.dataset), feats.shape[1]), dtype=np.float32)
                out[self._rows[s]] = feats[:]
        assert out is not None  # a dataset has at least one sample
        return out


def _close_quietly(f: Any, path: Path) -> None:
    """Close the HDF5 file ``f`` (at ``path``) after an error.

    HDF5 may fail to flush it again; ``f`` is not touched after that (reading even its
    ``filename`` can crash HDF5 then).
    """
    try:
        f.close()
    except (OSError, RuntimeError) as e:
        logger.debug("closing %s after an error failed too: %s", path, e)
