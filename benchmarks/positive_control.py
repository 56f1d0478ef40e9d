"""Positive control for the aligner (issue 19, item 5): planted-signal pairs from real MOB patches.

Plants a stain-density grating whose period encodes one pathway (a random latent,
uncorrelated with depth and colour) into the bundled MOB H&E patches, aligns an encoder
on one mouse with LoRA contrastive training, and probes the planted pathway on the other
mouse with the project's pathway probe: frozen baseline, shuffled-pair control, aligned,
and the oracle (the grating period itself), per seed. Prints the table and the checks.

    .venv/bin/python benchmarks/positive_control.py                       # EfficientNet-Lite0
    .venv/bin/python benchmarks/positive_control.py --encoder vit_tiny_patch16_224 \
        --no-pretrained --img-size 32 --steps 150 --lr 3e-3                # the test's setting
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch

from stalign import bench, datasets, tl
from stalign.train import TrainConfig

MOUSE = {"MOB1": "mouse1", "MOB2": "mouse1", "MOB3": "mouse2", "MOB4": "mouse2"}


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", nargs="+", default=["MOB1", "MOB3"], help="MOB sections")
    p.add_argument("--encoder", default="efficientnet_lite0", help="registry name")
    p.add_argument("--no-pretrained", action="store_true", help="random initial weights")
    p.add_argument("--img-size", type=int, default=64, help="encoder input side in px")
    p.add_argument("--jitter-px", type=int, default=4, help="random-crop jitter in px")
    p.add_argument("--steps", type=int, default=150, help="optimiser steps per run")
    p.add_argument("--batch-size", type=int, default=32, help="contrastive batch")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--amplitude", type=float, default=0.8, help="grating amplitude")
    p.add_argument(
        "--keep-pathways", type=int, default=5, help="real pathways kept (-1: all of them)"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return p.parse_args()


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    warnings.filterwarnings("ignore", category=UserWarning)
    t0 = time.perf_counter()
    sections = [datasets.mob_section(s) for s in args.sections]
    for a in sections:
        tl.score_pathways(a, "hallmark", progress=False)
    crop = args.img_size
    names = [str(c) for c in sections[0].obsm["pathway_scores"].columns]
    keep = None if args.keep_pathways < 0 else names[1 : 1 + args.keep_pathways]
    planted = bench.planted_signal_pairs(
        sections,
        patients=[MOUSE[s] for s in args.sections],
        keep_pathways=keep,
        size_px=crop + 2 * args.jitter_px,
        period_px=(crop / 8, crop / 2),
        amplitude=args.amplitude,
    )
    print(f"{len(planted.dataset)} pairs; planted {planted.pathway}; r with depth/colour:")
    print({k: round(v, 4) for k, v in planted.independence().items()})
    config = TrainConfig(
        encoder=args.encoder,
        pretrained=not args.no_pretrained,
        encoder_kwargs={}
        if args.encoder != "vit_tiny_patch16_224"
        else {"depth": 2, "global_pool": "avg"},
        img_size=args.img_size,
        jitter_px=args.jitter_px,
        batch_size=args.batch_size,
        max_steps=args.steps,
        lr=args.lr,
        lora_dropout=0.0,
        progress=False,
        device="cpu",
    )
    res = bench.positive_control(planted, config, test_patients=["mouse2"], seeds=args.seeds)
    print(res.summary())
    print(f"wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
