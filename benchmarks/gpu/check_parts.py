"""The parts of the device check: each measures one thing and returns a JSON-able dict.

A part raises :class:`Skipped` (with the reason) when it cannot apply, and
:class:`CheckFailed` when it ran but the check it makes failed; any other exception is
a failure too. ``check.py`` runs the parts one after the other in a worker process and
records each as it finishes.

The training parts drive stalign's own training step (``train._fit._setup``,
``_forward_backward``, ``_optimizer_step`` and ``_loader``: crops and augmentation on
the device, bf16 autocast, the InfoNCE loss, gradient clipping, AdamW), not a copy.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import platform
import resource
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from check_profiles import Model, Profile, src_env

N_PATHWAYS = 50  # the hallmark collection's size: the molecular tower's input width
CUDA_MARK = "mark.cuda"  # how a test file asks for the cuda marker (pytest.mark.cuda)


class Skipped(Exception):
    """The part does not apply here; the message says why."""


class CheckFailed(Exception):
    """The part ran and its check failed; ``result`` holds what it measured."""

    def __init__(self, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result = result or {}


@dataclass
class Context:
    """What every part gets: the profile, the folders and the peak to compute MFU against."""

    profile: Profile
    repo: Path
    work: Path
    peak: tuple[str, float] | None  # (source, dense bf16 TFLOP/s)

    @property
    def device(self) -> torch.device:
        return torch.device(self.profile.device)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def store(self) -> Path:
        return self.work / "store"

    def require_store(self) -> Path:
        """The JPEG pairs store the ``store`` part built (:class:`Skipped` without it)."""
        if not (self.store / "index.json").is_file():
            msg = f"no pairs store at {self.store}: the 'store' part did not finish"
            raise Skipped(msg)
        return self.store

    def env(self) -> dict[str, str]:
        """Environment of the subprocesses: this checkout's ``src`` first on the path."""
        return src_env(self.repo)


# ------------------------------------------------------------------ device helpers
def sync(device: torch.device) -> None:
    """Wait for queued device work (CUDA), so host clocks time finished work."""
    if device.type == "cuda":
        from check_cuda import cuda_sync

        cuda_sync()


def reset_peak_memory(device: torch.device) -> None:
    """Start a new GPU memory peak (the CPU's peak RSS cannot be reset)."""
    if device.type == "cuda":
        from check_cuda import cuda_reset_peak_memory

        cuda_reset_peak_memory()


def peak_memory(device: torch.device) -> tuple[float, str]:
    """``(GiB, what was measured)``: allocated GPU memory, or this process's peak RSS."""
    if device.type == "cuda":
        from check_cuda import cuda_peak_memory_gib

        return cuda_peak_memory_gib(), "GPU memory allocated (torch.cuda.max_memory_allocated)"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "host peak RSS (CPU mode)"


def free_memory(device: torch.device) -> None:
    """Collect garbage, and hand cached GPU blocks back between parts."""
    gc.collect()
    if device.type == "cuda":
        from check_cuda import cuda_free_memory

        cuda_free_memory()


def is_out_of_memory(device: torch.device, error: BaseException) -> bool:
    """Whether ``error`` is the device running out of memory (CUDA only)."""
    if device.type != "cuda":
        return False
    from check_cuda import cuda_is_out_of_memory

    return cuda_is_out_of_memory(error)


def mfu(ctx: Context, flops_per_item: float, items_per_s: float) -> dict[str, Any]:
    """Achieved TFLOP/s and model FLOPs utilisation against the card's dense bf16 peak."""
    achieved = flops_per_item * items_per_s / 1e12
    out: dict[str, Any] = {"achieved_tflops": achieved}
    if ctx.peak is None:
        out["mfu"] = None
        out["mfu_note"] = "no dense bf16 peak known for this device (pass --peak-tflops)"
    else:
        out["mfu"] = achieved / ctx.peak[1]
        out["peak_tflops"], out["peak_source"] = ctx.peak[1], ctx.peak[0]
    return out


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


# ------------------------------------------------------------------ env
def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("numpy", "timm", "peft", "anndata", "h5py", "imagecodecs", "pytest"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "missing"
    return out


def _git_commit(repo: Path) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git checkout)"


