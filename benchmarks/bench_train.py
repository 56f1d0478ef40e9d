"""Training throughput on real MOB pairs (CPU), data-pipeline overhead, LoRA fraction, RSS.

Prints its figures; compares the end-to-end step (DataLoader over a PairsDataset-like
dataset, crop/augment, forward/backward/step) with the same step on tensors already
in memory, in the same run. With CUDA, also ViT-L/16 (random init) + LoRA in bf16.

    .venv/bin/python benchmarks/bench_train.py [--steps 20] [--batch 64] [--threads 2]
        [--encoder efficientnet_lite0 --pretrained --img-size 112]

``--suite`` runs ViT-Tiny (random init, 64 px) and the pretrained EfficientNet-Lite0 +
LoRA at 112 and 224 px one after the other, each in a fresh process (so each peak RSS
is its own), and prints one table.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from stalign.datasets import mob_example_pairs
from stalign.models import count_parameters
from stalign.train import TrainConfig, build_model
from stalign.train._data import GlobalBatchSampler, image_statistics, pathway_statistics
from stalign.train._fit import _loader, _optimizer, _prepare
from stalign.train._loss import contrastive_loss

MOB = Path(__file__).resolve().parents[1] / "data" / "examples" / "mob"


def _step(model, opt, images, pathways, cfg, gen, device):
    x = _prepare(images, cfg, device, gen)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        zi, zp = model(x, pathways.to(device))
    loss = contrastive_loss(zi, zp, model.logit_scale)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)


def cpu_bench(args):
    ds = mob_example_pairs(MOB, ["MOB1", "MOB2"], size_px=64)
    cfg = TrainConfig(
        encoder=args.encoder,
        pretrained=args.pretrained,
        normalization="encoder" if args.pretrained else "cohort",
        img_size=args.img_size,
        batch_size=args.batch,
        num_workers=args.workers,
        progress=False,
    )
    device = torch.device("cpu")
    pm, ps = pathway_statistics(ds)
    im, istd = image_statistics(ds, jitter_px=cfg.jitter_px)
    torch.manual_seed(0)
    model = build_model(
        cfg,
        ds.pathways.shape[1],
        image_mean=im,
        image_std=istd,
        pathway_mean=pm,
        pathway_std=ps,
        input_px=args.img_size,
    )
    opt = _optimizer(model, cfg)
    trainable, total = count_parameters(model.image_tower.encoder)
    gen = torch.Generator().manual_seed(0)
    batches = GlobalBatchSampler(len(ds), args.batch, seed=0).epoch_batches(0)
    batches = (batches * (args.steps // len(batches) + 2))[: args.steps + 2]

    # (a) end to end: DataLoader → uint8→float items → collate → crop/augment → step
    model.train()
    it = iter(_loader(ds, batches, cfg, False))
    for _ in range(2):  # warm-up
        b = next(it)
        _step(model, opt, b["image"], b["pathways"], cfg, gen, device)
    t = time.perf_counter()
    for _ in range(args.steps):
        b = next(it)
        _step(model, opt, b["image"], b["pathways"], cfg, gen, device)
    e2e = args.steps * args.batch / (time.perf_counter() - t)

    # (b) the same step on a batch already in memory (float tensors)
    b = next(iter(_loader(ds, batches[:1], cfg, False)))
    images, pathways = b["image"].clone(), b["pathways"].clone()
    t = time.perf_counter()
    for _ in range(args.steps):
        _step(model, opt, images, pathways, cfg, gen, device)
    mem = args.steps * args.batch / (time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"pairs: {len(ds)} real MOB1+MOB2 spots, 64-px patches → {args.img_size} px, "
        f"batch {args.batch}, {args.steps} timed steps, {torch.get_num_threads()} threads"
    )
    print(
        f"encoder {args.encoder} ({'pretrained' if args.pretrained else 'random init'}), "
        f"trainable fraction (LoRA r=8 on {'|'.join(cfg_targets(model))}): "
        f"{trainable:,}/{total:,} = {100 * trainable / total:.2f} %"
    )
    print(f"end-to-end training: {e2e:.1f} images/s")
    print(f"in-memory tensors  : {mem:.1f} images/s")
    print(f"data pipeline overhead: {100 * (1 - e2e / mem):.1f} % of step time (goal ≤ 15 %)")
    print(f"peak RSS: {rss:.0f} MiB")


def cfg_targets(model) -> list[str]:
    """Distinct module names LoRA adapts (``qkv``, ``conv_pw``, ...)."""
    names = model.image_tower.encoder.lora_summary.target_modules
    return sorted({n.rsplit(".", 1)[-1] for n in names})


SUITE = [
    ("vit_tiny_patch16_224", 64, False),
    ("efficientnet_lite0", 112, True),
    ("efficientnet_lite0", 224, True),
]


def suite(args):
    """Each configuration in a fresh process; one summary table."""
    rows = []
    for encoder, size, pretrained in SUITE:
        cmd = [
            sys.executable,
            __file__,
            "--encoder",
            encoder,
            "--img-size",
            str(size),
            "--steps",
            str(args.steps),
            "--batch",
            str(args.batch),
            "--no-gpu",
        ]
        cmd += ["--pretrained"] if pretrained else []
        cmd += ["--threads", str(args.threads)] if args.threads else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        print(out)
        figures = {}
        for line in out.splitlines():
            key, _, value = line.partition(":")
            figures[key.strip()] = value.strip()
        rows.append((encoder, size, pretrained, figures))
    print("| encoder | weights | px | LoRA fraction | end-to-end images/s | peak RSS |")
    print("|---|---|---|---|---|---|")
    for encoder, size, pretrained, f in rows:
        fraction = next(v for k, v in f.items() if k.startswith("encoder ")).split("= ")[-1]
        print(
            f"| {encoder} | {'ImageNet' if pretrained else 'random'} | {size} | {fraction} | "
            f"{f['end-to-end training'].split()[0]} | {f['peak RSS']} |"
        )


def gpu_bench(args):
    if not torch.cuda.is_available():
        print("GPU section skipped: CUDA not available")
        return
    from stalign.models import add_lora, create_encoder

    device = torch.device("cuda")
    enc = create_encoder("vit_large_patch16_224").to(device)  # random init, UNI's architecture
    add_lora(enc, r=8, alpha=16)
    head = torch.nn.Linear(1024, 128).to(device)
    params = [p for p in enc.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.rand(args.gpu_batch, 3, 224, 224, device=device)
    y = torch.nn.functional.normalize(torch.randn(args.gpu_batch, 128, device=device), dim=-1)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            z = torch.nn.functional.normalize(head(enc(x)).float(), dim=-1)
        loss = contrastive_loss(z, y, torch.tensor(2.66, device=device))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.gpu_steps):
        step()
    torch.cuda.synchronize()
    ips = args.gpu_steps * args.gpu_batch / (time.perf_counter() - t)
    print(
        f"GPU {torch.cuda.get_device_name()}: ViT-L/16 224 px, bf16 + LoRA r=8, batch "
        f"{args.gpu_batch}: {ips:.0f} images/s, peak memory "
        f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    )


def main():
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--gpu-batch", type=int, default=128)
    p.add_argument("--gpu-steps", type=int, default=20)
    p.add_argument("--encoder", default="vit_tiny_patch16_224")
    p.add_argument("--pretrained", action="store_true", help="pretrained weights (offline)")
    p.add_argument("--suite", action="store_true", help="ViT-Tiny and EfficientNet-Lite0")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU section")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.suite:
        suite(args)
    else:
        cpu_bench(args)
    if not args.no_gpu:
        gpu_bench(args)


if __name__ == "__main__":
    main()
