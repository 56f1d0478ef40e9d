"""tl.embed / embed_patches / embed_dataset / write_embeddings and the train / embed /
export / encoders commands on a small real MOB store."""

from __future__ import annotations

import json

import anndata as ad
import h5py
import numpy as np
import pytest
import torch

import stalign as st
from stalign.cli import main

MANIFEST_COLS = "sample_id,patient_id,organ,species,platform,path,image,mpp,source,license"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def store(tmp_path_factory, mob_dir):
    from stalign.pairs import build_pairs, merge_pairs

    root = tmp_path_factory.mktemp("train_store")
    rows = [
        f"{s},{p},olfactory_bulb,mus_musculus,legacy_st,{mob_dir / f'{s}.tsv.gz'},"
        f"{mob_dir / f'{s}.jpg'},,test,MIT"
        for s, p in (("MOB1", "mouse1"), ("MOB3", "mouse2"))
    ]
    (root / "manifest.csv").write_text("\n".join([MANIFEST_COLS, *rows]) + "\n")
    build_pairs(
        root / "manifest.csv", root / "pairs", mpp=4.7, size_px=40, progress=False, report=False
    )
    merge_pairs(root / "pairs", report=False)
    return root / "pairs"


@pytest.fixture(scope="module")
def tiny_encoder():
    torch.manual_seed(0)
    return st.models.create_encoder("vit_tiny_patch16_224", img_size=32, depth=2)


