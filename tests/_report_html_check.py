"""Static checks of a self-contained HTML report (used by several test files)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.in_tag: list[tuple[str, str | None]] = []
        self.headings: list[str] = []
        self.verdict: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.in_tag.append((tag, dict(attrs).get("class")))

    def handle_endtag(self, tag):
        while self.in_tag:
            if self.in_tag.pop()[0] == tag:
                break

    def handle_data(self, data):
        self.text.append(data)
        open_tags = [t for t, _ in self.in_tag]
        if any(h in open_tags for h in ("h1", "h2", "h3")):
            self.headings.append(data)
        if any(c == "verdict" for _, c in self.in_tag):
            self.verdict.append(data)


def check_self_contained(path: Path, *, headings: tuple[str, ...] = ()) -> _Collect:
    """Assert the report at ``path`` opens alone: images inline, no links out, verdict first.

    Returns the parsed document (tags, text, headings, verdict text) for more checks.
    """
    doc = _Collect()
    doc.feed(path.read_text(encoding="utf-8"))
    doc.close()
    imgs = [a for t, a in doc.tags if t == "img"]
    assert imgs, f"{path}: no image"
    for a in imgs:
        assert (a.get("src") or "").startswith("data:image/"), f"{path}: image not embedded"
        assert a.get("alt"), f"{path}: image without alt text"
    for tag, attrs in doc.tags:
        assert tag not in ("script", "link", "iframe"), f"{path}: <{tag}> (not self-contained)"
        for key in ("href", "src"):
            value = attrs.get(key)
            assert value is None or value.startswith(("data:", "#")), f"{path}: {key}={value!r}"
    assert "stalign evaluation report" in doc.headings
    for h in headings:
        assert h in doc.headings, f"{path}: no heading {h!r}"
    # the overall verdict is the first paragraph, marked as such
    first_p = next(a for t, a in doc.tags if t == "p")
    assert first_p.get("class") == "verdict"
    assert "".join(doc.verdict).startswith("Overall verdict: ")
    return doc
