"""stalign.io.read_visium on the bundled real Visium samples and broken copies of them."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stalign import _keys as K
from stalign.io import MppMismatchWarning, read_visium


@pytest.fixture
def heart(examples_dir, tmp_path):
    dst = tmp_path / "heart"
    shutil.copytree(examples_dir / "visium_human_heart", dst)
    return dst


@pytest.fixture
def brain(examples_dir, tmp_path):
    dst = tmp_path / "brain"
    shutil.copytree(examples_dir / "visium_mouse_brain", dst)
    return dst


def _positions_v1(folder):
    return pd.read_csv(folder / "spatial" / "tissue_positions_list.csv", header=None, index_col=0)


def test_heart_h5_v1_positions(examples_dir):
    folder = examples_dir / "visium_human_heart"
    a = read_visium(folder)
    assert a.shape == (100, 100)
    assert sp.issparse(a.X) and (a.layers[K.COUNTS_LAYER] != a.X).nnz == 0
    assert a.var[K.GENE_IDS].str.startswith("ENSG").all()
    pos = _positions_v1(folder)
    # x = pxl_col_in_fullres (column 5), y = pxl_row_in_fullres (column 4), joined by barcode
    np.testing.assert_array_equal(a.obsm[K.SPATIAL], pos.loc[a.obs_names, [5, 4]].to_numpy())
    np.testing.assert_array_equal(a.obs[K.IN_TISSUE], pos.loc[a.obs_names, 1].to_numpy() == 1)
    st = a.uns[K.STALIGN]
    sf = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
    assert st[K.MPP] == pytest.approx(55.0 / sf["spot_diameter_fullres"])
    assert st[K.MPP_SOURCE] == "scalefactors" and st[K.IMAGE_PATH] is None
    assert st[K.PLATFORM] == "visium" and st[K.SPOT_DIAMETER_UM] == 55.0
    lib = a.uns[K.SPATIAL][st[K.LIBRARY_ID]]
    # the black hires placeholder is skipped, the real lowres H&E kept
    assert set(lib[K.IMAGES]) == {"lowres"}
    assert lib[K.IMAGES]["lowres"].shape == (600, 600, 3)
    assert lib[K.SCALEFACTORS][K.SF_LOWRES] == sf["tissue_lowres_scalef"]


def test_brain_plain_mtx_raw(examples_dir):
    folder = examples_dir / "visium_mouse_brain"
    a = read_visium(folder)
    assert a.shape == (50, 50)
    assert a.var_names[0] == "Xkr4" and a.var[K.GENE_IDS].iloc[0] == "ENSMUSG00000051951"
    mtx = (folder / "raw_feature_bc_matrix" / "matrix.mtx").read_text().splitlines()
    entries = [line.split() for line in mtx if not line.startswith("%")][1:]
    assert a.X.sum() == pytest.approx(sum(float(e[2]) for e in entries))


def test_gzipped_mtx_v2_csv_and_parquet(brain):
    # Space Ranger 2.x: gzipped matrix files, tissue_positions.csv with header, then parquet
    mdir = brain / "raw_feature_bc_matrix"
    for name in ("matrix.mtx", "features.tsv", "barcodes.tsv"):
        with open(mdir / name, "rb") as src, gzip.open(mdir / f"{name}.gz", "wb") as dst:
            dst.write(src.read())
        (mdir / name).unlink()
    old = brain / "spatial" / "tissue_positions_list.csv"
    pos = pd.read_csv(old, header=None)
    pos.columns = [
        "barcode",
        "in_tissue",
        "array_row",
        "array_col",
        "pxl_row_in_fullres",
        "pxl_col_in_fullres",
    ]
    pos.to_csv(brain / "spatial" / "tissue_positions.csv", index=False)
    old.unlink()
    a = read_visium(brain, library_id="b")
    assert a.shape == (50, 50) and "b" in a.uns[K.SPATIAL]
    (brain / "spatial" / "tissue_positions.csv").unlink()
    pos.sample(frac=1.0, random_state=0).to_parquet(brain / "spatial" / "tissue_positions.parquet")
    b = read_visium(brain)
    np.testing.assert_array_equal(a.obsm[K.SPATIAL], b.obsm[K.SPATIAL])  # joined by barcode


def test_full_resolution_image_and_mpp_mismatch(brain, tmp_path):
    import tifffile

    sf = json.loads((brain / "spatial" / "scalefactors_json.json").read_text())
    from PIL import Image

    low = np.asarray(Image.open(brain / "spatial" / "tissue_lowres_image.png").convert("RGB"))
    # a full-res stand-in: the real lowres H&E upscaled back to level-0 size, 1 µm/px tags
    s = sf["tissue_lowres_scalef"]
    full = np.asarray(
        Image.fromarray(low).resize((round(low.shape[1] / s), round(low.shape[0] / s)))
    )
    tif = tmp_path / "full.tif"
    tifffile.imwrite(tif, full, tile=(256, 256), resolution=(1e4, 1e4), resolutionunit="CENTIMETER")
    with pytest.warns(MppMismatchWarning, match="scalefactors=0.6149 vs tiff_metadata=1"):
        a = read_visium(brain, image=tif, load_images=False)
    assert a.uns[K.STALIGN][K.IMAGE_PATH] == str(tif.resolve())
    assert a.uns[K.STALIGN][K.MPP_SOURCE] == "scalefactors"


def test_missing_scalefactors(heart):
    (heart / "spatial" / "scalefactors_json.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"scalefactors_json\.json"):
        read_visium(heart)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", r"expected JSON scale factors"),
        (
            '{"tissue_hires_scalef": 0.15, "tissue_lowres_scalef": 0.05}',
            r"missing \['spot_diameter_fullres'\]",
        ),
        (
            '{"spot_diameter_fullres": -3, "tissue_hires_scalef": 0.15, '
            '"tissue_lowres_scalef": 0.05}',
            r"'spot_diameter_fullres' to be a positive number, found -3",
        ),
    ],
)
def test_malformed_scalefactors(heart, content, match):
    (heart / "spatial" / "scalefactors_json.json").write_text(content)
    with pytest.raises(ValueError, match=match):
        read_visium(heart)


def test_positions_not_matching_barcodes(brain):
    path = brain / "spatial" / "tissue_positions_list.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-5]))  # 5 barcodes lose their position
    with pytest.raises(
        ValueError, match=r"5 of 50 barcodes .* have no row in .*tissue_positions_list"
    ):
        read_visium(brain)
    a = read_visium(brain, missing_positions="drop")
    assert a.n_obs == 45


def test_duplicate_barcodes(brain):
    path = brain / "raw_feature_bc_matrix" / "barcodes.tsv"
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = lines[2]
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"raw_feature_bc_matrix: expected unique barcodes"):
        read_visium(brain)


def test_negative_and_non_integer_counts(brain):
    path = brain / "raw_feature_bc_matrix" / "matrix.mtx"
    text = path.read_text().splitlines()
    header_end = next(i for i, line in enumerate(text) if not line.startswith("%")) + 1
    row = text[header_end].split()
    # normalised values written as a "real" Matrix Market file
    text[0] = text[0].replace("integer", "real")
    text[header_end] = f"{row[0]} {row[1]} 2.5"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"expected raw integer counts, found 1 non-integer"):
        read_visium(brain)
    text[header_end] = f"{row[0]} {row[1]} -4"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"expected non-negative raw counts"):
        read_visium(brain)


def test_coordinates_outside_image(brain):
    path = brain / "spatial" / "tissue_positions_list.csv"
    pos = pd.read_csv(path, header=None)
    pos.iloc[0, 5] = 10**6  # column far beyond the 600 px / 0.051 frame
    pos.to_csv(path, header=False, index=False)
    with pytest.raises(ValueError, match=r"1 of 50 spot centres lie outside the image"):
        read_visium(brain)


def test_truncated_png(brain):
    png = brain / "spatial" / "tissue_lowres_image.png"
    data = png.read_bytes()
    png.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"tissue_lowres_image.png: cannot decode the image data"):
        read_visium(brain)


def test_not_a_spaceranger_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no feature-barcode matrix found; looked for"):
        read_visium(tmp_path)
