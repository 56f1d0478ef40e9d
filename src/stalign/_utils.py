"""Small shared helpers: logging, atomic writes, reproducibility."""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ._lock import pid_alive

logger = logging.getLogger("stalign")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only on success.

    A crash (even SIGKILL) inside the block leaves ``path`` untouched: either the old
    content or the complete new content, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=suffix or ".tmp", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600: give the usual mode
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except Exception as e:
        named = write_error(e, path)
        if named is None:
            raise
        raise named from e
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


#: how libraries report the C library's errno inside a message: safetensors ("(os error
#: 28)"), HDF5 ("errno = 28")
_ERRNO_IN_MESSAGE = re.compile(r"\bos error (\d+)|\berrno = (\d+)")


def write_error(error: BaseException, path: str | os.PathLike) -> OSError | None:
    """Return an ``OSError`` naming ``path`` for a failed write (None: not the disk's fault).

    Libraries lose the file and often the cause: Python's ``write`` raises
    ``OSError(28)`` without a file name, safetensors an ``SafetensorError`` with "(os
    error 28)" in its text, torch ``RuntimeError('[enforce fail at inline_container.cc]
    unexpected pos …')`` (then the folder's file system has no space left).
    """
    if isinstance(error, OSError) and error.filename:
        return None
    code = error.errno if isinstance(error, OSError) else None
    found = _ERRNO_IN_MESSAGE.search(str(error))
    if code is None and found:
        code = int(found.group(1) or found.group(2))
    if code is None and not isinstance(error, OSError) and _no_space_left(Path(path).parent):
        code = errno.ENOSPC
    return None if code is None else OSError(code, os.strerror(code), str(path))


def _no_space_left(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False


def remove_stale_temps(path: Path) -> int:
    """Remove the temporary files of `atomic_path` for ``path`` whose process is gone.

    A run killed inside `atomic_path` leaves ``.<name>.<pid>.<random><suffix>`` beside
    ``path``; the next write of ``path`` removes those of dead processes (a live one,
    e.g. a concurrent run, keeps its file). Returns how many were removed.
    """
    prefix = f".{path.name}."
    removed = 0
    for entry in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = entry.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


def _umask() -> int:
    """Return the process umask without changing it (``/proc``; else set-and-restore)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def limit_threads(n: int) -> Iterator[None]:
    """Cap torch's and the BLAS/OpenMP pools' threads at ``n`` inside the block.

    The previous torch setting is restored afterwards (threadpoolctl restores its own).
    """
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        with threadpool_limits(limits=int(n)):
            yield
    finally:
        torch.set_num_threads(before)


def progress_bar(*args, **kwargs):
    """Return a tqdm progress bar: a Jupyter widget where ipywidgets is installed, else text.

    ``tqdm.auto`` alone warns ``TqdmWarning: IProgress not found`` in a notebook without
    ipywidgets (and then draws the text bar anyway); this draws the text bar quietly.
    Arguments are those of ``tqdm.tqdm``.
    """
    import importlib.util

    if importlib.util.find_spec("ipywidgets") is None:
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(*args, **kwargs)
