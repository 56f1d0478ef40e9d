"""Reader faults found by a bad-input battery on copies of the MOB / Visium / Xenium data.

Each damaged copy must give one clear line that names the file at fault.
"""

from __future__ import annotations

import gzip
import logging
import shutil

import numpy as np
import pandas as pd
import pytest

from stalign import _keys as K
from stalign.io import read_legacy_st, read_visium, read_xenium

SECTION = "MOB4"


@pytest.fixture
def section(mob_dir, tmp_path):
    for name in (f"{SECTION}.tsv.gz", f"alignment_table_{SECTION}.tsv", f"{SECTION}.jpg"):
        shutil.copy(mob_dir / name, tmp_path / name)
    return tmp_path / SECTION


def _alignment(section):
    return section.parent / f"alignment_table_{SECTION}.tsv"


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_all_spot_coordinates_identical_is_an_error(section):
    path = _alignment(section)
    tab = pd.read_csv(path, sep="\t")
    tab["pixel_x"], tab["pixel_y"] = 812.0, 640.5
    tab.to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"same pixel coordinates") as err:
        read_legacy_st(section, load_images=False)
    assert str(path) in _one_line(err)


def test_pixel_coordinates_constant_along_one_axis_is_an_error(section):
    path = _alignment(section)
    tab = pd.read_csv(path, sep="\t")
    tab["pixel_y"] = 640.5  # pixel_x still varies
    tab.to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"do not follow the spot array") as err:
        read_legacy_st(section, load_images=False)
    assert str(path) in _one_line(err)


def test_nan_pixel_coordinate_names_the_alignment_table(section):
    path = _alignment(section)
    tab = pd.read_csv(path, sep="\t")
    # a spot that the counts table does not hold: it only enters the grid fit
    ids = tab.x.astype(str) + "x" + tab.y.astype(str)
    counts = pd.read_csv(f"{section}.tsv.gz", sep="\t", index_col=0, usecols=[0])
    row = int(np.flatnonzero(~ids.isin(counts.index))[0])
    tab.loc[row, "pixel_x"] = np.nan
    tab.to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"expected finite x, y, pixel_x, pixel_y") as err:
        read_legacy_st(section, load_images=False)
    text = _one_line(err)
    assert text.startswith(str(path)) and f"{SECTION}.tsv.gz" not in text
    assert f"lines [{row + 2}]" in text


@pytest.mark.parametrize("which", ["counts", "alignment"])
def test_empty_file_is_named(section, which):
    path = section.parent / (
        f"{SECTION}.tsv.gz" if which == "counts" else f"alignment_table_{SECTION}.tsv"
    )
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"found an empty file") as err:
        read_legacy_st(section, load_images=False)
    assert _one_line(err).startswith(str(path))


def test_empty_gzip_counts_is_named(section):
    path = section.parent / f"{SECTION}.tsv.gz"
    path.write_bytes(gzip.compress(b""))
    with pytest.raises(ValueError, match=r"found an empty file") as err:
        read_legacy_st(section, load_images=False)
    assert _one_line(err).startswith(str(path))


def test_header_only_alignment_table_is_named(section):
    path = _alignment(section)
    path.write_text(path.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=r"found a header without rows") as err:
        read_legacy_st(section, load_images=False)
    assert _one_line(err).startswith(str(path))


@pytest.mark.parametrize("which", ["counts", "alignment"])
def test_non_utf8_table_is_named(section, which):
    if which == "counts":
        path = section.parent / f"{SECTION}.tsv.gz"
        df = pd.read_csv(path, sep="\t", index_col=0)
        df = df.rename(columns={df.columns[3]: "Gène"})
        path.write_bytes(gzip.compress(df.to_csv(sep="\t").encode("latin-1")))
    else:
        path = _alignment(section)
        tab = pd.read_csv(path, sep="\t")
        tab["note"] = "périphérie"
        path.write_bytes(tab.to_csv(sep="\t", index=False).encode("latin-1"))
    with pytest.raises(ValueError, match=r"expected UTF-8 text .*non-UTF-8 byte 0x(e8|e9)") as err:
        read_legacy_st(section, load_images=False)
    assert _one_line(err).startswith(str(path))


