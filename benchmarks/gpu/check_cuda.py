"""The CUDA-only branches of the device check, one small function each.

The CPU mode (``check.py --cpu``, run by ``tests/test_gpu_check.py``) never reaches
these; everything else in the check runs in both modes. Each caller tests
``device.type == "cuda"`` before calling one of them.
"""

from __future__ import annotations

import subprocess
from typing import Any

import torch


def cuda_sync() -> None:
    """Wait for the GPU's queued work (before reading a host clock)."""
    torch.cuda.synchronize()


def cuda_reset_peak_memory() -> None:
    """Start a new peak of allocated GPU memory."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()


def cuda_peak_memory_gib() -> float:
    """Peak GPU memory allocated by tensors since the last reset (GiB)."""
    return torch.cuda.max_memory_allocated() / 2**30


def cuda_free_memory() -> None:
    """Hand cached blocks back to the driver between parts."""
    torch.cuda.empty_cache()


def cuda_pinned(x: torch.Tensor) -> torch.Tensor:
    """``x`` in page-locked host memory (what the loaders hand to a GPU)."""
    return x.pin_memory()


def cuda_is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is CUDA running out of memory."""
    return isinstance(error, torch.cuda.OutOfMemoryError)


def cuda_device_info() -> dict[str, Any]:
    """Name, compute capability, multiprocessors, memory, CUDA/cuDNN/NCCL and driver versions."""
    props = torch.cuda.get_device_properties(0)
    info: dict[str, Any] = {
        "device_name": torch.cuda.get_device_name(0),
        "device_count": torch.cuda.device_count(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "multiprocessors": props.multi_processor_count,
        "memory_gib": props.total_memory / 2**30,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "bf16_supported": torch.cuda.is_bf16_supported(),
    }
    try:
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    except (AttributeError, RuntimeError) as e:
        info["nccl"] = f"unavailable ({e})"
    info["driver"] = _nvidia_smi_driver()
    return info


def _nvidia_smi_driver() -> str:
    """The driver version as ``nvidia-smi`` reports it (``"unknown"`` without the tool)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def cuda_bind_rank(device_index: int) -> None:
    """Make ``device_index`` the current GPU of a DDP rank (before its process group)."""
    torch.cuda.set_device(device_index)
