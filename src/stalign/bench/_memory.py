"""Process memory: hand freed heap pages back to the operating system."""

from __future__ import annotations

__all__ = ["release_freed_heap"]


def release_freed_heap() -> None:
    """Hand heap pages freed by the per-sample reads back to the OS (glibc only).

    glibc raises its mmap threshold after each large free, so later buffers of the
    same size (patch chunks, per-sample counts, per-fold matrices) land in the heap
    and, once freed, stay resident; the large matrices allocated later never reuse
    them. After the spot table alone this returns ~70 MiB at 100 k pairs. Elsewhere
    (no glibc) it does nothing.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        return