def matmul_ceiling(device: torch.device, n: int) -> dict[str, Any]:
    """Measured matmul rate: ``n``³ bf16 on CUDA (fp32 on the CPU), random data, median of 10."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    for _ in range(3):
        a @ b
    times = sorted(_timed(lambda: a @ b, device) for _ in range(10))
    median = times[len(times) // 2]
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "tflops": 2 * n**3 / median / 1e12}


def part_env(ctx: Context) -> dict[str, Any]:
    """Versions, the device, its named dense bf16 peak and its measured matmul ceiling."""
    info: dict[str, Any] = {
        **_versions(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "git_commit": _git_commit(ctx.repo),
        "cuda_available": torch.cuda.is_available(),
    }
    if ctx.is_cuda:
        if not torch.cuda.is_available():
            msg = "the GPU profile needs CUDA, and torch.cuda.is_available() is False"
            raise CheckFailed(msg, info)
        from check_cuda import cuda_device_info

        info.update(cuda_device_info())
    else:
        info["device_name"] = f"CPU ({platform.processor() or platform.machine()})"
    info["peak_bf16_tflops"] = ctx.peak[1] if ctx.peak else None
    info["peak_source"] = ctx.peak[0] if ctx.peak else "none (device not in the table)"
    info["matmul"] = matmul_ceiling(ctx.device, ctx.profile.matmul_n)
    return info


# ------------------------------------------------------------------ store
MANIFEST_COLS = "sample_id,patient_id,organ,species,platform,path,image,mpp,source,license"


def part_store(ctx: Context) -> dict[str, Any]:
    """Build the JPEG pairs store from the bundled MOB sections (``build_pairs``)."""
    from stalign.datasets import mob_dir
    from stalign.pairs import PairsDataset, build_pairs, merge_pairs

    p = ctx.profile
    mob = mob_dir()
    rows = [
        f"{s},{pid},olfactory_bulb,mus_musculus,legacy_st,{mob / f'{s}.tsv.gz'},"
        f"{mob / f'{s}.jpg'},,gpu-check,MIT"
        for s, pid in p.store_sections
    ]
    manifest = ctx.work / "manifest.csv"
    manifest.write_text("\n".join([MANIFEST_COLS, *rows]) + "\n")
    workers = max(1, min(len(rows), (os.cpu_count() or 1) // 2))
    t = time.perf_counter()
    build_pairs(
        manifest,
        ctx.store,
        mpp=p.store_mpp,
        size_px=p.store_px,
        jpeg=True,
        workers=workers,
        progress=False,
        report=False,
    )
    merge_pairs(ctx.store, report=False)
    seconds = time.perf_counter() - t
    n = len(PairsDataset(ctx.store))
    size = sum(f.stat().st_size for f in ctx.store.rglob("*") if f.is_file())
    return {
        "pairs": n,
        "sections": [s for s, _ in p.store_sections],
        "patch_px": p.store_px,
        "mpp": p.store_mpp,
        "encoding": "jpeg (q90)",
        "build_workers": workers,
        "build_s": seconds,
        "store_mib": size / 2**20,
    }


# ------------------------------------------------------------------ cuda tests
def cuda_test_files(tests: Path) -> list[Path]:
    """Test files that use the ``cuda`` marker (``pytest.mark.cuda`` in their text).

    Only these are handed to pytest: collecting every test module would import
    dependencies the device machine lacks (its collection errors would stop the run).
    """
    return sorted(f for f in tests.glob("test_*.py") if CUDA_MARK in f.read_text("utf-8"))


def junit_counts(path: Path) -> dict[str, int]:
    """``tests``, ``failures``, ``errors`` and ``skipped`` summed over a JUnit XML report."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def run_marked_tests(ctx: Context, tests: Path, marker: str = "cuda") -> dict[str, Any]:
    """Run ``pytest -m <marker>`` on the files that use it; return the counts and output."""
    files = cuda_test_files(tests)
    junit = ctx.work / f"{marker}_tests.xml"
    junit.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-m", marker, "-p", "no:cacheprovider", "-q", "-rs"]
    cmd += [f"--junitxml={junit}", *map(str, files)]
    result: dict[str, Any] = {
        "files": [
            str(f.relative_to(ctx.repo)) if f.is_relative_to(ctx.repo) else str(f) for f in files
        ],
        "command": " ".join(["python", *cmd[1:]]),
    }
    if not files:
        raise CheckFailed(f"-m {marker} selects 0 tests: no file in {tests} uses it", result)
    proc = subprocess.run(cmd, cwd=ctx.repo, env=ctx.env(), capture_output=True, text=True)
    counts = (
        junit_counts(junit)
        if junit.is_file()
        else dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    )
    result.update(
        selected=counts["tests"],
        failed=counts["failures"],
        errors=counts["errors"],
        skipped=counts["skipped"],
        passed=counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        exit_code=proc.returncode,
        output_tail=(proc.stdout + proc.stderr)[-3000:],
    )
    return result


