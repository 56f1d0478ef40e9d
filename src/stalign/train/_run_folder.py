"""``check_run_folder``: refuse a training output folder in use, or holding an earlier run."""

from __future__ import annotations

import os
from pathlib import Path

from .._lock import folder_lock
from ._checkpoint import previous_run_files
from ._fit import LOCK_FILE

__all__ = ["check_run_folder"]


def check_run_folder(
    out: str | os.PathLike, *, resume: str | None = None, overwrite: bool = False
) -> None:
    """Refuse an ``out`` folder that another run is using, or that holds an earlier run.

    An early look, before any data is read, so that the right message comes first:
    [`fit`][stalign.train.fit] takes the folder's lock for real, and replaces an earlier
    run's files when it does not resume.

    Parameters
    ----------
    out
        The run's output folder (``TrainConfig.out``).
    resume
        ``TrainConfig.resume``: a run that resumes continues the earlier one.
    overwrite
        Accept an earlier run in ``out`` (a fresh run replaces its files).

    Raises
    ------
    FolderLockedError
        A live run holds ``out`` (naming its pid); a ``StalignError``.
    ValueError
        ``out`` holds an earlier run and neither ``resume`` nor ``overwrite`` is set, or
        its checkpoints are symbolic links out of it.
    """
    out = Path(out)
    if (out / LOCK_FILE).is_file():  # in use by a live run? (refuses at once if so)
        with folder_lock(out / LOCK_FILE, command="stalign train", what=f"--out {out}"):
            pass
    found = previous_run_files(out)  # refuses links out of out, before any work
    if resume is not None or overwrite:
        return
    if found:
        names = ", ".join(p.name for p in found[:3]) + (", ..." if len(found) > 3 else "")
        msg = (
            f"--out {str(out)!r} already holds a training run ({names}); continue it with "
            "--resume auto (resume='auto'), replace it with --overwrite (overwrite=True), "
            "or choose another --out"
        )
        raise ValueError(msg)
