"""10x feature-barcode matrices (HDF5 or Matrix Market folder) → counts, barcodes, genes."""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._core import is_gzip, read_table

logger = logging.getLogger(__name__)


@dataclass
class Matrix:
    """A feature-barcode matrix: ``X`` barcodes × genes, plus ids and symbols."""

    X: sp.csr_matrix
    barcodes: pd.Index
    gene_ids: np.ndarray
    gene_symbols: np.ndarray
    feature_types: np.ndarray | None
    source: Path


def read_10x_h5(path: Path) -> Matrix:
    """Read a Cell/Space/Xenium Ranger ``*.h5`` matrix (gene expression only) via scanpy."""
    import scanpy as sc

    try:
        a = sc.read_10x_h5(path, gex_only=True)
    except (OSError, KeyError, ValueError) as e:
        msg = (
            f"{path}: cannot read a 10x feature-barcode HDF5 matrix "
            f"(expected groups 'matrix/…' as written by Space/Xenium Ranger): {e}"
        )
        raise ValueError(msg) from e
    ids = a.var["gene_ids"].to_numpy(str) if "gene_ids" in a.var else a.var_names.to_numpy(str)
    # scanpy made var_names unique with "-1" suffixes; recover the raw symbols from the file
    symbols = _h5_feature_names(path, len(ids), ids)
    ftypes = a.var["feature_types"].to_numpy(str) if "feature_types" in a.var else None
    return Matrix(
        X=sp.csr_matrix(a.X),
        barcodes=pd.Index(a.obs_names.astype(str)),
        gene_ids=ids,
        gene_symbols=symbols,
        feature_types=ftypes,
        source=path,
    )


def _h5_feature_names(path: Path, n: int, ids: np.ndarray) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        grp = f["matrix"] if "matrix" in f else f[next(iter(f.keys()))]
        feats = grp["features"] if "features" in grp else grp
        names_key = "name" if "name" in feats else "gene_names"
        all_ids = feats["id" if "id" in feats else "genes"][:].astype(str)
        names = feats[names_key][:].astype(str)
    lookup = dict(zip(all_ids, names, strict=False))
    return np.array([lookup.get(i, i) for i in ids], dtype=object)


def _open(path: Path):
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def _first(folder: Path, names: list[str]) -> Path | None:
    for n in names:
        for cand in (folder / n, folder / f"{n}.gz"):
            if cand.is_file():
                return cand
    return None


def read_10x_mtx(folder: Path) -> Matrix:
    """Read a ``*_feature_bc_matrix/`` folder (v3 ``features.tsv`` or v2 ``genes.tsv``).

    Files may be gzipped or not. (``scanpy.read_10x_mtx`` requires gzip for the v3 layout,
    so the three small files are parsed here with ``scipy.io.mmread`` and pandas.)
    """
    import scipy.io

    mtx = _first(folder, ["matrix.mtx"])
    feats = _first(folder, ["features.tsv", "genes.tsv"])
    bcs = _first(folder, ["barcodes.tsv"])
    missing = [
        n
        for n, p in (("matrix.mtx", mtx), ("features.tsv", feats), ("barcodes.tsv", bcs))
        if p is None
    ]
    if missing:
        msg = (
            f"{folder}: expected a 10x matrix folder with matrix.mtx, features.tsv (or "
            f"genes.tsv) and barcodes.tsv (optionally .gz), missing {missing}"
        )
        raise FileNotFoundError(msg)
    try:
        with _open(mtx) as fh:  # type: ignore[arg-type]
            X = sp.csr_matrix(scipy.io.mmread(fh)).T.tocsr()  # file is genes × barcodes
    except (ValueError, OSError, EOFError) as e:
        msg = f"{mtx}: cannot parse the Matrix Market file ({type(e).__name__}: {e})"
        raise ValueError(msg) from e
    genes = read_table(feats, what="features table", sep="\t", header=None, dtype=str)  # type: ignore[arg-type]
    barcodes = read_table(bcs, what="barcodes list", sep="\t", header=None, dtype=str)[0]  # type: ignore[arg-type]
    if X.shape != (len(barcodes), len(genes)):
        msg = (
            f"{mtx}: expected a {len(genes)} genes × {len(barcodes)} barcodes matrix "
            f"(from {feats.name} and {bcs.name}), found {X.shape[1]} × {X.shape[0]}"
        )
        raise ValueError(msg)
    ftypes = genes[2].to_numpy(str) if genes.shape[1] > 2 else None
    if ftypes is not None:
        keep = ftypes == "Gene Expression"
        if not keep.all():
            X, genes, ftypes = X[:, keep], genes[keep], ftypes[keep]
    symbols = genes[1].to_numpy(object) if genes.shape[1] > 1 else genes[0].to_numpy(object)
    return Matrix(
        X=X,
        barcodes=pd.Index(barcodes.to_numpy(str)),
        gene_ids=genes[0].to_numpy(str),
        gene_symbols=symbols,
        feature_types=ftypes,
        source=folder,
    )


def read_matrix(path: Path) -> Matrix:
    """Read a 10x matrix from an ``.h5`` file or a Matrix Market folder."""
    if path.is_dir():
        return read_10x_mtx(path)
    return read_10x_h5(path)
