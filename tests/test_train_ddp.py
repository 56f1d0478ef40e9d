"""DDP on CPU (gloo, 2 processes) matches one process with the same global batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from stalign.train import TensorPairsDataset, TrainConfig, fit, mob_example_pairs

pytestmark = pytest.mark.xdist_group("ddp")  # two processes of its own: keep it on one worker


def _config() -> TrainConfig:
    # no dropout (each rank has its own dropout masks); crops/augmentations are drawn for
    # the global batch from a stream shared by the ranks, so they match a single process
    return TrainConfig(
        encoder="vit_tiny_patch16_224",
        encoder_kwargs={"depth": 2},
        img_size=32,
        batch_size=16,
        max_steps=3,
        lr=3e-3,
        lora_dropout=0.0,
        mol_dropout=0.0,
        augment=True,
        soft_targets=True,
        progress=False,
    )


def _worker(rank: int, world: int, port: int, data_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        data = torch.load(data_path, weights_only=True)
        ds = TensorPairsDataset(data["images"], data["pathways"])
        result = fit(_config(), ds)
        if rank == 0:
            torch.save({k: v.detach() for k, v in result.model.state_dict().items()}, out_path)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_single_process(mob_dir, tmp_path):
    ds = mob_example_pairs(mob_dir, ["MOB2"], max_pairs=32)
    torch.save({"images": ds.images, "pathways": ds.pathways}, tmp_path / "data.pt")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = fit(_config(), ds).model.state_dict()
    finally:
        torch.set_num_threads(n)
    mp.spawn(
        _worker,
        args=(2, _free_port(), str(tmp_path / "data.pt"), str(tmp_path / "ddp.pt")),
        nprocs=2,
        join=True,
    )
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    init = fit(
        _config().replace(max_steps=1, lr=1e-12, temperature_lr=1e-12), ds
    ).model.state_dict()
    moved = 0
    for k, v in single.items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-4, atol=1e-5, msg=f"parameter {k} differs")
        moved += int(not torch.allclose(v, init[k]))
    assert moved > 10  # training changed the parameters, so the match is not trivial
