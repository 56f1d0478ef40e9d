"""Shared pieces of the training tests: one thread, a tiny and fast model configuration."""

from __future__ import annotations

import os

import pytest
import torch

from stalign.train import TrainConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: faster for tiny models, and shared CI cores stay free."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_config(out: str | os.PathLike | None = None, **changes) -> TrainConfig:
    """A 2-block ViT-Tiny at 32 px, batches of 16, 4 steps, a log row per step."""
    base = dict(
        encoder="vit_tiny_patch16_224",
        encoder_kwargs={"depth": 2},
        img_size=32,
        batch_size=16,
        max_steps=4,
        lr=1e-3,
        log_every_steps=1,
        progress=False,
        out=str(out) if out is not None else None,
    )
    base.update(changes)
    return TrainConfig(**base)
