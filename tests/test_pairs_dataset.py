"""PairsDataset (torch), split_by_patient, augmentation and JPEG patch storage."""

from __future__ import annotations

import json
import os
import shutil

import anndata as ad
import h5py
import numpy as np
import pytest
import torch

from stalign.pairs import (
    Augment,
    PairsDataset,
    PatchWriter,
    build_pairs,
    psnr,
    split_by_patient,
)
from stalign.pairs._store import read_patch

HEADER = "sample_id,patient_id,organ,species,platform,path,image,mpp,source,license\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory, mob_dir):
    tmp = tmp_path_factory.mktemp("ds")
    manifest = tmp / "m.csv"
    manifest.write_text(
        HEADER
        + f"MOB2,mouse1,olfactory_bulb,mus_musculus,legacy_st,{mob_dir / 'MOB2.tsv.gz'},,,,\n"
        + f"MOB4,mouse2,olfactory_bulb,mus_musculus,legacy_st,{mob_dir / 'MOB4.tsv.gz'},,,,\n"
    )
    out = tmp / "pairs"
    build_pairs(manifest, out, mpp=4.7, size_px=48, progress=False)
    return out


def test_items_are_joined_by_barcode(store):
    ds = PairsDataset(store)
    assert len(ds) == len(ds.obs) == ds.pathways.shape[0] > 400
    assert ds.pathways.shape[1] == len(ds.pathway_names) >= 30
    item = ds[7]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    # the item's scores and patch are those of its barcode in the shard files
    sid, bc = item["sample_id"], item["barcode"]
    pairs = ad.read_h5ad(store / "samples" / sid / "pairs.h5ad")
    expect = pairs.obsm["pathway_scores"].loc[bc, ds.pathway_names].to_numpy(np.float32)
    np.testing.assert_array_equal(item["pathways"].numpy(), expect)
    with h5py.File(store / "samples" / sid / "patches.h5", "r") as f:
        row = [b.decode() for b in f["barcode"][:, 0]].index(bc)
        raw = f["img"][row]
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy() * 255, raw, atol=1e-3)
    assert item["patient_id"] == {"MOB2": "mouse1", "MOB4": "mouse2"}[sid]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_dataloader_with_two_workers(store):
    ds = PairsDataset(store, image_size=32, augment=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=2, shuffle=True)
    seen = []
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 32, 32)
        assert batch["pathways"].shape[1] == len(ds.pathway_names)
        seen.extend(batch["index"].tolist())
    assert sorted(seen) == list(range(len(ds)))


def test_resize_and_augmentation(store):
    plain = PairsDataset(store, image_size=224)
    assert plain[0]["image"].shape == (3, 224, 224)
    aug = PairsDataset(store, augment=Augment(hed=0.05))
    torch.manual_seed(0)
    a = aug[3]["image"]
    torch.manual_seed(0)
    b = aug[3]["image"]
    torch.manual_seed(1)
    c = aug[3]["image"]
    assert torch.equal(a, b)  # reproducible under torch.manual_seed
    assert not torch.equal(a, c)
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    geo = Augment(brightness=0, contrast=0)(img, np.random.default_rng(3))
    poses = {np.rot90(f, k).tobytes() for f in (img, img[:, ::-1]) for k in range(4)}
    assert geo.tobytes() in poses  # flips + rot90 only move pixels


def test_split_by_patient(store):
    ds = PairsDataset(store)
    parts = ds.split_by_patient({"train": 0.5, "val": 0.5}, seed=0)
    assert set(parts) == {"train", "val"}
    a, b = (set(p.obs["patient_id"]) for p in parts.values())
    assert a and b and not (a & b)
    assert len(parts["train"]) + len(parts["val"]) == len(ds)
    again = ds.split_by_patient({"train": 0.5, "val": 0.5}, seed=0)
    assert again["train"].obs.equals(parts["train"].obs)
    fixed = ds.split_by_patient(assignment={"train": ["mouse1"], "test": ["mouse2"]})
    assert set(fixed["test"].obs["sample_id"]) == {"MOB4"}
    assert len(PairsDataset(store, split="val", split_fractions={"train": 0.5, "val": 0.5})) == len(
        parts["val"]
    )
    with pytest.raises(ValueError, match="mouse1"):
        ds.split_by_patient(assignment={"train": ["mouse1"], "test": ["mouse1"]})
    with pytest.raises(ValueError, match="not finished samples"):
        PairsDataset(store, samples=["MOB9"])


def test_split_by_patient_function():
    ids = [f"p{i}" for i in range(10)] * 3
    s = split_by_patient(ids, {"train": 0.7, "val": 0.2, "test": 0.1}, seed=4)
    assert [len(v) for v in s.values()] == [7, 2, 1]
    assert sorted(p for v in s.values() for p in v) == sorted(set(ids))
    assert s == split_by_patient(
        list(reversed(ids)), {"train": 0.7, "val": 0.2, "test": 0.1}, seed=4
    )
    assert split_by_patient(["a", "b"])["val"]  # every positive split gets a patient
    with pytest.raises(ValueError, match="fractions"):
        split_by_patient(ids, {"train": -1})


