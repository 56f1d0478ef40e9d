"""Export round trip: the merged timm directory loads with timm alone, in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from stalign import models

_CHILD = r"""
import sys, json
import numpy as np, torch, timm
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
cfg = timm.data.resolve_data_config({}, model=model)
dtype = getattr(torch, sys.argv[4])
model = model.to(dtype)
mean = torch.tensor(cfg["mean"], dtype=dtype).view(1, 3, 1, 1)
std = torch.tensor(cfg["std"], dtype=dtype).view(1, 3, 1, 1)
x = torch.from_numpy(np.load(sys.argv[2])).to(dtype)
with torch.no_grad():
    out = model((x - mean) / std)
np.save(sys.argv[3], out.numpy())
print(json.dumps({"stalign_imported": any(m.startswith("stalign") for m in sys.modules),
                  "input_size": list(cfg["input_size"])}))
"""


def _trained_like_encoder(name="vit_tiny_patch16_224", pretrained=False):
    torch.manual_seed(0)
    enc = models.create_encoder(name, img_size=64, pretrained=pretrained)
    models.add_lora(enc, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():  # pretend training moved the adapters
        for name, p in enc.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    enc.set_normalization([0.71, 0.55, 0.69], [0.18, 0.21, 0.16])  # cohort statistics
    return enc.eval()


@pytest.mark.parametrize(
    ("name", "architecture", "pretrained", "dtype"),
    [
        ("vit_tiny_patch16_224", "vit_tiny_patch16_224", False, "float32"),
        # point-wise conv LoRA and BatchNorm, on the packaged ImageNet weights. The float32
        # export is compared in float64 on both sides: in float32, 17 conv blocks alone
        # make the merged (W + BA) x and the unmerged W x + B(A x) differ by ~2e-5
        ("efficientnet_lite0", "tf_efficientnet_lite0", True, "float64"),
    ],
)
def test_export_roundtrip_in_fresh_process(tmp_path, name, architecture, pretrained, dtype):
    enc = _trained_like_encoder(name, pretrained)
    written = models.export(enc, tmp_path / "export")
    enc = enc.to(getattr(torch, dtype))
    cfg = json.loads((written["timm"] / "config.json").read_text())
    assert cfg["architecture"] == architecture and cfg["num_classes"] == 0
    assert np.allclose(cfg["pretrained_cfg"]["mean"], [0.71, 0.55, 0.69])
    assert (written["timm"] / "model.safetensors").is_file()
    assert not any("lora" in k for k in _safetensor_keys(written["timm"] / "model.safetensors"))

    x = torch.rand(4, 3, 64, 64, dtype=getattr(torch, dtype))
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        expected = enc(x).numpy()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(written["timm"]),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
            dtype,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["stalign_imported"] is False and info["input_size"] == [3, 64, 64]
    got = np.load(tmp_path / "y.npy")
    assert np.abs(got - expected).max() <= 1e-5
    # the adapters changed the function, so the merge is what is being tested
    with torch.no_grad():
        enc.peft_model.disable_adapter_layers()
        without = enc(x).numpy()
        enc.peft_model.enable_adapter_layers()
    assert np.abs(without - expected).max() > 1e-3
    # stalign's own loader gives the same embeddings too
    again = models.load_exported(written["timm"]).to(getattr(torch, dtype))
    with torch.no_grad():
        assert np.abs(again(x).numpy() - expected).max() <= 1e-5


def test_adapter_export_reloads_with_peft(tmp_path):
    from peft import PeftModel

    enc = _trained_like_encoder()
    path = models.export_adapter(enc, tmp_path / "adapter")
    assert (path / "adapter_config.json").is_file() and (
        path / "adapter_model.safetensors"
    ).is_file()
    torch.manual_seed(0)  # the same random base weights
    fresh = models.create_encoder("vit_tiny_patch16_224", img_size=64)
    fresh.set_normalization(*enc.normalization)
    fresh.model = PeftModel.from_pretrained(fresh.model, str(path)).base_model.model
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), enc(x))


def _safetensor_keys(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def test_read_provenance_without_one_is_empty(tmp_path):
    enc = _trained_like_encoder()
    written = models.export(enc, tmp_path / "plain")
    prov = models.read_provenance(tmp_path / "plain")
    assert set(prov) == {"exported_by"}  # no training record was given
    assert models.read_provenance(written["timm"])["exported_by"] == models.code_provenance()
    legacy = tmp_path / "legacy"  # an export written before provenance was recorded
    legacy.mkdir()
    meta = json.loads((written["timm"] / "stalign.json").read_text())
    del meta["provenance"]
    (legacy / "stalign.json").write_text(json.dumps(meta))
    assert models.read_provenance(legacy) == {}
    (tmp_path / "empty").mkdir()
    assert models.read_provenance(tmp_path / "empty") == {}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.read_provenance(tmp_path / "missing")
    (legacy / "stalign.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"stalign\.json.*not valid JSON"):
        models.read_provenance(legacy)
    given = {"training_patients": ["p1"], "training_samples": ["s1", "s2"]}
    models.export(enc, tmp_path / "trained", provenance=given, adapter=False)
    prov = models.read_provenance(tmp_path / "trained")
    assert {k: prov[k] for k in given} == given
