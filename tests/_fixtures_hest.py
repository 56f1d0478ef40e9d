"""A HEST-1k folder of three real MOB sections, in HEST's own layout.

``st/``, ``wsis/``, ``metadata/`` come from :func:`_fixtures_io.build_hest_sample`
(restricted to the spots nearest the section centre, to keep the patch files small);
this adds what a HEST download also holds: ``HEST_v1_1_0.csv``,
``patches/<id>.h5`` (256 px at 0.5 µm/px, top-left ``coords``, ``(n, 1)`` byte
barcodes, ``img.attrs['patch_size_target']``: what HEST's patcher writes) and
``tissue_seg/`` (GeoJSON contours for two samples, a mask JPEG for the third, and a
``.pkl`` that must never be loaded).
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from _fixtures_io import build_hest_sample

SECTIONS = {"MOB1": "animal 1", "MOB2": "animal 1", "MOB3": ""}  # MOB3: no patient field


def _hest_patches(path: Path, wsi: Path, a: ad.AnnData, mpp0: float, size: int = 256) -> None:
    from stalign import im

    slide = im.open_image(wsi, mpp=mpp0)
    with slide:
        imgs, _ = slide.read_patches(a.obsm["spatial"], size_px=size, mpp=0.5)
    side0 = size * 0.5 / mpp0
    topleft = (a.obsm["spatial"] - side0 // 2).astype(np.int64)
    with h5py.File(path, "w") as f:  # HEST's layout, incl. its lack of an mpp attribute
        f.create_dataset("img", data=imgs, chunks=(1, size, size, 3))
        f["img"].attrs["patch_size_target"] = size
        f.create_dataset("coords", data=topleft)
        f.create_dataset("barcode", data=np.array([[b.encode()] for b in a.obs_names]))


def _contours(a: ad.AnnData, side0: float) -> dict:
    """Tissue polygon: the box around the spots, with a hole over one corner spot."""
    lo, hi = a.obsm["spatial"].min(0) - side0, a.obsm["spatial"].max(0) + side0
    hole_c = a.obsm["spatial"][np.argmin(a.obsm["spatial"].sum(1))]
    hole = [
        [float(hole_c[0] + dx), float(hole_c[1] + dy)]
        for dx, dy in [
            (-side0, -side0),
            (side0, -side0),
            (side0, side0),
            (-side0, side0),
            (-side0, -side0),
        ]
    ]
    box = [
        [float(lo[0]), float(lo[1])],
        [float(hi[0]), float(lo[1])],
        [float(hi[0]), float(hi[1])],
        [float(lo[0]), float(hi[1])],
        [float(lo[0]), float(lo[1])],
    ]
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"tissue_id": 0},
                "geometry": {"type": "Polygon", "coordinates": [box, hole[::-1]]},
            }
        ],
    }


def _symbols(mob_dir: Path, ids: pd.Index) -> pd.Index:
    table = pd.read_csv(mob_dir / "mouse_genes.tsv.gz", sep="\t", index_col=0)["gene_name"]
    table.index = table.index.str.split(".").str[0]
    names = [str(table.get(i.split(".")[0], i)) for i in ids]
    return ad.utils.make_index_unique(pd.Index(names))


def build_hest_folder(root: Path, mob_dir: Path, n_spots: int = 60) -> dict:
    """Write the folder; return ``{sample_id: {'mpp', 'n', 'hole_spot'}}``."""
    from PIL import Image

    truth: dict[str, dict] = {}
    rows = []
    for section, patient in SECTIONS.items():
        t = build_hest_sample(root, mob_dir, section)
        sid, mpp0 = t["sample_id"], t["mpp"]
        h5ad = root / "st" / f"{sid}.h5ad"
        a = ad.read_h5ad(h5ad)
        centre = np.median(a.obsm["spatial"], axis=0)
        near = np.argsort(np.hypot(*(a.obsm["spatial"] - centre).T))[:n_spots]
        a = a[np.sort(near)].copy()
        a.var_names = _symbols(mob_dir, a.var_names)  # HEST's st/ files use gene symbols
        a.write_h5ad(h5ad)
        wsi = root / "wsis" / f"{sid}.tif"
        (root / "patches").mkdir(exist_ok=True)
        _hest_patches(root / "patches" / f"{sid}.h5", wsi, a, mpp0)
        seg = root / "tissue_seg"
        seg.mkdir(exist_ok=True)
        side0 = 224 * 0.5 / mpp0
        h, w = t["size"]
        if section != "MOB3":
            (seg / f"{sid}_contours.geojson").write_text(json.dumps(_contours(a, side0)))
        else:  # a down-scaled mask image: everything right of the section centre is tissue
            mask = np.zeros((h // 8, w // 8), np.uint8)
            mask[:, round(centre[0] / 8) :] = 255
            Image.fromarray(mask).save(seg / f"{sid}_mask.jpg", quality=95)
        (seg / f"{sid}_mask.pkl").write_bytes(b"\x80\x04not a pickle anyone should load")
        meta = json.loads((root / "metadata" / f"{sid}.json").read_text())
        meta.update({"id": sid, "fullres_px_width": w, "fullres_px_height": h})
        (root / "metadata" / f"{sid}.json").write_text(json.dumps(meta))
        rows.append(
            {
                "dataset_title": "Mouse olfactory bulb (Ståhl et al. 2016)",
                "id": sid,
                "organ": "Brain",
                "species": "Mus musculus",
                "patient": patient,
                "st_technology": "Spatial Transcriptomics",
                "license": "MIT",
                "study_link": "https://doi.org/10.1126/science.aaf2403",
                "pixel_size_um_estimated": mpp0,
                "fullres_px_width": w,
                "fullres_px_height": h,
            }
        )
        truth[sid] = {
            "mpp": mpp0,
            "n": a.n_obs,
            "centre_x": float(centre[0]),
            "xy": a.obsm["spatial"],
            "barcodes": list(a.obs_names),
        }
    pd.DataFrame(rows).to_csv(root / "HEST_v1_1_0.csv", index=False)
    return truth