def test_embed_adata_writes_obsm_in_obs_order(mob_adata, tiny_encoder):
    adata = mob_adata[:50].copy()
    kw = dict(batch_size=16, mpp=4.4, size_px=48, progress=False)
    assert st.tl.embed(adata, tiny_encoder, **kw) is None  # scanpy style: in place
    key = "X_vit_tiny_patch16_224"
    assert adata.obsm[key].shape == (50, 192) and adata.obsm[key].dtype == np.float32
    assert adata.uns[key]["params"]["size_px"] == 48
    # the same as embedding the patches directly, row for row
    patches = st.im.extract_patches(adata, mpp=4.4, size_px=48)
    direct = st.tl.embed_patches(patches, tiny_encoder, batch_size=50, progress=False)
    np.testing.assert_allclose(adata.obsm[key], direct, atol=1e-5)
    assert np.abs(direct[0] - direct[1]).max() > 0  # different patches, different embeddings
    # copy=True: the modified copy comes back, the input is left alone
    fresh = mob_adata[:50].copy()
    copied = st.tl.embed(fresh, tiny_encoder, key_added="X_copy", copy=True, **kw)
    assert isinstance(copied, ad.AnnData) and "X_copy" not in fresh.obsm
    np.testing.assert_allclose(copied.obsm["X_copy"], direct, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        st.tl.embed(adata, tiny_encoder, batch_size=0)
    with pytest.raises(ValueError, match="uint8"):
        st.tl.embed_patches(np.zeros((2, 8, 8, 3), np.float32), tiny_encoder)


def test_embed_takes_an_anndata_only_and_names_the_function_for_the_rest(tiny_encoder):
    patches = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(TypeError, match="embed_patches"):
        st.tl.embed(patches, tiny_encoder)
    with pytest.raises(TypeError, match="embed_dataset / write_embeddings"):
        st.tl.embed(_ImagesOnly(torch.from_numpy(patches)), tiny_encoder)
    with pytest.raises(TypeError, match="embed_patches"):
        st.tl.embed_dataset(patches, tiny_encoder)


def test_embed_dataset_to_h5_is_batch_size_independent(store, tiny_encoder, tmp_path):
    ds = st.pairs.PairsDataset(store, samples=["MOB1"])
    full = st.tl.embed_dataset(ds, tiny_encoder, batch_size=len(ds), progress=False)
    path = st.tl.write_embeddings(ds, tiny_encoder, tmp_path / "e.h5", batch_size=7, progress=False)
    assert path == tmp_path / "e.h5"
    with h5py.File(path) as f:
        np.testing.assert_allclose(f["embeddings"][:], full, atol=1e-5)
        assert [b.decode() for b in f["barcode"][:3]] == [ds[i]["barcode"] for i in range(3)]
        assert f.attrs["encoder"] == "vit_tiny_patch16_224"


class _FailsAt(torch.utils.data.Dataset):
    """Images whose item ``fail_at`` cannot be read (a corrupt patch mid-run)."""

    def __init__(self, n: int, fail_at: int) -> None:
        self.n, self.fail_at = n, fail_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if i == self.fail_at:
            msg = f"patch {i} is unreadable"
            raise OSError(msg)
        return {"image": torch.full((3, 32, 32), i / self.n)}


def test_write_embeddings_failing_midway_leaves_the_old_file(tiny_encoder, tmp_path):
    """A run that dies after some batches leaves no partial .h5: the earlier file stays."""
    path = tmp_path / "e.h5"
    st.tl.write_embeddings(_FailsAt(8, fail_at=-1), tiny_encoder, path, progress=False)
    before = path.read_bytes()
    with pytest.raises(OSError, match="patch 9 is unreadable"):
        st.tl.write_embeddings(
            _FailsAt(12, fail_at=9), tiny_encoder, path, batch_size=4, progress=False
        )
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5"]  # no temporary left


class _ImagesOnly(torch.utils.data.Dataset):
    """A dataset of ``{'image': ...}`` items and nothing else (no pathways, no index)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i]}


def test_embed_dataset_of_images_only(tiny_encoder):
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    direct = st.tl.embed_patches(patches, tiny_encoder, batch_size=4, progress=False)
    uint8 = st.tl.embed_dataset(
        _ImagesOnly(torch.from_numpy(patches)), tiny_encoder, batch_size=4, progress=False
    )
    np.testing.assert_allclose(uint8, direct, atol=1e-5)
    floats = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255.0
    as_float = st.tl.embed_dataset(_ImagesOnly(floats), tiny_encoder, batch_size=3, progress=False)
    np.testing.assert_allclose(as_float, direct, atol=1e-5)


def test_cli_train_export_embed_roundtrip(store, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--pairs",
            str(store),
            "--out",
            str(out),
            "--val-samples",
            "MOB3",
            "--encoder",
            "vit_tiny_patch16_224",
            "--img-size",
            "32",
            "--batch-size",
            "32",
            "--max-steps",
            "4",
            "--eval-every-steps",
            "2",
            "--set",
            'encoder_kwargs={"depth": 2}',
            "--no-progress",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 4 and summary["best_step"] in (2, 4)
    assert (out / "curves.png").is_file() and (out / "log.csv").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["encoder_kwargs"] == {"depth": 2} and cfg["max_steps"] == 4

    assert main(["export", str(out), "--out", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "timm" / "model.safetensors").is_file()
    assert (tmp_path / "exp" / "adapter" / "adapter_config.json").is_file()
    exported = st.models.load_exported(tmp_path / "exp" / "timm")
    trained = st.train.load_model(out)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), trained.image_tower.encoder(x), atol=1e-5, rtol=0)

    assert (
        main(
            [
                "embed",
                "--encoder",
                str(out),
                "--pairs",
                str(store),
                "--samples",
                "MOB3",
                "--out",
                str(tmp_path / "emb.h5"),
                "--projected",
            ]
        )
        == 0
    )
    with h5py.File(tmp_path / "emb.h5") as f:
        assert f["embeddings"].shape[1] == 128  # the aligned projection space

    h5ad = tmp_path / "mob.h5ad"
    a = st.io.read_legacy_st(_mob(store))
    a[:20].copy().write_h5ad(h5ad)
    assert (
        main(
            [
                "embed",
                "--encoder",
                str(tmp_path / "exp" / "timm"),
                "--h5ad",
                str(h5ad),
                "--out",
                str(tmp_path / "mob_emb.h5ad"),
                "--mpp",
                "4.4",
                "--size-px",
                "40",
            ]
        )
        == 0
    )
    assert ad.read_h5ad(tmp_path / "mob_emb.h5ad").obsm["X_vit_tiny_patch16_224"].shape == (20, 192)


def _mob(store):
    import csv

    manifest = store.parent / "manifest.csv"
    row = next(csv.DictReader(manifest.open()))
    return row["path"].removesuffix(".tsv.gz")


def test_cli_errors_and_encoders(tmp_path, capsys):
    assert main(["encoders"]) == 0
    assert "virchow2" in capsys.readouterr().out
    assert main(["train", "--pairs", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 1
    assert "index.json" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "e")]) == 1
    assert "not a stalign training checkpoint" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_embedding_is_bf16_autocast_in_the_one_loop(store, tmp_path):
    """On CUDA, tl.embed_patches and evaluate's feature cache run the same bf16 loop."""
    from stalign.bench import EvaluationSpec, encoder_features
    from stalign.bench._cache import FeatureCache, FeatureSource
    from stalign.bench._feature_sources import _encoder_chunk_fn

    torch.manual_seed(0)
    enc = st.models.create_encoder("vit_tiny_patch16_224", img_size=32, depth=2)
    ds = st.pairs.PairsDataset(store, samples=["MOB1"])
    patches = ds.read_patches(np.arange(len(ds)))
    cpu = st.tl.embed_patches(patches, enc, batch_size=32, device="cpu", progress=False)
    seen = []

    def record(module, inputs, output):
        seen.append(
            (
                inputs[0].device.type,
                torch.is_autocast_enabled("cuda"),
                torch.get_autocast_dtype("cuda"),
            )
        )

    hook = enc.register_forward_hook(record)
    gpu = st.tl.embed_patches(patches, enc, batch_size=32, device="cuda", progress=False)
    assert seen and all(s == ("cuda", True, torch.bfloat16) for s in seen)
    assert not torch.is_autocast_enabled("cuda")  # only inside the loop
    assert gpu.dtype == np.float32
    # bf16 rounding only: close to fp32, not equal to it
    cos = (gpu * cpu).sum(1) / np.linalg.norm(gpu, axis=1) / np.linalg.norm(cpu, axis=1)
    assert cos.min() > 0.99 and np.abs(gpu - cpu).max() > 0
    np.testing.assert_array_equal(encoder_features(enc, patches, batch_size=32, device="cuda"), gpu)
    hook.remove()
    spec = EvaluationSpec(pairs_dir=store, encoders=[], out=tmp_path, device="cuda", batch_size=32)
    cache = FeatureCache(tmp_path / "cache", ds, chunk_rows=64)
    src = FeatureSource("enc", {"test": 1}, lambda: _encoder_chunk_fn(enc, spec, 0))
    cache.fill(src)
    np.testing.assert_array_equal(cache.load(src), gpu)
