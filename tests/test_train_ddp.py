"""DDP on CPU (gloo, 2 processes): matches one process, restores early stopping's best."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from _fixtures_train import one_thread  # noqa: F401 (autouse fixture)

from stalign.datasets import mob_example_pairs
from stalign.train import TensorPairsDataset, TrainConfig, fit

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


def _early_stopping_config() -> TrainConfig:
    # a high learning rate: the best validation recall@5 comes before the last step
    return _config().replace(
        max_steps=12, lr=3e-2, augment=False, eval_every_steps=1, early_stopping_patience=3
    )


def _datasets(data: dict[str, torch.Tensor]):
    """32 pairs for the plain run; 48 to train and 32 to validate for early stopping."""
    small = TensorPairsDataset(data["images"][:32], data["pathways"][:32])
    full = TensorPairsDataset(data["images"], data["pathways"])
    return small, full, small


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, world: int, port: int, data_path: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        small, full, val = _datasets(torch.load(data_path, weights_only=True))
        # with an output folder: rank 0 locks it and writes, every rank its RNG state
        plain = fit(_config().replace(out=f"{out}.run", checkpoint_every_steps=2), small)
        stopped = fit(_early_stopping_config(), full, val)  # no out: nothing on disk
        saved = {
            "plain": _state(plain.model),
            "early": _state(stopped.model),
            "best_step": stopped.best_step,
        }
        torch.save(saved, f"{out}.rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(mob_dir, tmp_path_factory) -> tuple[dict[str, torch.Tensor], list[dict], Path]:
    """The data, and what each of the 2 DDP ranks returned (one spawn for both tests)."""
    tmp = tmp_path_factory.mktemp("ddp")
    ds = mob_example_pairs(mob_dir, ["MOB2"], max_pairs=48)
    data = {"images": ds.images, "pathways": ds.pathways}
    torch.save(data, tmp / "data.pt")
    mp.spawn(
        _worker,
        args=(2, _free_port(), str(tmp / "data.pt"), str(tmp / "ddp")),
        nprocs=2,
        join=True,
    )
    ranks = [torch.load(tmp / f"ddp.rank{r}.pt", weights_only=True) for r in (0, 1)]
    return data, ranks, tmp


def test_two_process_ddp_matches_single_process(ddp_run):
    data, ranks, tmp = ddp_run
    small, _, _ = _datasets(data)
    single = fit(_config(), small).model.state_dict()
    ddp = ranks[0]["plain"]
    assert ranks[1]["plain"].keys() == ddp.keys()
    assert all(torch.equal(ranks[1]["plain"][k], v) for k, v in ddp.items())
    ckpt = tmp / "ddp.run" / "checkpoints" / "step_00000002"
    assert (ckpt / "rng_rank0.pt").is_file() and (ckpt / "rng_rank1.pt").is_file()
    assert (ckpt / "state.json").is_file() and (tmp / "ddp.run" / ".lock").is_file()
    init = fit(
        _config().replace(max_steps=1, lr=1e-12, temperature_lr=1e-12), small
    ).model.state_dict()
    moved = 0
    for k, v in single.items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-4, atol=1e-5, msg=f"parameter {k} differs")
        moved += int(not torch.allclose(v, init[k]))
    assert moved > 10  # training changed the parameters, so the match is not trivial


def test_ddp_early_stopping_restores_best_weights_on_every_rank(ddp_run):
    from safetensors.torch import load_file

    data, ranks, tmp = ddp_run
    _, full, val = _datasets(data)
    single = fit(_early_stopping_config().replace(out=str(tmp / "one")), full, val)
    assert single.stopped_early and single.best_step < single.steps  # best ≠ last
    best = load_file(str(tmp / "one" / "best" / "model.safetensors"))
    for got in ranks:
        assert got["best_step"] == single.best_step
        # DDP's reductions differ from one process's in the last bits, which a high
        # learning rate amplifies to ~1e-5; the last weights differ from the best by ~1e-2
        for k, v in best.items():
            torch.testing.assert_close(got["early"][k], v, rtol=1e-3, atol=1e-4, msg=k)
    assert all(torch.equal(ranks[0]["early"][k], ranks[1]["early"][k]) for k in best)