def test_duplicate_gene_columns_are_kept_and_reported(section, caplog):
    path = section.parent / f"{SECTION}.tsv.gz"
    df = pd.read_csv(path, sep="\t", index_col=0)
    genes = list(df.columns)
    dup = genes[5]
    genes[9] = dup  # the same gene column twice, as written by a broken export
    df.columns = genes
    df.to_csv(path, sep="\t")
    with caplog.at_level(logging.WARNING, logger="stalign.io"):
        a = read_legacy_st(section, load_images=False)
    warned = [r.getMessage() for r in caplog.records if "occur more than once" in r.getMessage()]
    assert len(warned) == 1 and str(path) in warned[0] and dup in warned[0]
    # both columns kept under their real id (no pandas '.1' id), names made unique
    ids = a.var[K.GENE_IDS].to_numpy()
    assert (ids == dup).sum() == 2 and f"{dup}.1" not in set(ids)
    assert a.var_names.is_unique
    spot = a.obs_names[0]
    np.testing.assert_array_equal(
        a[spot, np.flatnonzero(ids == dup)].X.toarray().ravel(),
        df.loc[spot].iloc[[5, 9]].to_numpy(),
    )


def test_visium_empty_and_non_utf8_positions_are_named(examples_dir, tmp_path):
    folder = tmp_path / "brain"
    shutil.copytree(examples_dir / "visium_mouse_brain", folder)
    pos = folder / "spatial" / "tissue_positions_list.csv"
    original = pos.read_bytes()
    pos.write_bytes(b"")
    with pytest.raises(ValueError, match=r"found an empty file") as err:
        read_visium(folder, load_images=False)
    assert _one_line(err).startswith(str(pos))
    pos.write_bytes(original.replace(b"\n", b",\xe9\n", 1))
    with pytest.raises(ValueError, match=r"expected UTF-8 text") as err:
        read_visium(folder, load_images=False)
    assert _one_line(err).startswith(str(pos))
    pos.write_bytes(original)
    feats = folder / "raw_feature_bc_matrix" / "features.tsv"
    feats.write_bytes(b"")
    with pytest.raises(ValueError, match=r"found an empty file") as err:
        read_visium(folder, load_images=False)
    assert _one_line(err).startswith(str(feats))


def test_visium_identical_positions_is_an_error(examples_dir, tmp_path):
    folder = tmp_path / "heart"
    shutil.copytree(examples_dir / "visium_human_heart", folder)
    pos = folder / "spatial" / "tissue_positions_list.csv"
    tab = pd.read_csv(pos, header=None)
    tab[4], tab[5] = 1000, 1200
    tab.to_csv(pos, header=False, index=False)
    with pytest.raises(ValueError, match=r"same pixel coordinates") as err:
        read_visium(folder, load_images=False)
    assert _one_line(err).startswith(str(pos))


def test_xenium_empty_cells_table_is_named(shared_data, tmp_path):
    folder = tmp_path / "xenium"
    shutil.copytree(shared_data / "xenium_mouse_brain_subset", folder)
    cells = folder / "cells.csv.gz"
    for other in ("cells.parquet", "cells.csv"):
        (folder / other).unlink(missing_ok=True)
    cells.write_bytes(gzip.compress(b""))
    with pytest.raises(ValueError, match=r"found an empty file") as err:
        read_xenium(folder, load_images=False)
    assert _one_line(err).startswith(str(cells))


def test_h5ad_identical_or_nan_coordinates_are_named(mob_adata, tmp_path):
    from stalign.io import read_h5ad

    path = tmp_path / "MOB1.h5ad"
    a = mob_adata.copy()
    a.obsm[K.SPATIAL] = np.tile([500.0, 600.0], (a.n_obs, 1))
    a.write_h5ad(path)
    with pytest.raises(ValueError, match=r"same pixel coordinates") as err:
        read_h5ad(path, image=None, load_images=False)
    assert _one_line(err).startswith(str(path))
    xy = mob_adata.obsm[K.SPATIAL].copy()
    xy[3, 1] = np.nan
    a.obsm[K.SPATIAL] = xy
    a.write_h5ad(path)
    with pytest.raises(ValueError, match=r"found 1 spots with NaN/inf") as err:
        read_h5ad(path, load_images=False)
    assert _one_line(err).startswith(str(path))
