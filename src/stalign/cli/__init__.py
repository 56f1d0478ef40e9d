"""The ``stalign`` command line: a thin layer over the functions a notebook calls.

Each sub-command lives in its own module that defines ``register(subparsers)``;
heavy imports happen inside the command functions, so ``stalign --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
import traceback
from collections.abc import Sequence

from .. import StalignError, __version__

# module name (inside stalign.cli) -> registers one or more sub-commands
_COMMAND_MODULES = (
    "_manifest",  # manifest --from-hest
    "_pairs",  # build-pairs, merge-pairs
    "_train",  # train
    "_models",  # embed, export, encoders
    "_evaluate",  # evaluate
    "_demo",  # demo (the README's main job)
)


def build_parser() -> argparse.ArgumentParser:
    """Return the full ``stalign`` argument parser (also used to document the CLI)."""
    parser = argparse.ArgumentParser(
        prog="stalign",
        description="Spatial-transcriptomics-guided alignment of pathology image encoders.",
    )
    parser.add_argument("--version", action="version", version=f"stalign {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        module = importlib.import_module(f".{name}", __name__)
        module.register(subparsers)
    return parser


#: errors a user or their environment causes (bad input, a missing or unwritable file,
#: a full disk, no memory, and stalign's own explained failures: a folder in use, a
#: diverged run, a failed sample): shown as one line, without a traceback (``-vv`` shows
#: it). Any other ``RuntimeError`` (torch, CUDA, a bug) shows its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, StalignError, MemoryError)
#: subclasses of those that signal a bug in stalign instead: always a traceback
PROGRAM_ERRORS: tuple[type[BaseException], ...] = (NotImplementedError, RecursionError)


def is_user_error(error: BaseException) -> bool:
    """Whether the CLI shows ``error`` as one line (`USER_ERRORS`, torch's out of memory)."""
    if isinstance(error, PROGRAM_ERRORS):
        return False
    torch = sys.modules.get("torch")  # CUDA out of memory: the environment's limit
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return isinstance(error, USER_ERRORS) or (oom is not None and isinstance(error, oom))


#: HDF5's message of a failed system call, e.g. ``Can't close file (file write failed:
#: time = …, filename = 'x.h5', …, error message = 'No space left on device', buf = …)``:
#: shown as `` x.h5: No space left on device``
_HDF5_DETAIL = re.compile(
    r"[^:()]*\(file \w+ failed: [^()]*?filename = '(?P<file>[^']*)'[^()]*?"
    r"error message = '(?P<reason>[^']*)'[^()]*\)"
)


def format_error(command: str | None, error: BaseException) -> str:
    """Return the one-line message the CLI prints for a user error.

    ``OSError`` s are shown as ``<file>: <reason>`` when they carry a file name
    (``[Errno 28] No space left on device: 'x'`` becomes
    ``x: No space left on device``); an error that lists several problems (e.g.
    [`ManifestError`][stalign.pairs.ManifestError]) keeps them on indented lines after it.
    """
    text = str(error)
    if isinstance(error, OSError) and error.strerror and error.filename:
        text = f"{error.filename}: {error.strerror}"
    elif isinstance(error, OSError) and error.strerror:
        text = error.strerror  # drop the "[Errno 28]" prefix
    elif isinstance(error, MemoryError):
        text = f"out of memory{': ' + text if text else ''}"
    text = _HDF5_DETAIL.sub(r" \g<file>: \g<reason>", text)
    if isinstance(error, OSError):  # HDF5's messages span lines; a list is a ValueError
        text = " ".join(text.split())
    if not text.strip():
        text = type(error).__name__
    prog = f"stalign {command}" if command else "stalign"
    return f"{prog}: error: {text}"


def _quiet_hdf5_release(unraisable: sys.UnraisableHookArgs) -> None:
    """``sys.unraisablehook`` that logs (``-vv``) h5py's failures to release an object.

    After a failed write (a full disk) every object of the file fails to close again
    in its destructor; each would print a traceback after the one-line error.
    """
    if str(unraisable.object).startswith("h5py."):
        _log_hdf5_release(unraisable.exc_value)
        return
    sys.__unraisablehook__(unraisable)


def _quiet_hdf5_traceback(kind: type, value: BaseException, tb: object) -> None:
    """``sys.excepthook`` while a command runs: quiet for h5py's destructors.

    They print their failure through it (Cython's full tracebacks) before reporting it
    as unraisable.
    """
    frames = traceback.extract_tb(tb)  # type: ignore[arg-type]
    if frames and frames[-1].filename.startswith("h5py/"):
        _log_hdf5_release(value)
        return
    sys.__excepthook__(kind, value, tb)  # type: ignore[arg-type]


def _log_hdf5_release(error: BaseException | None) -> None:
    logging.getLogger("stalign").debug("h5py could not release an object: %s", error)


def _hdf5_objects_left_open() -> bool:
    """Whether HDF5 still holds an object (e.g. of a file it failed to write and close).

    Not collected first: releasing an object of a file whose writes failed can crash
    HDF5 itself.
    """
    h5py = sys.modules.get("h5py")
    return h5py is not None and bool(h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_ALL))


def _exit_now(code: int) -> None:
    """End the process with ``code`` without the interpreter's teardown.

    HDF5 releases the objects it still holds when the interpreter shuts down; those of a
    file whose writes failed (a full disk) then crash the process (SIGSEGV, SIGBUS)
    after the one-line error. Only used on the error path, where such files are
    temporary.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code.

    Run as the program (``argv`` None), a command that failed while HDF5 still holds an
    object ends the process at once (see `_exit_now`) instead of crashing in teardown.
    """
    try:
        code, error = _run(argv)
    except BaseException:  # -vv, or a bug: the traceback, then the same guard
        if argv is None and _hdf5_objects_left_open():
            traceback.print_exc()
            _exit_now(1)
        raise
    if code != 0 and argv is None and _hdf5_objects_left_open():
        _exit_now(code)  # ``error`` (its traceback holds h5py objects) is never released
    del error
    return code


def _run(argv: Sequence[str] | None) -> tuple[int, BaseException | None]:
    """Parse ``argv`` and run its command; user errors become one line and exit 1.

    Returns the exit code and the user error caught, if any: the caller decides when
    to release it (and with it the objects its traceback holds).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    # other libraries stay at WARNING; stalign's own logger: -v info, -vv debug
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("stalign").setLevel(logging.WARNING - 10 * min(args.verbose, 2))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2, None
    hooks = sys.unraisablehook, sys.excepthook
    sys.unraisablehook, sys.excepthook = _quiet_hdf5_release, _quiet_hdf5_traceback
    try:
        return int(args.func(args) or 0), None
    except KeyboardInterrupt:
        if args.verbose >= 2:
            raise
        print(f"stalign {args.command}: interrupted", file=sys.stderr)
        return 130, None
    except Exception as e:
        # user-facing errors: one clear line, no traceback (use -vv for it)
        if args.verbose >= 2 or not is_user_error(e):
            raise
        print(format_error(args.command, e), file=sys.stderr)
        return 1, e
    finally:
        sys.unraisablehook, sys.excepthook = hooks


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
