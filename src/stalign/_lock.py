"""Advisory locks on output folders, so two runs never write one folder at once.

The lock is an ``flock`` on a small file inside the folder. The kernel drops it
when the holding process dies (even by SIGKILL), so a lock is never stale: a
crashed run never blocks the next one. The holder writes one line
(``pid``, host, command, start time) into the file so that a refused run can say
who holds the folder. ``flock`` also works on NFS (Linux emulates it with POSIX
record locks). Platforms without `fcntl` (Windows) run unlocked.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from . import StalignError

logger = logging.getLogger(__name__)

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FolderLockedError", "folder_lock", "pid_alive"]


class FolderLockedError(StalignError):
    """Another process holds the lock of an output folder (a `stalign.StalignError`)."""


def _holder_line(command: str) -> str:
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"pid={os.getpid()} host={socket.gethostname()} since={now} command={command}\n"


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` runs on this host (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _describe_holders(path: Path) -> str:
    """Return 'pid 123 (host h, build-pairs since …)' for the live holders in ``path``."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "another process"
    here = socket.gethostname()
    found = []
    for line in lines:
        fields = dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
        try:
            pid = int(fields.get("pid", ""))
        except ValueError:
            continue
        host = fields.get("host", "?")
        if host == here and not pid_alive(pid):
            continue
        cmd = line.split(" command=", 1)[-1] if " command=" in line else "?"
        found.append(f"pid {pid} (host {host}, {cmd}, since {fields.get('since', '?')})")
    return ", ".join(found) if found else "another process"


def _try_flock(fd: int, shared: bool, path: Path) -> bool:
    flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    try:
        fcntl.flock(fd, flags)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            logger.warning("%s: this file system has no locks (%s); running unlocked", path, e)
            return True
        raise
    return True


@contextlib.contextmanager
def folder_lock(
    path: str | os.PathLike,
    *,
    command: str,
    shared: bool = False,
    wait_s: float = 0.0,
    what: str | None = None,
) -> Iterator[Path]:
    """Hold an advisory lock on the file ``path`` for the duration of the block.

    Parameters
    ----------
    path
        The lock file (created with mode ``0666 & ~umask``; its folder must exist).
    command
        What the holder does, shown to refused runs (e.g. ``"build-pairs"``).
    shared
        Take a shared lock (many shared holders, no exclusive one), e.g. for the
        jobs of one sharded build; otherwise an exclusive lock.
    wait_s
        Seconds to wait for the lock before refusing (0: refuse at once).
    what
        How to name the locked thing in the error (default: the lock file's folder).

    Yields
    ------
    Path
        The lock file.

    Raises
    ------
    FolderLockedError
        Another process holds a conflicting lock; the message names the folder and
        the holder's pid.
    """
    path = Path(path)
    if fcntl is None:  # pragma: no cover - Windows: no advisory locks
        yield path
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        msg = f"cannot create the lock file {path}: {e.strerror or e}"
        raise OSError(e.errno, msg) from e
    try:
        deadline = time.monotonic() + max(0.0, wait_s)
        while not _try_flock(fd, shared, path):
            if time.monotonic() >= deadline:
                holders = _describe_holders(path)
                msg = (
                    f"{what or path.parent} is in use by {holders}; wait for it to finish "
                    f"or stop it (locked by {path})"
                )
                raise FolderLockedError(msg)
            time.sleep(0.05)
        line = _holder_line(command).encode()
        if shared:  # several holders: each appends its line
            os.lseek(fd, 0, os.SEEK_END)
        else:  # the only holder: replace what dead holders left
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, line)
        yield path
    finally:
        os.close(fd)  # releases the lock