def test_jpeg_patches_roundtrip(store, tmp_path):
    with h5py.File(store / "samples" / "MOB2" / "patches.h5", "r") as f:
        raw = f["img"][:64]
        coords = f["coords"][:64]
        barcodes = [b.decode() for b in f["barcode"][:64, 0]]
    path = tmp_path / "jpeg.h5"
    with PatchWriter(path, size_px=48, mpp=4.7, encoding="jpeg", jpeg_quality=95) as w:
        w.append(raw[:40], coords[:40], barcodes[:40])
        w.append(raw[40:], coords[40:], barcodes[40:])
    with h5py.File(path, "r") as f:
        assert f["img"].attrs["encoding"] == "jpeg"
        decoded = np.stack([read_patch(f, i) for i in range(64)])
        n_bytes = sum(len(f["img"][i]) for i in range(64))
    assert decoded.shape == raw.shape
    assert psnr(raw, decoded) >= 35.0
    assert n_bytes < raw.nbytes
    with pytest.raises(ValueError, match="encoding"):
        PatchWriter(tmp_path / "x.h5", size_px=48, mpp=1.0, encoding="png")


# ----------------------------------------------------------------- modified shards (issue 21.6)
def _flip_byte(path, offset: int, *, keep_mtime: bool = False) -> None:
    """Invert one byte of ``path`` at ``offset`` (the size never changes)."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _score_offset(pairs_h5ad) -> int:
    """Byte offset of the first pathway score column's data inside ``pairs.h5ad``."""
    with h5py.File(pairs_h5ad, "r") as f:
        group = f["obsm/pathway_scores"]
        column = next(k for k in group if k.startswith("HALLMARK_"))
        return int(group[column].id.get_offset()) + 4


def _patch_offset(patches_h5) -> int:
    """Byte offset of a pixel of the first patch inside ``patches.h5``."""
    with h5py.File(patches_h5, "r") as f:
        return int(f["img"].id.get_chunk_info(0).byte_offset) + 100


@pytest.fixture
def copy(store, tmp_path):
    out = tmp_path / "pairs"
    shutil.copytree(store, out)
    return out


@pytest.mark.faults
@pytest.mark.parametrize("name", ["patches.h5", "pairs.h5ad"])
def test_a_flipped_byte_in_a_shard_is_refused(copy, name):
    path = copy / "samples" / "MOB2" / name
    offset = _patch_offset(path) if name == "patches.h5" else _score_offset(path)
    PairsDataset(copy)  # a copied store loads (re-hashed once where its mtimes differ)
    _flip_byte(path, offset)
    with pytest.raises(ValueError, match=rf"MOB2.*{name}.*checksum"):
        PairsDataset(copy)
    PairsDataset(copy, samples=["MOB4"])  # the other sample is still usable


@pytest.mark.faults
def test_verify_catches_a_flip_that_kept_size_and_mtime(copy):
    path = copy / "samples" / "MOB4" / "pairs.h5ad"
    PairsDataset(copy)  # the stat cache now holds the copy's size and mtime
    _flip_byte(path, _score_offset(path), keep_mtime=True)
    with pytest.raises(ValueError, match=r"MOB4.*pairs\.h5ad.*checksum"):
        PairsDataset(copy, verify=True)


@pytest.mark.faults
@pytest.mark.parametrize(("field", "value"), [("patient_id", "mouse2"), ("n_pairs", 3)])
def test_an_index_that_disagrees_with_its_shard_is_refused(copy, field, value):
    index = json.loads((copy / "index.json").read_text())
    entry = next(s for s in index["samples"] if s["sample_id"] == "MOB2")
    entry[field] = value  # e.g. MOB2 moved to the other patient
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"index\.json.*MOB2.*{field}"):
        PairsDataset(copy)
    with pytest.raises(ValueError, match=rf"index\.json.*MOB2.*{field}"):
        PairsDataset(copy, split="train")


@pytest.mark.faults
@pytest.mark.parametrize("name", ["patches.h5", "pairs.h5ad"])
def test_a_corrupt_shard_header_is_named(copy, name):
    """Issue 21.14: a damaged HDF5 header (size and mtime kept) gave 'Unable to
    synchronously open file (…)' without the file."""
    path = copy / "samples" / "MOB2" / name
    PairsDataset(copy)  # the stat cache records the copy
    for offset in range(8, 64):  # the superblock after the signature
        _flip_byte(path, offset, keep_mtime=True)
    with pytest.raises(ValueError, match=rf"{path}: not a readable HDF5 file.*--verify"):
        PairsDataset(copy)[0]
