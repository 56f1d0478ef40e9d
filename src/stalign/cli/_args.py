"""The command line's one dialect, shared by every sub-command.

* Defaults are shown one way, ``(default: X)``, and read from the settings dataclass
  that holds them (`settings_defaults` reads
  the field from the source without importing torch, so ``stalign --help`` stays fast);
  a flag whose dataclass default is ``None`` says in words what happens.
* List flags take space-separated values (``nargs``); a comma-separated list still
  works for one release, with a warning (`ListAction`).
* Old spellings of a flag keep working for one release, hidden from ``--help``, with a
  warning that names the new one (`add_deprecated_alias`).
* Every sub-command has a description and an example in its epilog
  (`add_command`).
"""

from __future__ import annotations

import argparse
import ast
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[1]
#: how a deprecation reads; the spelling goes away in the release after the next
REMOVAL = "will be removed in the next release"


def warn_deprecated(prog: str, message: str) -> None:
    """Print ``<prog>: warning: <message>`` on stderr (one line, as errors are printed)."""
    print(f"{prog}: warning: {message}", file=sys.stderr)


def _module_constants(tree: ast.Module) -> dict[str, ast.expr]:
    """Module-level ``NAME = value`` / ``NAME: type = value`` of ``tree``."""
    out: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name):
            out[target.id] = value
    return out


def _literal(node: ast.expr, constants: dict[str, ast.expr]) -> Any:
    """``ast.literal_eval``, also through a module constant and ``tuple(DICT)`` (its keys)."""
    if isinstance(node, ast.Name) and node.id in constants:
        return _literal(constants[node.id], constants)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("tuple", "list")
        and len(node.args) == 1
        and not node.keywords
    ):
        inner = node.args[0]
        if isinstance(inner, ast.Name) and inner.id in constants:
            inner = constants[inner.id]
        if isinstance(inner, ast.Dict):  # the keys, in order
            keys = tuple(ast.literal_eval(k) for k in inner.keys if k is not None)
            return keys if node.func.id == "tuple" else list(keys)
        value = _literal(inner, constants)
        return tuple(value) if node.func.id == "tuple" else list(value)
    return ast.literal_eval(node)


@functools.cache
def settings_defaults(module: str, cls: str) -> dict[str, Any]:
    """Return ``{field: default}`` of dataclass ``cls`` in ``stalign/<module>.py``.

    Read from the source (``ast.literal_eval`` of each annotated field), so the
    parser need not import torch; fields without a literal default are left out.
    ``tests/test_cli_dialect.py`` checks the result against the imported dataclass.
    """
    path = PACKAGE.joinpath(*module.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    constants = _module_constants(tree)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            out = {}
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    try:
                        out[item.target.id] = _literal(item.value, constants)
                    except ValueError:  # field(default_factory=...), a call: no literal
                        continue
            return out
    msg = f"no class {cls!r} in {path}"
    raise LookupError(msg)


@functools.cache
def signature_defaults(module: str, function: str) -> dict[str, Any]:
    """Return the literal keyword defaults of ``function`` in ``stalign/<module>.py``.

    For commands whose settings are a function's keywords, not a dataclass (read
    from the source, as `settings_defaults` does).
    """
    path = PACKAGE.joinpath(*module.split(".")).with_suffix(".py")
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            a = node.args
            pairs = list(zip(a.args[len(a.args) - len(a.defaults) :], a.defaults, strict=True))
            pairs += [(k, d) for k, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d]
            out = {}
            for arg, value in pairs:
                try:
                    out[arg.arg] = ast.literal_eval(value)
                except ValueError:
                    continue
            return out
    msg = f"no function {function!r} in {path}"
    raise LookupError(msg)


def format_default(value: Any, none: str | None = None) -> str:
    """Return `` (default: X)`` for a help text; ``none`` words a ``None`` default."""
    if value is None:
        if none is None:
            return ""
        text = none
    elif isinstance(value, bool):
        text = "on" if value else "off"
    elif isinstance(value, list | tuple):
        text = " ".join(str(v) for v in value) if value else "none"
    else:
        text = f"{value:g}" if isinstance(value, float) else str(value)
    return f" (default: {text})"


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, but the examples of the epilog keep their lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(("example:", "examples:")):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    *,
    summary: str,
    description: str,
    examples: Sequence[str],
) -> argparse.ArgumentParser:
    """Add sub-command ``name`` with a one-line ``summary``, a description and examples."""
    lines = ["example:" if len(examples) == 1 else "examples:"]
    lines += [f"  {e}" for e in examples]
    return subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog="\n".join(lines),
        formatter_class=HelpFormatter,
    )


