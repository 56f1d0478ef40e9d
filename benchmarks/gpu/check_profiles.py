"""What the device check runs: the GPU profile, the CPU profile (tests), the parts, the peaks.

No torch here: the orchestrator (``check.py`` without ``--worker``) imports this module
only, so it stays light and outlives any crash of a part.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace

#: dense bf16 tensor-core peak (TFLOP/s, no sparsity) by card, from the vendors'
#: datasheets; matched in order against ``torch.cuda.get_device_name()`` (the first
#: pattern that matches wins, so the specific names come before the general ones)
PEAK_BF16_TFLOPS: tuple[tuple[str, str, float], ...] = (
    (r"H100.*PCIe", "H100 PCIe", 756.0),
    (r"H100.*NVL", "H100 NVL", 835.0),
    (r"GH200", "GH200", 989.0),
    (r"H100", "H100 SXM", 989.0),
    (r"H200.*NVL", "H200 NVL", 835.0),
    (r"H200", "H200 SXM", 989.0),
    (r"A100|A800", "A100", 312.0),
    (r"L40S", "L40S", 362.0),
    (r"\bL4\b", "L4", 121.0),
    (r"\bA10\b", "A10", 125.0),
)


def src_env(repo: os.PathLike) -> dict[str, str]:
    """This environment with ``REPO/src`` first on ``PYTHONPATH`` (for subprocesses).

    The device machine runs the checkout without installing it.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    paths = [os.path.join(repo, "src"), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def peak_bf16_tflops(device_name: str) -> tuple[str, float] | None:
    """Return ``(card, dense bf16 TFLOP/s)`` for a CUDA device name, ``None`` if unlisted.

    Parameters
    ----------
    device_name
        As ``torch.cuda.get_device_name()`` reports it, e.g. ``"NVIDIA H100 80GB HBM3"``.
    """
    for pattern, card, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return card, tflops
    return None


@dataclass(frozen=True)
class Model:
    """One encoder the training parts measure."""

    key: str  # part-name suffix: train_synthetic_<key>
    encoder: str
    kwargs: dict = field(default_factory=dict)
    batch: int = 128


@dataclass(frozen=True)
class Profile:
    """Sizes, devices and time limits of one mode of the check.

    Attributes
    ----------
    name
        ``"gpu"`` or ``"cpu"``.
    device
        Torch device the parts run on.
    models
        Encoders whose LoRA training throughput is measured.
    input_px, jitter_px
        Model input side (px) and the random-crop margin: stored patches are
        ``input_px + 2 * jitter_px`` px, so the crop needs no resize.
    steps, warmup
        Timed and untimed optimiser steps per training measurement.
    amp
        ``TrainConfig.amp`` of the training parts.
    store_sections, store_mpp
        MOB sections of the JPEG pairs store the script builds, and its µm/px.
    loader_workers
        DataLoader workers of the loader-fed training and of the embedding (the
        docs' ``--num-workers 8`` per GPU on the device).
    embed_model, embed_images, embed_batch
        Encoder, number of images (≥ 20 k on the GPU) and batch of the embedding part.
    cli_model, cli_steps, cli_batch
        ``stalign train`` run: encoder, optimiser steps and batch.
    compile_backend
        ``torch.compile`` backend (``"eager"`` in CPU mode: traces, compiles nothing).
    matmul_n
        Side of the square matmul that measures the device's bf16 (fp32 on CPU) ceiling.
    ddp_backends
        Backends of the 2-process DDP part, tried in order (all are recorded).
    budget_s
        Wall-clock limit of the whole check (s); parts that would start later are
        recorded as not run.
    timeouts
        Per-part time limit (s).
    """

    name: str
    device: str
    models: tuple[Model, ...]
    input_px: int
    jitter_px: int
    steps: int
    warmup: int
    amp: str
    store_sections: tuple[tuple[str, str], ...]
    store_mpp: float
    loader_workers: int
    embed_model: Model
    embed_images: int
    embed_batch: int
    cli_model: Model
    cli_steps: int
    cli_batch: int
    compile_backend: str
    matmul_n: int
    ddp_backends: tuple[str, ...]
    budget_s: float
    timeouts: dict[str, float]

    @property
    def store_px(self) -> int:
        """Side of the stored patches (px)."""
        return self.input_px + 2 * self.jitter_px

    def parts(self) -> list[str]:
        """Part names in run order: the issue's targets first, ``torch.compile`` last."""
        keys = [m.key for m in self.models]
        return [
            "env",
            "store",
            "cuda_tests",
            *(f"train_synthetic_{k}" for k in reversed(keys)),  # ViT-L (the target) first
            *(f"train_loader_{k}" for k in reversed(keys)),
            "embed",
            "cli_train",
            "ddp",
            *(f"train_compiled_{k}" for k in reversed(keys)),
        ]

    def timeout(self, part: str) -> float:
        """Time limit of ``part`` (s): its own entry, else its kind's (``train_loader``...)."""
        if part in self.timeouts:
            return self.timeouts[part]
        for m in self.models:
            kind = part.removesuffix(f"_{m.key}")
            if kind != part and kind in self.timeouts:
                return self.timeouts[kind]
        msg = f"no time limit for part {part!r} in the {self.name} profile"
        raise KeyError(msg)

    def model(self, key: str) -> Model:
        """The training model with this key."""
        for m in self.models:
            if m.key == key:
                return m
        msg = f"no model {key!r} in the {self.name} profile (have {[m.key for m in self.models]})"
        raise KeyError(msg)


MOB_ALL = (("MOB1", "mouse1"), ("MOB2", "mouse1"), ("MOB3", "mouse2"), ("MOB4", "mouse2"))

GPU = Profile(
    name="gpu",
    device="cuda",
    models=(
        Model("vit_base", "vit_base_patch16_224", batch=256),
        Model("vit_large", "vit_large_patch16_224", batch=128),
    ),
    input_px=224,
    jitter_px=4,
    steps=15,
    warmup=3,
    amp="bf16",
    store_sections=MOB_ALL,
    store_mpp=0.5,
    loader_workers=8,
    embed_model=Model("vit_base", "vit_base_patch16_224"),
    embed_images=20_480,
    embed_batch=512,
    cli_model=Model("vit_base", "vit_base_patch16_224"),
    cli_steps=10,
    cli_batch=128,
    compile_backend="inductor",
    matmul_n=8192,
    ddp_backends=("nccl", "gloo"),
    budget_s=450.0,
    timeouts={
        "env": 60,
        "store": 120,
        "cuda_tests": 150,
        "train_synthetic": 120,
        "train_loader": 90,
        "embed": 120,
        "cli_train": 150,
        "ddp": 150,
        "train_compiled": 180,
    },
)

TINY = Model("vit_tiny", "vit_tiny_patch16_224", {"depth": 2}, batch=8)

#: the GPU profile shrunk to seconds on 2 CPU cores (tests/test_gpu_check.py): the same
#: parts and code paths, with a 2-block ViT-Tiny at 32 px on a 2-section store
CPU = replace(
    GPU,
    name="cpu",
    device="cpu",
    models=(TINY,),
    input_px=32,
    steps=2,
    warmup=1,
    amp="none",
    store_sections=(("MOB1", "mouse1"), ("MOB3", "mouse2")),
    store_mpp=4.7,
    loader_workers=1,
    embed_model=TINY,
    embed_images=64,
    embed_batch=16,
    cli_model=TINY,
    cli_steps=2,
    cli_batch=16,
    compile_backend="eager",  # traces the model with dynamo, compiles nothing
    matmul_n=256,
    budget_s=600.0,
    timeouts=dict.fromkeys(GPU.timeouts, 240.0),  # 2 shared cores: slow, and never the point
)

PROFILES = {"gpu": GPU, "cpu": CPU}
