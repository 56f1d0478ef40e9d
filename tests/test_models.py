"""Encoder registry, create_encoder, checkpoints and LoRA (small random-init models only)."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from stalign import models


def test_registry_lists_pathology_and_baseline_encoders():
    names = models.list_encoders()
    for n in (
        "uni",
        "uni2-h",
        "virchow2",
        "h-optimus-0",
        "h-optimus-1",
        "prov-gigapath",
        "resnet50",
        "vit_base_patch16_224",
        "vit_tiny_patch16_224",
        "resnet18",
    ):
        assert n in names
    patho = models.list_encoders(pathology_only=True)
    assert "uni" in patho and "resnet50" not in patho


def test_config_is_frozen_and_roundtrips():
    cfg = models.get_encoder_config("uni")
    assert cfg.hf_hub_id == "MahmoodLab/UNI" and cfg.gated and cfg.mpp == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.embed_dim = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="read-only"):
        cfg.timm_kwargs["init_values"] = 1.0  # type: ignore[index]
    assert models.EncoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="std"):
        models.EncoderConfig(name="x", architecture="resnet18", embed_dim=8, std=(0.0, 1.0, 1.0))


def test_register_encoder_decorator_and_duplicates():
    @models.register_encoder
    def _tiny_test_encoder():
        return models.EncoderConfig(
            name="_tiny_test_encoder",
            architecture="resnet10t",
            embed_dim=512,
            lora_targets=("conv1", "conv2"),
        )

    assert "_tiny_test_encoder" in models.list_encoders()
    enc = models.create_encoder("_tiny_test_encoder")
    assert enc(torch.rand(1, 3, 32, 32)).shape == (1, 512)
    with pytest.raises(ValueError, match="already registered"):
        models.register_encoder(_tiny_test_encoder)


def test_unknown_encoder_names_the_problem():
    with pytest.raises(ValueError, match="not_a_model"):
        models.create_encoder("not_a_model")


@pytest.mark.parametrize(
    "name",
    [
        "uni",
        "uni2-h",
        "virchow2",
        "h-optimus-0",
        "prov-gigapath",
        "resnet50",
        "vit_base_patch16_224",
    ],
)
def test_registered_configs_match_the_timm_architectures(name):
    # build on the meta device: real shapes, no memory, no weights
    with torch.device("meta"):
        enc = models.create_encoder(name)
        out = enc(torch.empty(2, 3, enc.config.input_size, enc.config.input_size))
    assert out.shape == (2, enc.config.embed_dim)


def test_plain_timm_name_and_img_size():
    enc = models.create_encoder("vit_tiny_patch16_224", img_size=112, mpp=4.7)
    assert enc.config.input_size == 112 and enc.config.mpp == 4.7
    assert enc(torch.rand(2, 3, 112, 112)).shape == (2, 192)
    plain = models.create_encoder("resnet10t")
    assert plain.config.embed_dim == 512 and plain(torch.rand(1, 3, 32, 32)).shape == (1, 512)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        enc(torch.rand(3, 112, 112))


def test_normalization_buffers_are_used():
    torch.manual_seed(0)
    enc = models.create_encoder("resnet10t")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a = enc(x)
        enc.set_normalization([0.7, 0.5, 0.6], [0.2, 0.2, 0.2])
        b = enc(x)
    assert not torch.allclose(a, b)
    assert "mean" in enc.state_dict() and enc.normalization[0] == pytest.approx((0.7, 0.5, 0.6))
    with pytest.raises(ValueError, match="positive"):
        enc.set_normalization([0.5] * 3, [0.0, 1.0, 1.0])


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_path_loads_local_weights(tmp_path, suffix):
    torch.manual_seed(1)
    src = models.create_encoder("vit_tiny_patch16_224", img_size=64)
    state = src.model.state_dict()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    torch.manual_seed(2)
    loaded = models.create_encoder("vit_tiny_patch16_224", img_size=64, checkpoint_path=path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), src(x))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
        models.create_encoder("resnet10t", checkpoint_path=tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"foo": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="lacks"):
        models.create_encoder("resnet10t", checkpoint_path=tmp_path / "bad.safetensors")


def test_pretrained_without_network_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match="checkpoint_path") as info:
        models.create_encoder("uni", pretrained=True)
    assert time.perf_counter() - t0 < 10
    assert "MahmoodLab/UNI" in str(info.value) and "gated" in str(info.value)


def test_add_lora_vit_trains_only_adapters():
    torch.manual_seed(0)
    enc = models.create_encoder("vit_tiny_patch16_224", img_size=64)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = enc(x)
    models.add_lora(enc, r=8, alpha=16)
    summary = enc.lora_summary
    assert len(summary.target_modules) == 12 * 4  # qkv, proj, fc1, fc2 in 12 blocks
    assert 0.03 < summary.trainable_fraction < 0.08
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # lora_B starts at zero: same function
        torch.testing.assert_close(enc.eval()(x), before)
    with pytest.raises(ValueError, match="already has LoRA"):
        models.add_lora(enc)


def test_add_lora_last_n_blocks_and_convnet():
    enc = models.add_lora(
        models.create_encoder("vit_tiny_patch16_224", img_size=32), last_n_blocks=2
    )
    assert {t.split(".")[1] for t in enc.lora_summary.target_modules} == {"10", "11"}
    cnn = models.add_lora(models.create_encoder("resnet18"), r=4)
    assert all(isinstance(m, torch.nn.Module) for m in [cnn])
    assert any(
        t.startswith("layer4") and t.endswith("conv2") for t in cnn.lora_summary.target_modules
    )
    out = cnn(torch.rand(2, 3, 32, 32))
    out.sum().backward()
    grads = [p.grad for n, p in cnn.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        models.add_lora(models.create_encoder("resnet10t"), target_modules=["nothing_here"])
    with pytest.raises(ValueError, match="r > 0"):
        models.add_lora(models.create_encoder("resnet10t"), r=0)
