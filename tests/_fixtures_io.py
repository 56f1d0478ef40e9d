"""Builders of platform folders in their real on-disk layout, from real shared data.

No real Visium HD or HEST-1k sample is available offline, so these write one:

* :func:`build_visium_hd` bins the real Xenium mouse-brain cells (counts summed per
  square bin, positions from the real centroids in µm) into
  ``binned_outputs/square_XXXum/`` exactly as Space Ranger lays it out.
* :func:`build_hest_sample` writes a HEST-1k sample (``st/``, ``wsis/``, ``metadata/``)
  from a real MOB section: counts, spot pixels, and a pyramidal JPEG TIFF of the H&E.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

HD_MPP = 0.2737  # µm per full-res px, typical of a Visium HD CytAssist image


def write_10x_h5(path: Path, X: sp.csr_matrix, barcodes, gene_ids, gene_names) -> None:
    """Write a barcodes × genes matrix in the 10x feature-barcode HDF5 layout (CSC)."""
    Xc = sp.csc_matrix(X.T.astype(np.int32))  # 10x stores genes × barcodes, CSC by barcode
    with h5py.File(path, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["version"] = 2
        g = f.create_group("matrix")
        g["barcodes"] = np.asarray(barcodes, dtype="S")
        g["data"] = Xc.data
        g["indices"] = Xc.indices.astype(np.int64)
        g["indptr"] = Xc.indptr.astype(np.int64)
        g["shape"] = np.asarray(Xc.shape, dtype=np.int32)
        feats = g.create_group("features")
        feats["id"] = np.asarray(gene_ids, dtype="S")
        feats["name"] = np.asarray(gene_names, dtype="S")
        feats["feature_type"] = np.asarray(["Gene Expression"] * len(gene_ids), dtype="S")
        feats["genome"] = np.asarray(["mm10"] * len(gene_ids), dtype="S")
        feats["_all_tag_keys"] = np.asarray([b"genome"])


def load_xenium_window(xenium_dir: Path, size_um: float = 600.0):
    """Real Xenium cells (gene-expression counts, centroids µm) in a dense square window."""
    import scanpy as sc

    a = sc.read_10x_h5(xenium_dir / "cell_feature_matrix.h5")
    cells = pd.read_csv(xenium_dir / "cells.csv.gz", index_col="cell_id")
    cells.index = cells.index.astype(str)
    cells = cells.loc[a.obs_names]
    xy = cells[["x_centroid", "y_centroid"]].to_numpy()
    x0, y0 = np.median(xy, axis=0) - size_um / 2
    inside = (
        (xy[:, 0] >= x0) & (xy[:, 0] < x0 + size_um) & (xy[:, 1] >= y0) & (xy[:, 1] < y0 + size_um)
    )
    X = sp.csr_matrix(a.X[inside]).astype(np.int64)
    return X, xy[inside] - [x0, y0], a.var["gene_ids"].to_numpy(), a.var_names.to_numpy()


def build_visium_hd(out: Path, xenium_dir: Path, bin_sizes=(8, 16), size_um: float = 600.0) -> dict:
    """Write ``out/binned_outputs/square_XXXum/`` from real Xenium cells; return the truth."""
    from PIL import Image

    X, xy_um, gene_ids, names = load_xenium_window(xenium_dir, size_um)
    truth = {"total": int(X.sum()), "n_cells": X.shape[0], "bins": {}}
    side_px = int(np.ceil(size_um / HD_MPP))
    # a real-data picture: transcript density of the cells (H&E-like pink on white)
    hires_scalef = 2000 / side_px if side_px > 2000 else 1.0
    hs = round(side_px * hires_scalef)
    dens, _, _ = np.histogram2d(
        xy_um[:, 1] / HD_MPP * hires_scalef,
        xy_um[:, 0] / HD_MPP * hires_scalef,
        bins=hs,
        range=[[0, hs], [0, hs]],
        weights=np.asarray(X.sum(axis=1)).ravel(),
    )
    from scipy.ndimage import gaussian_filter

    d = gaussian_filter(dens, 6)
    d = d / (d.max() or 1)
    rgb = np.stack([255 - 60 * d, 255 - 200 * d, 255 - 90 * d], axis=-1).astype(np.uint8)
    for b in bin_sizes:
        folder = out / "binned_outputs" / f"square_{b:03d}um"
        (folder / "spatial").mkdir(parents=True)
        n = int(np.ceil(size_um / b))
        col = np.floor(xy_um[:, 0] / b).astype(int)
        row = np.floor(xy_um[:, 1] / b).astype(int)
        flat = row * n + col
        uniq, inv = np.unique(flat, return_inverse=True)
        agg = sp.csr_matrix(
            (np.ones(len(flat)), (inv, np.arange(len(flat)))), shape=(len(uniq), len(flat))
        )
        Xb = sp.csr_matrix(agg @ X)
        r, c = np.divmod(uniq, n)
        bcs = [f"s_{b:03d}um_{ri:05d}_{ci:05d}-1" for ri, ci in zip(r, c, strict=True)]
        write_10x_h5(folder / "filtered_feature_bc_matrix.h5", Xb, bcs, gene_ids, names)
        rr, cc = np.divmod(np.arange(n * n), n)
        pos = pd.DataFrame(
            {
                "barcode": [
                    f"s_{b:03d}um_{ri:05d}_{ci:05d}-1" for ri, ci in zip(rr, cc, strict=True)
                ],
                "in_tissue": np.isin(np.arange(n * n), uniq).astype(int),
                "array_row": rr,
                "array_col": cc,
                "pxl_row_in_fullres": (rr + 0.5) * b / HD_MPP,
                "pxl_col_in_fullres": (cc + 0.5) * b / HD_MPP,
            }
        )
        pos.to_parquet(folder / "spatial" / "tissue_positions.parquet", index=False)
        sf = {
            "spot_diameter_fullres": b / HD_MPP,
            "bin_size_um": float(b),
            "microns_per_pixel": HD_MPP,
            "regist_target_img_scalef": hires_scalef,
            "tissue_lowres_scalef": hires_scalef * 600 / hs,
            "fiducial_diameter_fullres": 1000.0,
            "tissue_hires_scalef": hires_scalef,
        }
        (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
        Image.fromarray(rgb).save(folder / "spatial" / "tissue_hires_image.png")
        Image.fromarray(rgb).resize((600, 600)).save(folder / "spatial" / "tissue_lowres_image.png")
        truth["bins"][b] = {"X": Xb, "barcodes": bcs, "row": r, "col": c}
    return truth


def build_hest_sample(root: Path, mob_dir: Path, section: str = "MOB2", upscale: int = 2) -> dict:
    """Write a HEST-1k sample (``st/``, ``wsis/``, ``metadata/``) from a real MOB section."""
    import anndata as ad
    import tifffile
    from PIL import Image
    from scipy.spatial import cKDTree

    counts = pd.read_csv(mob_dir / f"{section}.tsv.gz", sep="\t", index_col=0)
    tab = pd.read_csv(mob_dir / f"alignment_table_{section}.tsv", sep="\t")
    tab.index = tab.x.astype(str) + "x" + tab.y.astype(str)
    counts = counts.loc[counts.index.intersection(tab.index)]
    pix = tab.loc[counts.index, ["pixel_x", "pixel_y"]].to_numpy() * upscale
    # pixel size from the diagonal-neighbour distance (100·√2 µm on the MOB grid)
    allpix = tab[["pixel_x", "pixel_y"]].to_numpy() * upscale
    d, _ = cKDTree(allpix).query(allpix, k=2)
    mpp = 100 * np.sqrt(2) / float(np.median(d[:, 1]))
    a = ad.AnnData(
        X=sp.csr_matrix(counts.to_numpy(np.float32)),
        obs=pd.DataFrame(index=counts.index),
        var=pd.DataFrame(index=counts.columns),
    )
    a.obsm["spatial"] = pix
    sid = f"ST_{section}"
    for sub in ("st", "wsis", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    a.write_h5ad(root / "st" / f"{sid}.h5ad")
    img = Image.open(mob_dir / f"{section}.jpg").convert("RGB")
    img = np.asarray(
        img.resize((img.width * upscale, img.height * upscale), Image.Resampling.BICUBIC)
    )
    res = 1e4 / mpp  # px per cm
    with tifffile.TiffWriter(root / "wsis" / f"{sid}.tif") as tif:
        opts = {"tile": (256, 256), "compression": "jpeg", "photometric": "rgb"}
        tif.write(img, subifds=2, resolution=(res, res), resolutionunit="CENTIMETER", **opts)
        for k in (2, 4):
            lvl = np.asarray(Image.fromarray(img).reduce(k))
            tif.write(lvl, subfiletype=1, **opts)
    meta = {
        "dataset_title": f"Mouse olfactory bulb {section} (Ståhl et al. 2016)",
        "st_technology": "Spatial Transcriptomics",
        "pixel_size_um_estimated": mpp,
        "pixel_size_um_embedded": mpp,
        "spot_diameter": 100.0,
        "inter_spot_dist": 200.0,
        "species": "Mus musculus",
    }
    (root / "metadata" / f"{sid}.json").write_text(json.dumps(meta, indent=1))
    return {"sample_id": sid, "mpp": mpp, "counts": counts, "pix": pix, "size": img.shape[:2]}