def part_cuda_tests(ctx: Context) -> dict[str, Any]:
    """The CUDA tests: fails if ``-m cuda`` selects none, or one fails (or skips on a GPU)."""
    result = run_marked_tests(ctx, ctx.repo / "tests")
    if result["selected"] == 0:
        raise CheckFailed("-m cuda selected 0 tests", result)
    if result["failed"] or result["errors"] or result["exit_code"] not in (0,):
        msg = f"cuda tests: {result['failed']} failed, {result['errors']} errors"
        raise CheckFailed(msg, result)
    if ctx.is_cuda and result["skipped"]:
        raise CheckFailed(f"{result['skipped']} cuda tests skipped on a CUDA machine", result)
    return result


# ------------------------------------------------------------------ training
def synthetic_pairs(n: int, px: int, seed: int = 0):
    """``n`` random (uint8 ``px``² RGB patch, pathway profile) pairs in memory."""
    from stalign.train import TensorPairsDataset

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, px, px, 3), dtype=np.uint8)
    return TensorPairsDataset(images, rng.normal(size=(n, N_PATHWAYS)).astype(np.float32))


def train_config(ctx: Context, model: Model, **changes: Any):
    """The ``TrainConfig`` of a training measurement (LoRA r=8 defaults, random init)."""
    from stalign.train import TrainConfig

    p = ctx.profile
    settings: dict[str, Any] = {
        "encoder": model.encoder,
        "encoder_kwargs": dict(model.kwargs),
        "img_size": p.input_px,
        "jitter_px": p.jitter_px,
        "batch_size": model.batch,
        "max_steps": 100_000,
        "amp": p.amp,
        "device": p.device,
        "stats_max_items": 256,
        "progress": False,
        **changes,
    }
    return TrainConfig(**settings)


def training_run(ctx: Context, model: Model, dataset, **changes: Any):
    """stalign's own run set-up (statistics, model on the device, AdamW, schedule)."""
    from stalign.train._fit import TrainingState, _setup

    torch.manual_seed(0)
    run, _ = _setup(train_config(ctx, model, **changes), dataset, None, 0, 1)
    run.model.train()
    return run, TrainingState()


def train_step(run, state, batch: dict[str, torch.Tensor]) -> None:
    """One optimiser step exactly as ``stalign.train.fit`` takes it (one micro-batch)."""
    from stalign.train._fit import _forward_backward, _optimizer_step

    _forward_backward(run, state, batch, True)
    _optimizer_step(run, state.step + 1)
    state.step += 1
    del state.loss_window[:-1]


