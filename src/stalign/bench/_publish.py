"""Publish an evaluation's outputs as one set: staged, moved in, then a manifest last.

``evaluate`` writes every output (tables, figures, report, results) into a staging
folder inside ``--out``; only when all are written are they moved into place, one
atomic rename per file, after the previous manifest has been removed; the manifest
``outputs.json`` (every file with its SHA-256) is written last. So:

* a run killed before publishing leaves the previous set untouched, manifest included;
* a run killed while publishing leaves no manifest: the folder is marked incomplete;
* [`check_evaluation_outputs`][stalign.bench.check_evaluation_outputs] tells a reader
  whether the folder holds one whole set (and which file breaks it if not).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .._utils import atomic_write_text

__all__ = ["MANIFEST", "amend_evaluation_outputs", "check_evaluation_outputs"]

#: Name of the manifest of a published evaluation, written last.
MANIFEST = "outputs.json"
LOCK_FILE = ".stalign-evaluate.lock"
_STAGING_PREFIX = ".staging-"


def staging_dir(out: Path) -> Path:
    """Create a fresh staging folder in ``out``, removing those of killed runs first.

    Call it while holding the output-folder lock: any staging folder left then belongs
    to a run that is gone.
    """
    for old in out.glob(f"{_STAGING_PREFIX}*"):
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
    stage = out / f"{_STAGING_PREFIX}{os.getpid()}"
    (stage / "figures").mkdir(parents=True)
    return stage


def _sha256(path: Path) -> str:
    from ..pairs import file_sha256

    return file_sha256(path)


def _old_files(out: Path) -> list[str]:
    """Files of the previously published set (empty when none or unreadable)."""
    try:
        return list(json.loads((out / MANIFEST).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def publish(stage: Path, out: Path, run: dict[str, Any]) -> dict[str, Any]:
    """Move the staged files into ``out`` and write the manifest last; return it.

    Files of the previous set that the new one lacks are removed, so the folder never
    mixes two runs' outputs under one manifest.
    """
    files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    manifest = {
        "files": {rel: _sha256(stage / rel) for rel in files},
        "run": run,
    }
    stale = [rel for rel in _old_files(out) if rel not in manifest["files"]]
    (out / MANIFEST).unlink(missing_ok=True)  # from here on the folder is marked incomplete
    for rel in stale:
        (out / rel).unlink(missing_ok=True)
    for rel in files:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / rel, out / rel)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    shutil.rmtree(stage, ignore_errors=True)
    return manifest


def check_evaluation_outputs(out: str | os.PathLike) -> dict[str, Any]:
    """Check that an evaluation folder holds one whole, unmixed set of outputs.

    Parameters
    ----------
    out
        The ``out`` folder of [`evaluate`][stalign.bench.evaluate].

    Returns
    -------
    dict
        The manifest: ``files`` (relative path → SHA-256) and ``run`` (what ran).

    Raises
    ------
    ValueError
        No manifest (a run was killed while publishing, or none finished), or a
        listed file is missing or differs from the manifest (mixed or edited).
    """
    out = Path(out)
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        files = dict(manifest["files"])
    except FileNotFoundError:
        msg = (
            f"{out}: no {MANIFEST}; the evaluation outputs there are incomplete (a run was "
            "stopped while publishing them, or none finished): rerun `stalign evaluate`"
        )
        raise ValueError(msg) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        msg = f"{out / MANIFEST}: unreadable manifest ({e})"
        raise ValueError(msg) from None
    for rel, digest in files.items():
        path = out / rel
        if not path.is_file():
            msg = f"{path}: listed in {MANIFEST} but missing; the outputs are incomplete"
            raise ValueError(msg)
        if _sha256(path) != digest:
            msg = f"{path}: differs from {MANIFEST} (written by another run, or edited)"
            raise ValueError(msg)
    return manifest


def amend_evaluation_outputs(
    out: str | os.PathLike, files: dict[str, str | bytes], *, command: str = "stalign"
) -> dict[str, Any]:
    """Add or replace files of a published evaluation and re-sign its manifest.

    For a workflow that extends the report after [`evaluate`][stalign.bench.evaluate]
    (e.g. the demo's training section). Under the evaluation folder's lock: the current
    set is checked whole first (a mixed folder is never re-signed), each file is written
    atomically, then the manifest is rewritten with their new SHA-256s.

    Parameters
    ----------
    out
        The ``out`` folder of a finished evaluation.
    files
        Relative path → new content (``str``: UTF-8 text; ``bytes``: as is).
    command
        Named in the lock's message to a concurrent run.

    Returns
    -------
    dict
        The new manifest.

    Raises
    ------
    ValueError
        The folder does not hold one whole published set, or a path leaves ``out``.
    """
    from .._lock import folder_lock
    from .._utils import atomic_write_bytes

    out = Path(out)
    with folder_lock(out / LOCK_FILE, command=command, what=str(out)):
        manifest = check_evaluation_outputs(out)
        for rel, content in files.items():
            path = (out / rel).resolve()
            if out.resolve() not in path.parents or rel == MANIFEST:
                msg = f"{rel}: expected a file path inside {out} (not the manifest)"
                raise ValueError(msg)
            path.parent.mkdir(parents=True, exist_ok=True)
            data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            atomic_write_bytes(path, data)
            manifest["files"][Path(rel).as_posix()] = _sha256(path)
        manifest["files"] = dict(sorted(manifest["files"].items()))
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    return manifest
