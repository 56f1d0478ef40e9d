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
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # user-facing errors: one clear line, no traceback (use -vv for it)
        if args.verbose >= 2:
            raise
        print(f"stalign {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