def count_step_flops(run, state, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """FLOPs of one real training step and of its forward alone (``FlopCounterMode``).

    With LoRA the frozen weights get no weight gradients, so a step costs about 2×
    its forward, not the 3× of full fine-tuning; the ratio is recorded.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from stalign.train._fit import _autocast, _forward_backward, _prepare

    with FlopCounterMode(display=False) as step_counter:
        _forward_backward(run, state, batch, True)
    run.optimizer.zero_grad(set_to_none=True)
    images = _prepare(batch["image"], run.config, run.device, None)
    with torch.no_grad(), FlopCounterMode(display=False) as fwd_counter:
        with _autocast(run.config, run.device):
            run.model(images, batch["pathways"].to(run.device))
    n = batch["image"].shape[0]
    step, fwd = step_counter.get_total_flops(), fwd_counter.get_total_flops()
    out = {
        "flops_per_image": step / n,
        "forward_flops_per_image": fwd / n,
        "step_over_forward": step / fwd if fwd else None,
    }
    if not fwd or step < 1.2 * fwd:  # the backward pass must add at least the input grads
        out["flops_note"] = "the step counted under 1.2 forwards: backward FLOPs missed?"
    return out


def measure_steps(run, state, batches: Iterator[dict], warmup: int, steps: int, batch: int):
    """Images/s, step time and peak memory over ``steps`` steps after ``warmup``."""
    for _ in range(warmup):
        train_step(run, state, next(batches))
    reset_peak_memory(run.device)

    def timed_steps() -> None:
        for _ in range(steps):
            train_step(run, state, next(batches))

    seconds = _timed(timed_steps, run.device)
    mem, mem_kind = peak_memory(run.device)
    return {
        "batch": batch,
        "steps": steps,
        "images_per_s": steps * batch / seconds,
        "step_ms": 1000 * seconds / steps,
        "peak_mem_gib": mem,
        "peak_mem_kind": mem_kind,
        "loss": state.loss_window[-1],
    }


def device_batch(dataset, n: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The first ``n`` items collated (as the loader does) and moved to ``device``."""
    from stalign.train import collate_pairs

    b = collate_pairs([dataset[i] for i in range(n)])
    return {"image": b["image"].to(device), "pathways": b["pathways"].to(device)}


def use_fused_adamw(run) -> None:
    """Replace the run's AdamW (foreach) by the fused one, same groups and schedule."""
    from stalign.train._fit import _schedule

    old = run.optimizer
    groups = [
        {
            "params": g["params"],
            "lr": g.get("initial_lr", g["lr"]),
            "weight_decay": g["weight_decay"],
        }
        for g in old.param_groups
    ]
    d = old.defaults
    run.optimizer = torch.optim.AdamW(groups, betas=d["betas"], eps=d["eps"], fused=True)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(
        run.optimizer, _schedule(run.config, run.total_steps)
    )


class ChannelsLastInput(torch.nn.Module):
    """Feed the model channels-last images (its conv weights converted too)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor, pathways: torch.Tensor):
        return self.model(images.contiguous(memory_format=torch.channels_last), pathways)


def use_channels_last(run) -> None:
    """Run the model on channels-last inputs (it applies to the patch-embedding conv)."""
    run.ddp_model = ChannelsLastInput(run.model)


#: cumulative variants of the synthetic measurement: name -> change applied before it
VARIANTS: tuple[tuple[str, Callable[[Any], None] | None], ...] = (
    ("default (AdamW foreach)", None),
    ("fused AdamW", use_fused_adamw),
    ("fused AdamW + channels-last", use_channels_last),
)


def _repeat(batch: dict[str, torch.Tensor], n: int | None = None) -> Iterator[dict]:
    """The same (sliced) batch forever."""
    sliced = {k: v[:n] for k, v in batch.items()} if n else batch
    while True:
        yield sliced


def measure_with_fallback(ctx: Context, run, state, batch: dict, steps: int) -> dict[str, Any]:
    """:func:`measure_steps` on the in-memory batch, halving it after a CUDA out-of-memory."""
    n = batch["image"].shape[0]
    oom_at = []
    while n >= 2:
        try:
            row = measure_steps(run, state, _repeat(batch, n), ctx.profile.warmup, steps, n)
            return {**row, "oom_at": oom_at} if oom_at else row
        except Exception as e:
            if not is_out_of_memory(ctx.device, e):
                raise
            oom_at.append(n)
            run.optimizer.zero_grad(set_to_none=True)
            free_memory(ctx.device)
            n //= 2
    msg = f"out of memory down to a batch of 2 (tried {oom_at})"
    raise RuntimeError(msg)


def _model_summary(run) -> dict[str, Any]:
    from stalign.models import count_parameters

    trainable, total = count_parameters(run.model)
    return {"trainable_params": trainable, "total_params": total}


def part_train_synthetic(ctx: Context, key: str) -> dict[str, Any]:
    """LoRA training throughput and MFU on a synthetic batch held on the device."""
    model = ctx.profile.model(key)
    data = synthetic_pairs(model.batch, ctx.profile.store_px)
    run, state = training_run(ctx, model, data)
    batch = device_batch(data, model.batch, ctx.device)
    flops = count_step_flops(run, state, batch)
    rows = [variant_row(ctx, run, state, batch, v, flops) for v in VARIANTS]
    result = {
        "model": model.encoder,
        "feed": "synthetic batch on the device",
        **flops,
        **_model_summary(run),
        "input_px": ctx.profile.input_px,
        "amp": ctx.profile.amp,
        "rows": rows,
    }
    if all("error" in r for r in rows):
        raise CheckFailed("every variant failed", result)
    return result


def variant_row(ctx: Context, run, state, batch: dict, variant: tuple, flops: dict) -> dict:
    """One variant's measurement, or its error (the next variant still runs)."""
    name, change = variant
    try:
        if change is not None:
            change(run)
        row = measure_with_fallback(ctx, run, state, batch, ctx.profile.steps)
    except Exception as e:
        run.optimizer.zero_grad(set_to_none=True)
        free_memory(ctx.device)
        return {"variant": name, "error": f"{type(e).__name__}: {e}"[:500]}
    return {**row, "variant": name, **mfu(ctx, flops["flops_per_image"], row["images_per_s"])}


def part_train_compiled(ctx: Context, key: str) -> dict[str, Any]:
    """As :func:`part_train_synthetic` with fused AdamW and ``torch.compile`` of the model."""
    model = ctx.profile.model(key)
    data = synthetic_pairs(model.batch, ctx.profile.store_px)
    run, state = training_run(ctx, model, data)
    batch = device_batch(data, model.batch, ctx.device)
    flops = count_step_flops(run, state, batch)  # eager: the same arithmetic
    use_fused_adamw(run)
    run.ddp_model = torch.compile(run.model, backend=ctx.profile.compile_backend)
    compile_s = _timed(lambda: train_step(run, state, batch), ctx.device)
    row = measure_with_fallback(ctx, run, state, batch, ctx.profile.steps)
    variant = f"fused AdamW + torch.compile ({ctx.profile.compile_backend})"
    row.update(variant=variant, **mfu(ctx, flops["flops_per_image"], row["images_per_s"]))
    return {
        "model": model.encoder,
        "feed": "synthetic batch on the device",
        **flops,
        "first_step_s (compilation)": compile_s,
        "amp": ctx.profile.amp,
        "rows": [row],
    }


def random_batches(n_items: int, batch: int, count: int, seed: int = 0) -> list[list[int]]:
    """``count`` batches of random indices (with replacement) into ``n_items`` pairs."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_items, batch).tolist() for _ in range(count)]


def loader_rate(ds, config, batches: list[list[int]], pin: bool) -> float:
    """Images/s that stalign's training ``DataLoader`` alone delivers (first batch excluded)."""
    from stalign.train._fit import _loader

    it = iter(_loader(ds, batches, config, pin))
    next(it)
    t = time.perf_counter()
    n = sum(b["image"].shape[0] for b in it)
    return n / (time.perf_counter() - t)


def part_train_loader(ctx: Context, key: str) -> dict[str, Any]:
    """LoRA training fed from the JPEG store by ``PairsDataset`` + ``DataLoader`` workers.

    Also times the loader alone, so the loader's share of the step shows: a fed rate
    far under both the synthetic rate and the loader's own rate points at the transfer.
    """
    from stalign.pairs import PairsDataset
    from stalign.train._fit import _loader

    p, model = ctx.profile, ctx.profile.model(key)
    ds = PairsDataset(ctx.require_store())
    run, state = training_run(ctx, model, ds, num_workers=p.loader_workers)
    steps = 2 * p.steps + 10
    batches = random_batches(len(ds), model.batch, p.warmup + steps)
    batches_it = iter(_loader(ds, batches, run.config, ctx.is_cuda))
    row = measure_steps(run, state, batches_it, p.warmup, steps, model.batch)
    del batches_it
    alone = loader_rate(
        ds, run.config, random_batches(len(ds), model.batch, steps, seed=1), ctx.is_cuda
    )
    row.update(
        variant="default (AdamW foreach)", workers=p.loader_workers, loader_alone_images_per_s=alone
    )
    return {
        "model": model.encoder,
        "feed": f"JPEG store, PairsDataset + DataLoader, {p.loader_workers} worker(s)",
        "pairs": len(ds),
        "amp": p.amp,
        "rows": [row],
    }


# ------------------------------------------------------------------ embedding
class Repeated(torch.utils.data.Dataset):
    """``n`` items cycling over ``base`` (a store smaller than the embedding target)."""

    def __init__(self, base, n: int) -> None:
        self.base, self.n = base, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.base[i % len(self.base)]


def _embed_in_memory(ctx: Context, encoder, n: int, batch: int) -> float:
    """Images/s of ``tl.iter_embeddings`` on one uint8 batch already in (pinned) memory."""
    from stalign.tl import iter_embeddings

    px = ctx.profile.store_px
    x = torch.randint(
        0, 256, (batch, px, px, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    if ctx.is_cuda:
        from check_cuda import cuda_pinned

        x = cuda_pinned(x)
    count, size = math.ceil(n / batch), ctx.profile.input_px
    list(iter_embeddings(encoder, [x], device=ctx.device, image_size=size))  # warm-up
    seen = 0

    def run() -> None:
        nonlocal seen
        for z in iter_embeddings(
            encoder, (x for _ in range(count)), device=ctx.device, image_size=size
        ):
            seen += z.shape[0]

    seconds = _timed(run, ctx.device)
    return seen / seconds


def _forward_flops(encoder, ctx: Context) -> float:
    """FLOPs of one image through the encoder at the input size (``FlopCounterMode``)."""
    from torch.utils.flop_counter import FlopCounterMode

    px = ctx.profile.input_px
    x = torch.rand(4, 3, px, px, device=ctx.device)
    encoder.eval().to(ctx.device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.is_cuda):
            encoder(x)
    return counter.get_total_flops() / 4


def part_embed(ctx: Context) -> dict[str, Any]:
    """``tl.write_embeddings`` of ≥ 20 k store images with loader workers (bf16 on CUDA)."""
    import h5py

    from stalign.models import create_encoder
    from stalign.pairs import PairsDataset
    from stalign.tl import write_embeddings
    from stalign.tl._embed import embedding_precision

    p, m = ctx.profile, ctx.profile.embed_model
    ds = Repeated(PairsDataset(ctx.require_store()), p.embed_images)
    torch.manual_seed(0)
    encoder = create_encoder(m.encoder, img_size=p.input_px, **m.kwargs)
    flops = _forward_flops(encoder, ctx)
    reset_peak_memory(ctx.device)
    path = ctx.work / "embeddings.h5"
    kw = dict(
        batch_size=p.embed_batch,
        image_size=p.input_px,
        device=p.device,
        num_workers=p.loader_workers,
        progress=False,
    )
    seconds = _timed(lambda: write_embeddings(ds, encoder, path, **kw), ctx.device)
    mem, mem_kind = peak_memory(ctx.device)
    with h5py.File(path, "r") as f:
        emb = f["embeddings"][:]
    if emb.shape[0] != len(ds) or not np.isfinite(emb).all():
        raise CheckFailed(
            f"embeddings: shape {emb.shape} for {len(ds)} images, or non-finite values"
        )
    rate = len(ds) / seconds
    memory_rate = _embed_in_memory(ctx, encoder, p.embed_images, p.embed_batch)
    return {
        "model": m.encoder,
        "images": len(ds),
        "dim": emb.shape[1],
        "batch": p.embed_batch,
        "workers": p.loader_workers,
        "precision": embedding_precision(ctx.device),
        "input_px": p.input_px,
        "wall_s": seconds,
        "images_per_s": rate,
        "in_memory_images_per_s": memory_rate,
        "peak_mem_gib": mem,
        "peak_mem_kind": mem_kind,
        "forward_flops_per_image": flops,
        **mfu(ctx, flops, rate),
    }


# ------------------------------------------------------------------ stalign train
def part_cli_train(ctx: Context) -> dict[str, Any]:
    """One ``stalign train`` of a few steps on the store (the profile's device and amp)."""
    p, m = ctx.profile, ctx.profile.cli_model
    out = ctx.work / "cli_run"
    cmd = [
        sys.executable,
        "-m",
        "stalign",
        "train",
        "--pairs",
        str(ctx.require_store()),
        "--out",
        str(out),
        "--overwrite",
        "--encoder",
        m.encoder,
        "--img-size",
        str(p.input_px),
        "--batch-size",
        str(p.cli_batch),
        "--max-steps",
        str(p.cli_steps),
        "--device",
        p.device,
        "--amp",
        p.amp,
        "--num-workers",
        str(p.loader_workers),
        "--no-progress",
        "--set",
        "stats_max_items=256",
        "--set",
        "log_every_steps=1",
        "--set",
        f"jitter_px={p.jitter_px}",
        "--set",
        f"encoder_kwargs={json.dumps(m.kwargs)}",
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ctx.repo, env=ctx.env(), capture_output=True, text=True)
    seconds = time.perf_counter() - t
    result: dict[str, Any] = {
        "command": " ".join(["python", *cmd[1:]]),
        "exit_code": proc.returncode,
        "wall_s": seconds,
        "stderr_tail": proc.stderr[-2000:],
    }
    if proc.returncode != 0:
        raise CheckFailed(f"stalign train exited with {proc.returncode}", result)
    summary = json.loads(proc.stdout[proc.stdout.rindex("{\n") :])
    log = _read_log(out / "log.csv")
    rates = [r for r in log.get("images_per_s", [])[1:] if r == r]  # the first includes start-up
    result.update(
        summary=summary,
        steps=summary["steps"],
        checkpoints=sorted(d.name for d in (out / "checkpoints").iterdir()),
        images_per_s=float(np.median(rates)) if rates else None,
    )
    if summary["steps"] != p.cli_steps:
        raise CheckFailed(
            f"stalign train ran {summary['steps']} steps, expected {p.cli_steps}", result
        )
    return result


def _read_log(path: Path) -> dict[str, list[float]]:
    import pandas as pd

    frame = pd.read_csv(path)
    return {
        c: frame[c].astype(float).tolist()
        for c in frame.columns
        if c in ("images_per_s", "train_loss", "val_loss")
    }


# ------------------------------------------------------------------ DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def ddp_rank(
    rank: int, world: int, port: int, backend: str, spec: dict[str, Any], out: str
) -> None:
    """One DDP rank: ``stalign.train.fit`` over a process group of ``backend``; writes JSON."""
    import torch.distributed as dist

    from stalign.train import TrainConfig, fit

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    record: dict[str, Any] = {"rank": rank, "backend": backend, "device": spec["device"]}
    try:
        if spec["device"].startswith("cuda"):
            from check_cuda import cuda_bind_rank

            cuda_bind_rank(0)  # both ranks on the one GPU
        else:
            torch.set_num_threads(1)  # two ranks on the CPU's cores
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=60))
        data = synthetic_pairs(spec["n"], spec["px"])
        config = TrainConfig(**spec["config"])
        t = time.perf_counter()
        result = fit(config, data)
        record.update(
            ok=True,
            steps=result.steps,
            wall_s=time.perf_counter() - t,
            digest=_state_digest(result.model),
        )
    except Exception as e:
        record.update(ok=False, error=f"{type(e).__name__}: {e}"[-1500:])
    # written before the group is torn down: after a failed NCCL start that can hang
    tmp = Path(f"{out}.rank{rank}.json.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, f"{out}.rank{rank}.json")  # whole, for the parent that polls
    if dist.is_initialized():
        dist.destroy_process_group()


def wait_for_ranks(procs: list, files: list[Path], deadline: float, grace: float = 10.0) -> list:
    """Each rank's record; a rank still running ``grace`` s after another failed is killed.

    (After one rank fails, the other may wait in a collective until the group's timeout.)
    """
    failed_at = None
    while time.perf_counter() < deadline and any(p.is_alive() for p in procs):
        records = [json.loads(f.read_text()) for f in files if f.is_file()]
        if all(f.is_file() for f in files):
            break
        if failed_at is None and any(not r["ok"] for r in records):
            failed_at = time.perf_counter()
        if failed_at is not None and time.perf_counter() - failed_at > grace:
            break
        time.sleep(0.5)
    for proc in procs:
        proc.join(grace if all(f.is_file() for f in files) else 0)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return [
        json.loads(f.read_text())
        if f.is_file()
        else {"rank": r, "ok": False, "error": f"no result (exit code {procs[r].exitcode})"}
        for r, f in enumerate(files)
    ]


def ddp_attempt(ctx: Context, backend: str, timeout: float) -> dict[str, Any]:
    """Two ranks of :func:`ddp_rank` (spawned); ``ok`` when both end with equal weights."""
    import multiprocessing as mp

    m = ctx.profile.cli_model
    batch = max(4, ctx.profile.cli_batch // 4)
    device = "cuda:0" if ctx.is_cuda else "cpu"
    cfg = train_config(
        ctx,
        m,
        batch_size=batch,
        max_steps=2,
        device=device,
        lora_dropout=0.0,
        mol_dropout=0.0,
        stats_max_items=64,
    ).to_dict()
    spec = {"device": device, "n": 2 * batch, "px": ctx.profile.store_px, "config": cfg}
    out = ctx.work / f"ddp_{backend}"
    for r in (0, 1):
        Path(f"{out}.rank{r}.json").unlink(missing_ok=True)
    spawn = mp.get_context("spawn")
    port = _free_port()
    procs = [
        spawn.Process(target=ddp_rank, args=(r, 2, port, backend, spec, str(out))) for r in (0, 1)
    ]
    t = time.perf_counter()
    for proc in procs:
        proc.start()
    ranks = wait_for_ranks(procs, [Path(f"{out}.rank{r}.json") for r in (0, 1)], t + timeout)
    ok = all(r["ok"] for r in ranks) and ranks[0]["digest"] == ranks[1]["digest"]
    return {
        "backend": backend,
        "device": device,
        "global_batch": batch,
        "wall_s": time.perf_counter() - t,
        "ok": ok,
        "same_weights_on_both_ranks": ok,
        "ranks": ranks,
    }


def part_ddp(ctx: Context) -> dict[str, Any]:
    """A 2-process DDP run on the one device: NCCL if CUDA allows, else say why; gloo beside it."""
    attempts: dict[str, Any] = {}
    timeout = ctx.profile.timeout("ddp") / 2 - 5
    for backend in ctx.profile.ddp_backends:
        if backend == "nccl" and not ctx.is_cuda:
            attempts[backend] = {"ok": False, "skipped": "NCCL needs CUDA (CPU mode)"}
            continue
        if backend == "gloo" and attempts.get("nccl", {}).get("ok"):
            attempts[backend] = {"ok": False, "skipped": "not needed: NCCL worked"}
            continue
        attempts[backend] = ddp_attempt(ctx, backend, timeout)
    if not any(a.get("ok") for a in attempts.values()):
        raise CheckFailed("no DDP backend ran 2 processes to equal weights", {"attempts": attempts})
    return {"attempts": attempts}


# ------------------------------------------------------------------ dispatch
def part_function(name: str) -> Callable[[Context], dict[str, Any]]:
    """The function of part ``name`` (``train_loader_vit_base`` → the loader part for ViT-B)."""
    plain = {
        "env": part_env,
        "store": part_store,
        "cuda_tests": part_cuda_tests,
        "embed": part_embed,
        "cli_train": part_cli_train,
        "ddp": part_ddp,
    }
    if name in plain:
        return plain[name]
    per_model = {
        "train_synthetic_": part_train_synthetic,
        "train_loader_": part_train_loader,
        "train_compiled_": part_train_compiled,
    }
    for prefix, fn in per_model.items():
        if name.startswith(prefix):
            key = name.removeprefix(prefix)
            return lambda ctx: fn(ctx, key)
    msg = f"unknown part {name!r}"
    raise KeyError(msg)