class ListAction(argparse.Action):
    """``nargs='+'`` list flag; a comma-separated value is split, with a deprecation warning.

    The values are converted by ``convert`` (set by `add_list`) after splitting, so
    ``--seeds 0,1`` works as ``--seeds 0 1`` does.
    """

    convert: Any = None

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        values = [values] if isinstance(values, str) else list(values)
        if any("," in v for v in values):
            joined = " ".join(v.replace(",", " ") for v in values).split()
            warn_deprecated(
                parser.prog,
                f"comma-separated lists for {option_string} are deprecated and {REMOVAL}; "
                f"separate values with spaces: {option_string} {' '.join(joined)}",
            )
            values = joined
        if self.convert is not None:
            try:
                values = [self.convert(v) for v in values]
            except ValueError as e:
                msg = f"invalid {self.convert.__name__} value in {values}"
                raise argparse.ArgumentError(self, msg) from e
        setattr(namespace, self.dest, values)


def add_list(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    help: str,
    nargs: str = "+",
    type: Any = None,
    **kwargs: Any,
) -> argparse.Action:
    """Add a space-separated list flag (``nargs``) that still accepts a comma list."""
    action = parser.add_argument(flag, nargs=nargs, action=ListAction, help=help, **kwargs)
    action.convert = type
    return action


def add_deprecated_alias(
    parser: argparse.ArgumentParser,
    old: str,
    new: str,
    *,
    dest: str,
    nargs: str | int | None = None,
    type: Any = None,
    list_values: bool = False,
) -> argparse.Action:
    """Accept the old spelling ``old`` of ``new`` for one release, hidden, with a warning.

    ``list_values``: the new flag is a `ListAction`
    list (an old comma-separated value is split).
    """

    class _Deprecated(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None) -> None:
            warn_deprecated(parser.prog, f"{old} is deprecated and {REMOVAL}; use {new}")
            if list_values:
                values = [values] if isinstance(values, str) else list(values)
                values = " ".join(v.replace(",", " ") for v in values).split()
                if type is not None:
                    values = [type(v) for v in values]
            setattr(namespace, self.dest, values)

    return parser.add_argument(
        old, dest=dest, nargs=nargs, type=None if list_values else type,
        action=_Deprecated, help=argparse.SUPPRESS,
    )  # fmt: skip


def add_deprecated_positional(
    parser: argparse.ArgumentParser, new: str, *, dest: str, metavar: str
) -> argparse.Action:
    """Accept a positional argument now given as ``new`` (hidden); see `take_positional`."""
    return parser.add_argument(
        f"_{dest}_positional", nargs="?", default=None, metavar=metavar, help=argparse.SUPPRESS
    )


def take_positional(
    args: argparse.Namespace, prog: str, new: str, *, dest: str, required: bool = True
) -> None:
    """Move a deprecated positional value into ``args.<dest>`` (warning); require one of them."""
    old = getattr(args, f"_{dest}_positional", None)
    if old is not None:
        if getattr(args, dest, None) not in (None, old):
            msg = f"{new} {getattr(args, dest)!r} and the positional {old!r} disagree; give {new}"
            raise ValueError(msg)
        warn_deprecated(
            prog, f"giving the {dest} folder positionally is deprecated and {REMOVAL}; use {new}"
        )
        setattr(args, dest, old)
    if required and getattr(args, dest, None) is None:
        msg = f"the following argument is required: {new}"
        raise ValueError(msg)
