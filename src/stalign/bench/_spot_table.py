"""The spot table of a pairs store: counts, pathway scores and spot centres in one row order.

Read sample by sample through the store's files (`stalign.pairs.PairsDataset` gives the
rows); the HEST gene panel is chosen while streaming, by the one rule of `_genes`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._genes import panel_from_blocks

__all__ = ["OTHER_COUNTS", "PairsArrays", "load_pairs_arrays"]


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


def _pairs_table(ds: Any, root: str | os.PathLike, *, patches: bool) -> PairsArrays:
    """Read counts (joined on barcodes), pathway scores and spot centres in ``ds``'s order."""
    import anndata as ad
    import scipy.sparse as sp

    from ..pairs import PAIRS_H5AD

    obs = ds.obs[["sample_id", "patient_id", "barcode"]].reset_index(drop=True)
    parts, coords, genes = [], [], None
    index = {s["sample_id"]: s for s in ds.index_json["samples"]}
    for sid in dict.fromkeys(obs["sample_id"]):
        a = ad.read_h5ad(Path(root) / index[sid]["path"] / PAIRS_H5AD)
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

        from ..pairs import PAIRS_H5AD

        entry = next(s for s in ds.index_json["samples"] if s["sample_id"] == sid)
        path = Path(root) / entry["path"] / PAIRS_H5AD
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


def _streamed_panel(files: Sequence[_SampleFile], genes: list[str], n: int, what: str) -> list[str]:
    """Choose the HEST panel (`panel_from_blocks`), reading one sample at a time."""

    def blocks(cols: np.ndarray | None):
        names = genes if cols is None else [genes[i] for i in cols]
        for file in files:
            yield file.counts(names)

    return [genes[i] for i in panel_from_blocks(blocks, n, len(genes), what=what)]


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
    panel = _streamed_panel(files, genes, len(obs), what=f"the counts of {root}")
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
