"""The ``stalign`` command line: a thin layer over the functions a notebook calls.

Each sub-command lives in its own module that defines ``register(subparsers)``;
heavy imports happen inside the command functions, so ``stalign --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .. import __version__

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
#: a full disk, a folder in use): shown as one line, without a traceback (``-vv`` shows it)
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError, MemoryError)
#: subclasses of those that signal a bug in stalign instead: always a traceback
PROGRAM_ERRORS: tuple[type[BaseException], ...] = (NotImplementedError, RecursionError)


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
    if not text.strip():
        text = type(error).__name__
    prog = f"stalign {command}" if command else "stalign"
    return f"{prog}: error: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # other libraries stay at WARNING; stalign's own logger: -v info, -vv debug
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("stalign").setLevel(logging.WARNING - 10 * min(args.verbose, 2))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        # user-facing errors: one clear line, no traceback (use -vv for it)
        if args.verbose >= 2 or isinstance(e, PROGRAM_ERRORS):
            raise
        print(format_error(args.command, e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.verbose >= 2:
            raise
        print(f"stalign {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
