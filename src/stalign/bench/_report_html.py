"""The evaluation report as one self-contained HTML file (``report.html`` beside ``report.md``).

The markdown the report writes uses few constructs — headings, paragraphs, bullet
lists, pipe tables, images on their own line, ``**bold**`` and ```code``` — and
this module renders exactly those, with no dependency: images are embedded as
base64 ``data:`` URIs and the style sheet is inline, so the file opens anywhere
(mail, a browser without network) and links to nothing.
"""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path

from .._utils import atomic_write_text

__all__ = ["markdown_to_html", "write_report_html"]

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;"
    "line-height:1.45;color:#222}"
    "h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}"
    ".verdict{font-size:1.1em;padding:.7em 1em;border-left:5px solid #555;background:#f4f4f4}"
    ".table{overflow-x:auto}table{border-collapse:collapse;font-size:13px;margin:.5em 0}"
    "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}"
    "code{background:#f2f2f2;padding:0 3px;word-break:break-all}"
    "figure{margin:1em 0}img{max-width:100%;height:auto}"
)

_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)$")


def _inline(text: str) -> str:
    """Escape ``text`` and render ```code``` and ``**bold**`` (not inside code)."""

    def bold(part: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(part, quote=False))

    if text.count("`") % 2:  # an unpaired backtick: no code spans, the text as it is
        return bold(text)
    parts = text.split("`")
    return "".join(
        f"<code>{html.escape(p, quote=False)}</code>" if i % 2 else bold(p)
        for i, p in enumerate(parts)
    )


def _data_uri(src: str, root: Path) -> str:
    """Return the image file ``src`` (relative to ``root``) as a base64 ``data:`` URI."""
    rel = Path(src)
    if rel.is_absolute() or ".." in rel.parts:
        msg = f"report image {src!r}: must be a path inside the report folder {root}"
        raise ValueError(msg)
    path = root / rel
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        msg = f"report image {src!r}: unknown image type {path.suffix!r} (one of {list(_MIME)})"
        raise ValueError(msg)
    if not path.is_file():
        msg = f"report image {path} does not exist"
        raise FileNotFoundError(msg)
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _table(lines: list[str]) -> str:
    """Render a pipe table (header, ``|---|`` rule, rows)."""

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    head = "".join(f"<th>{_inline(c)}</th>" for c in cells(lines[0]))
    body = [
        "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells(line)) + "</tr>"
        for line in lines[2:]
    ]
    return (
        f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>'
        + "".join(body)
        + "</tbody></table></div>"
    )


def _block(lines: list[str], root: Path) -> str:
    """Render one block of consecutive non-blank lines."""
    first = lines[0]
    if m := re.match(r"^(#{1,3}) (.*)$", first):
        level = len(m.group(1))
        return f"<h{level}>{_inline(m.group(2))}</h{level}>"
    if first.startswith("|") and len(lines) > 1 and set(lines[1]) <= set("|-: "):
        return _table(lines)
    if all(line.startswith("- ") for line in lines):
        return "<ul>" + "".join(f"<li>{_inline(line[2:])}</li>" for line in lines) + "</ul>"
    if len(lines) == 1 and (m := _IMAGE.match(first)):
        alt = html.escape(m.group("alt"))
        src = _data_uri(m.group("src"), root)
        return f'<figure><img alt="{alt}" src="{src}"></figure>'
    cls = ' class="verdict"' if first.startswith("**Overall verdict") else ""
    return f"<p{cls}>" + "<br>\n".join(_inline(line) for line in lines) + "</p>"


def _blocks(text: str) -> list[list[str]]:
    """Split markdown into blocks at blank lines; a heading is a block of its own."""
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if not line.strip():
            blocks.append([])
        elif line.startswith("#"):
            blocks += [[line], []]
        else:
            blocks[-1].append(line.rstrip())
    return [b for b in blocks if b]


def markdown_to_html(text: str, *, root: str | os.PathLike, title: str | None = None) -> str:
    """Render the report's markdown as a self-contained HTML page.

    Parameters
    ----------
    text
        The markdown (headings, paragraphs, ``- `` lists, pipe tables, images on a
        line of their own, ``**bold**``, ```code```).
    root
        The folder the images' relative paths start from.
    title
        The page title (default: the first heading).

    Returns
    -------
    str
        The HTML document; every image is a ``data:`` URI.

    Raises
    ------
    FileNotFoundError
        An image the markdown shows does not exist.
    ValueError
        An image path leaves ``root`` or has an unknown type.
    """
    blocks = _blocks(text)
    if title is None:
        title = next((b[0].lstrip("# ") for b in blocks if b[0].startswith("# ")), "report")
    body = "\n".join(_block(b, Path(root)) for b in blocks)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        f"{body}\n</body></html>\n"
    )


def write_report_html(report: str | os.PathLike) -> Path:
    """Write ``report.html`` beside a markdown report, images embedded; return its path.

    Parameters
    ----------
    report
        The markdown file (e.g. an evaluation's ``report.md``); image paths in it
        are relative to its folder.

    Returns
    -------
    Path
        The HTML file (``report`` with the suffix ``.html``).
    """
    report = Path(report)
    text = report.read_text(encoding="utf-8")
    path = report.with_suffix(".html")
    atomic_write_text(path, markdown_to_html(text, root=report.parent))
    return path
