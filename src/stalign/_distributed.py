"""torchrun's process group, joined one way by training (`train.fit`) and evaluation.

Package-private like ``_utils``: any subpackage imports this module, so `train.fit` and
`bench.evaluate` both run under ``torchrun`` when called from Python. torch is imported
only when a function runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["distributed_group", "rank_and_world"]


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of an initialised ``torch.distributed`` group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def distributed_group() -> Iterator[tuple[int, int]]:
    """Join torchrun's process group for the block; yield ``(rank, world size)``.

    A group the caller initialised is used as it is and left alone. Otherwise, under
    ``torchrun`` (``WORLD_SIZE`` > 1) the group is initialised from its environment —
    NCCL with each rank on GPU ``LOCAL_RANK`` when CUDA is available, gloo on the CPU —
    and destroyed when the block ends, however it ends. A single process yields
    ``(0, 1)`` and initialises nothing.
    """
    import torch
    import torch.distributed as dist

    joined = dist.is_available() and dist.is_initialized()
    if joined or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield rank_and_world()
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()
