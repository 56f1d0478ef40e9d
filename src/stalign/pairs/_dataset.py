"""``PairsDataset``: a pairs store as a torch ``Dataset`` (random access, lazy HDF5)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import Dataset as _TorchDataset  # this module is imported lazily

from .. import _keys as K
from ._augment import Augment
from ._split import DEFAULT_SPLIT, assign_patients
from ._store import (
    PAIRS_H5AD,
    PATCHES_H5,
    check_index_entry,
    check_indexed_shard,
    read_index,
    read_patch,
)

__all__ = ["PairsDataset"]


class PairsDataset(_TorchDataset):
    """Pairs of an H&E patch and its spot's pathway scores, from a pairs store.

    Items are dicts ``{'image': float32 tensor (3, H, W) in [0, 1], 'pathways':
    float32 tensor (P,), 'index': int, 'sample_id': str, 'patient_id': str,
    'barcode': str}``. Patches are read on demand from each sample's
    ``patches.h5``, opened lazily once per process, so the dataset works with a
    ``DataLoader`` with ``num_workers > 0``. Patches and pathway scores are
    joined by barcode, never by row position. Normalisation by mean/std belongs
    to the image model and is not applied here.

    Parameters
    ----------
    root
        Root of a pairs store (with ``index.json``).
    samples
        Restrict to these sample ids (default: every finished sample).
    patients
        Restrict to these patient ids.
    split
        Restrict to one split of [`split_by_patient`][stalign.pairs.split_by_patient] with
        ``split_fractions`` and ``split_seed`` (e.g. ``"train"``).
    split_fractions, split_seed
        Define the patient split used by ``split``.
    image_size
        Resize patches to this side in px (bilinear, antialiased), e.g. the
        encoder's input size; ``None`` keeps the stored size.
    augment
        ``True`` for the default [`Augment`][stalign.pairs.Augment] (flips, 90° rotations, ±10 %
        brightness/contrast), an [`Augment`][stalign.pairs.Augment] to configure it (e.g. HED
        jitter), or ``False``. Random draws come from torch's RNG, so
        ``torch.manual_seed`` and DataLoader worker seeding make them reproducible.
    transform
        Extra callable applied last to the ``(3, H, W)`` image tensor.
    pathways
        Pathway names to return, in order (default: those scored in every sample,
        ``index.json['pathways']``).
    verify
        Re-hash (SHA-256) every file of the chosen shards against the checksums the
        build recorded. By default a file is re-hashed only when its size or mtime
        differs from those recorded (a copied store is hashed once).

    Raises
    ------
    FileNotFoundError
        ``root`` has no ``index.json`` (unfinished or interrupted build).
    ValueError
        A chosen shard is not the one ``index.json`` describes: unfinished, built
        with other parameters (a store mixing two builds), changed since the
        index was written or a file fails its checksum; an ``index.json`` entry
        disagrees with its shard's ``_SUCCESS`` (e.g. an edited ``patient_id``); or
        ``index.json`` is malformed (named).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        samples: Sequence[str] | None = None,
        patients: Sequence[str] | None = None,
        split: str | None = None,
        split_fractions: Mapping[str, float] | None = None,
        split_seed: int = 0,
        image_size: int | None = None,
        augment: bool | Augment = False,
        transform: Callable[[Any], Any] | None = None,
        pathways: Sequence[str] | None = None,
        verify: bool = False,
    ) -> None:
        import anndata as ad

        self.root = Path(root)
        self.index_json = read_index(self.root)
        available = {s["sample_id"]: s for s in self.index_json["samples"]}
        for s in available.values():  # a split reads every entry's patient_id
            check_index_entry(self.root, s)
        if samples is not None:
            unknown = [s for s in samples if s not in available]
            if unknown:
                msg = (
                    f"samples {unknown} are not finished samples of {self.root} "
                    f"(available: {sorted(available)})"
                )
                raise ValueError(msg)
            chosen = [available[s] for s in samples]
        else:
            chosen = list(available.values())
        wanted_patients = None if patients is None else {str(p) for p in patients}
        self.split_fractions = dict(split_fractions or DEFAULT_SPLIT)
        self.split_seed = int(split_seed)
        if split is not None:
            all_patients = [s["patient_id"] for s in available.values()]
            assignment = assign_patients(all_patients, self.split_fractions, seed=self.split_seed)
            if split not in assignment:
                msg = f"split {split!r} not in split_fractions {list(self.split_fractions)}"
                raise ValueError(msg)
            in_split = set(assignment[split])
            wanted_patients = in_split if wanted_patients is None else wanted_patients & in_split
        if wanted_patients is not None:
            chosen = [s for s in chosen if s["patient_id"] in wanted_patients]
        self.pathway_names = list(pathways) if pathways is not None else self.index_json["pathways"]

        obs_parts, scores, h5_rows = [], [], []
        self._files: list[Path] = []
        for s in chosen:  # never train on a store that mixes builds or changed since
            check_indexed_shard(self.root, self.index_json, s, verify=verify)
        for k, s in enumerate(chosen):
            sdir = self.root / s["path"]
            with _shard_file(sdir / PAIRS_H5AD):
                adata = ad.read_h5ad(sdir / PAIRS_H5AD, backed="r")
            obs = adata.obs[["sample_id", "patient_id"]].astype(str).copy()
            obs["barcode"] = adata.obs_names.astype(str)
            for col in (K.TISSUE_FRACTION, "total_counts"):
                if col in adata.obs:
                    obs[col] = adata.obs[col].to_numpy()
            if self.pathway_names:
                table = adata.obsm.get(K.PATHWAY_SCORES)
                missing = [p for p in self.pathway_names if table is None or p not in table]
                if missing:
                    msg = f"sample {s['sample_id']} has no scores for pathways {missing[:5]}"
                    raise ValueError(msg)
                scores.append(table[self.pathway_names].to_numpy(np.float32))
            else:
                scores.append(np.zeros((adata.n_obs, 0), np.float32))
            adata.file.close()
            rows = self._barcode_rows(sdir / PATCHES_H5, obs["barcode"].to_numpy())
            h5_rows.append(np.column_stack([np.full(len(rows), k), rows]))
            obs_parts.append(obs)
            self._files.append(sdir / PATCHES_H5)
        if not obs_parts:
            msg = (
                f"no pairs in {self.root} match samples={samples}, patients={patients}, "
                f"split={split}"
            )
            raise ValueError(msg)
        self.obs = pd.concat(obs_parts, ignore_index=True)
        self.pathways = np.concatenate(scores, axis=0)
        self._rows = np.concatenate(h5_rows, axis=0).astype(np.int64)
        self.image_size = image_size
        self.augment = Augment() if augment is True else (augment or None)
        self.transform = transform
        self._handles: dict[int, Any] = {}
        self._pid: int | None = None

    @staticmethod
    def _barcode_rows(path: Path, barcodes: np.ndarray) -> np.ndarray:
        import h5py

        with _shard_file(path), h5py.File(path, "r") as f:
            stored = [b.decode() if isinstance(b, bytes) else str(b) for b in f["barcode"][:, 0]]
        pos = pd.Index(stored).get_indexer(barcodes)
        if (pos < 0).any():
            msg = f"{path}: {(pos < 0).sum()} barcodes of pairs.h5ad have no patch"
            raise ValueError(msg)
        return pos

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.obs)

    def _file(self, k: int) -> Any:
        import h5py

        if self._pid != os.getpid():  # new (worker) process: never reuse inherited handles
            self._handles = {}
            self._pid = os.getpid()
        f = self._handles.get(k)
        if f is None:
            with _shard_file(self._files[k]):
                f = h5py.File(self._files[k], "r")
            self._handles[k] = f
        return f

    def close(self) -> None:
        """Close the patch files this process opened (they reopen on the next read).

        Streaming readers call it after each sample so that a store of thousands of
        samples never holds thousands of open files (and their HDF5 chunk caches).
        """
        for f in self._handles.values():
            f.close()
        self._handles = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["_pid"] = None
        return state

    def read_patch(self, i: int) -> np.ndarray:
        """Return pair ``i``'s stored patch, ``(H, W, 3)`` uint8, untransformed."""
        k, row = self._rows[i]
        return read_patch(self._file(int(k)), int(row))

    def read_patches(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Return the stored patches of pairs ``indices``, ``(b, H, W, 3)`` uint8.

        Rows of one sample file are read with one HDF5 call per contiguous run of
        rows (one chunk per patch, so a run is one sequential read) instead of one
        call per patch; JPEG stores are decoded patch by patch. The result follows
        ``indices``' order.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            msg = "read_patches: no indices given"
            raise ValueError(msg)
        rows = self._rows[idx]
        first = read_patch(self._file(int(rows[0, 0])), int(rows[0, 1]))
        out = np.empty((idx.size, *first.shape), dtype=np.uint8)
        for k in np.unique(rows[:, 0]):
            where = np.flatnonzero(rows[:, 0] == k)
            out[where] = _read_rows(self._file(int(k)), rows[where, 1])
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        if not -len(self) <= i < len(self):
            msg = f"index {i} out of range for {len(self)} pairs"
            raise IndexError(msg)
        i = int(i) % len(self)
        img = self.read_patch(i)
        if self.augment is not None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
            img = self.augment(img, np.random.default_rng(seed))
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
        if self.image_size is not None and x.shape[-1] != self.image_size:
            x = torch.nn.functional.interpolate(
                x[None],
                size=(self.image_size, self.image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )[0].clamp_(0.0, 1.0)
        if self.transform is not None:
            x = self.transform(x)
        row = self.obs.iloc[i]
        return {
            "image": x,
            "pathways": torch.from_numpy(self.pathways[i]),
            "index": i,
            "sample_id": row["sample_id"],
            "patient_id": row["patient_id"],
            "barcode": row["barcode"],
        }

    # ------------------------------------------------------------------ splits
    def split_by_patient(
        self,
        fractions: Mapping[str, float] | None = None,
        *,
        seed: int = 0,
        assignment: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, PairsDataset]:
        """Split into datasets that never share a patient.

        Parameters
        ----------
        fractions
            Split name → fraction of patients (default ``{'train': 0.8, 'val': 0.2}``);
            see [`split_by_patient`][stalign.pairs.split_by_patient].
        seed
            Seed of the deterministic patient shuffle.
        assignment
            Explicit split name → patient ids instead (e.g. ``{'train': ['mouse1'],
            'test': ['mouse2']}``).

        Returns
        -------
        dict[str, PairsDataset]
            One dataset per non-empty split, with this dataset's settings.
        """
        patients = self.obs["patient_id"].unique().tolist()
        assignment = assign_patients(patients, fractions, seed=seed, assignment=assignment)
        out: dict[str, PairsDataset] = {}
        for name, ps in assignment.items():
            if not ps:
                continue
            out[name] = self.subset(self.obs.index[self.obs["patient_id"].isin(ps)].to_numpy())
        return out

    def subset(self, indices: Sequence[int] | np.ndarray) -> PairsDataset:
        """Return a dataset of the pairs at ``indices`` (same settings, no copy of patches)."""
        idx = np.asarray(indices, dtype=np.int64)
        new = object.__new__(type(self))
        new.__dict__.update(self.__getstate__())
        new.obs = self.obs.iloc[idx].reset_index(drop=True)
        new.pathways = self.pathways[idx]
        new._rows = self._rows[idx]
        return new


@contextlib.contextmanager
def _shard_file(path: Path) -> Iterator[None]:
    """Turn HDF5's error on opening a damaged shard file into one naming the file."""
    try:
        yield
    except OSError as e:  # e.g. "Unable to synchronously open file (ring type mismatch…)"
        msg = (
            f"{path}: not a readable HDF5 file ({' '.join(str(e).split())}); the shard is "
            "damaged: run build-pairs again with --verify to rebuild it"
        )
        raise ValueError(msg) from e


def _read_rows(f: Any, rows: np.ndarray) -> np.ndarray:
    """Patches at ``rows`` of an open ``patches.h5``, in ``rows`` order.

    Raw stores: the sorted rows are split into runs of consecutive rows and each run
    is one slice read (h5py's fancy indexing costs a call per element). JPEG stores:
    one decode per patch.
    """
    img = f["img"]
    if img.attrs.get("encoding", "raw") == "jpeg":
        return np.stack([read_patch(f, int(r)) for r in rows])
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    out = np.empty((rows.size, *img.shape[1:]), dtype=np.uint8)
    breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1  # a repeated row starts a run
    pos = 0
    for run in np.split(sorted_rows, breaks):
        out[order[pos : pos + run.size]] = img[int(run[0]) : int(run[-1]) + 1]
        pos += run.size
    return out
