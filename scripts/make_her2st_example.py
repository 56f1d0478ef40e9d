"""Make the reduced copy of her2st patient C that ships in ``data/examples/her2st_C/``.

Source: ``../shared/data/her2st_patient_C/`` (5 sections C2-C6, full-resolution H&E at
≈0.69 µm/px, ~15,700 genes). The copy keeps every spot and every raw count of every gene
detected in at least one spot of the five sections; each H&E is cropped to the spots'
bounding box plus a 150 µm margin and down-sampled by 2 (≈1.38 µm/px, Lanczos), then
JPEG-encoded (quality 80). Pixel coordinates are transformed with the image, so
µm/px is still estimated from the array grid. Run from the repository root::

    python scripts/make_her2st_example.py ../shared/data/her2st_patient_C data/examples/her2st_C
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

SECTIONS = ("C2", "C3", "C4", "C5", "C6")
FACTOR = 0.5  # image down-sampling
MARGIN_PX = 220  # source px (≈150 µm at 0.69 µm/px) around the outermost spot centres
QUALITY = 80


def main(src: Path, dst: Path) -> None:
    """Write the reduced copy of the sections in ``src`` into ``dst``."""
    Image.MAX_IMAGE_PIXELS = None
    dst.mkdir(parents=True, exist_ok=True)
    counts = {s: pd.read_csv(src / f"{s}.tsv.gz", sep="\t", index_col=0) for s in SECTIONS}
    detected = pd.concat([(c > 0).any(axis=0) for c in counts.values()], axis=1).any(axis=1)
    keep = set(detected.index[detected.fillna(False).astype(bool)])
    for s in SECTIONS:
        spots = pd.read_csv(src / f"{s}_spots.tsv", sep="\t")
        image = Image.open(src / f"{s}.jpg")
        x0 = max(int(np.floor(spots.pixel_x.min())) - MARGIN_PX, 0)
        y0 = max(int(np.floor(spots.pixel_y.min())) - MARGIN_PX, 0)
        x1 = min(int(np.ceil(spots.pixel_x.max())) + MARGIN_PX, image.width)
        y1 = min(int(np.ceil(spots.pixel_y.max())) + MARGIN_PX, image.height)
        crop = image.crop((x0, y0, x1, y1))
        size = (round(crop.width * FACTOR), round(crop.height * FACTOR))
        crop.resize(size, Image.LANCZOS).save(
            dst / f"{s}.jpg", "JPEG", quality=QUALITY, optimize=True
        )
        spots["pixel_x"] = ((spots.pixel_x - x0) * FACTOR).round(2)
        spots["pixel_y"] = ((spots.pixel_y - y0) * FACTOR).round(2)
        spots.to_csv(dst / f"{s}_spots.tsv", sep="\t", index=False)
        c = counts[s]
        c = c[[g for g in c.columns if g in keep]]
        with gzip.open(dst / f"{s}.tsv.gz", "wt", compresslevel=9) as fh:
            c.to_csv(fh, sep="\t")
        print(f"{s}: {len(spots)} spots, {c.shape[1]} genes, image {size[0]}×{size[1]} px")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
