"""One writer per output folder: an advisory lock that dies with its process.

The lock is an operating-system file lock (``flock`` on POSIX, ``msvcrt.locking`` on
Windows) on ``<folder>/.stalign.lock``. The kernel releases it when the holding process
ends for any reason (SIGKILL, power loss of a node aside), so a stale lock file left by a
dead process never blocks the next run; only a live process holds the folder. The file
also records who holds it (pid, host, what, start time) so a refused run can say so.

Used by :func:`stalign.train.fit` for its ``output_dir`` and meant for every command that
writes into a folder it owns (the pairs store).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_NAME", "FolderLockedError", "folder_lock"]

LOCK_NAME = ".stalign.lock"
# errno of a lock held by another process (some file systems say EACCES)
_CONTENTION = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES})
_NO_LOCKS = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP})

logger = logging.getLogger(__name__)


class FolderLockedError(RuntimeError):
    """Another live process is writing into the same output folder."""


def _try_lock(fd: int, path: Path) -> bool:
    """Take an exclusive, non-blocking lock on ``fd``; ``False`` when another holds it."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in _CONTENTION:
            return False
        if e.errno in _NO_LOCKS:  # a file system without flock (some FUSE/NFS mounts)
            logger.warning("cannot lock %s (%s): running without a lock", path, e.strerror)
            return True
        raise
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    with contextlib.suppress(OSError):  # closing the descriptor releases it anyway
        fcntl.flock(fd, fcntl.LOCK_UN)


def _holder(path: Path) -> str:
    """Describe the process recorded in the lock file (best effort)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"{info['what']}, pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, what: str) -> Iterator[Path]:
    """Hold ``folder`` exclusively inside the block; refuse at once if another process does.

    Parameters
    ----------
    folder
        The output folder (created if missing).
    what
        Who is writing, for the message another run gets (e.g. ``"stalign train"``).

    Yields
    ------
    The lock file's path.

    Raises
    ------
    FolderLockedError
        A live process holds the folder; the message names it and the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd, path):
            msg = (
                f"output folder {str(folder)!r} is in use by {_holder(path)} "
                f"(lock file {LOCK_NAME}); wait for that run to finish or choose another "
                "output folder"
            )
            raise FolderLockedError(msg)
        info = {
            "what": what,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if sys.platform != "win32":  # Windows: the locked byte cannot be read by others
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        try:
            yield path
        finally:
            if sys.platform != "win32":
                os.ftruncate(fd, 0)
            _unlock(fd)
    finally:
        os.close(fd)
