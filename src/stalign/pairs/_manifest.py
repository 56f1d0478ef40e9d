"""The sample manifest: one CSV row per sample, validated before any work starts.

The schema is documented in ``data/manifests/README.md``. Validation collects
*every* problem (with its line number in the file) and raises once, so a curator
fixes a 500-row manifest in one pass instead of one error per run.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ..io import PLATFORMS  # the one list: platforms stalign.io.read understands

__all__ = [
    "MANIFEST_COLUMNS",
    "OPTIONAL_COLUMNS",
    "PLATFORMS",
    "REQUIRED_COLUMNS",
    "ManifestError",
    "Sample",
    "read_manifest",
]

REQUIRED_COLUMNS = ("sample_id", "patient_id", "organ", "species", "platform", "path")
OPTIONAL_COLUMNS = ("image", "mpp", "source", "license")
MANIFEST_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS


# sample ids become directory names in the pairs store
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ManifestError(ValueError):
    """A manifest failed validation; ``.problems`` lists ``(line, message)`` pairs."""

    def __init__(self, path: Path, problems: list[tuple[int, str]]):
        self.path = Path(path)
        self.problems = problems
        lines = [f"  line {line}: {msg}" if line else f"  {msg}" for line, msg in problems]
        n = len(problems)
        super().__init__(
            f"manifest {self.path} has {n} problem{'s' if n != 1 else ''}:\n" + "\n".join(lines)
        )


@dataclass(frozen=True)
class Sample:
    """One validated manifest row; ``path`` and ``image`` are absolute.

    Attributes
    ----------
    sample_id, patient_id, organ, species, platform
        As in the manifest (``platform`` lower-cased).
    path
        Reader input (file or directory), absolute.
    image
        H&E image overriding the reader's own, absolute, or ``None``.
    mpp
        µm per level-0 pixel of the image, overriding the reader's estimate, or ``None``.
    source, license
        Free text (provenance), ``""`` when absent.
    line
        Line number of the row in the manifest file (1 = header).
    """

    sample_id: str
    patient_id: str
    organ: str
    species: str
    platform: str
    path: str
    image: str | None = None
    mpp: float | None = None
    source: str = ""
    license: str = ""
    line: int = 0

    def to_dict(self) -> dict:
        """Return the row as a plain JSON-serialisable dict."""
        return asdict(self)


def _parse_mpp(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(text)
    return value


def _validate_rows(
    rows: Iterable[tuple[int, dict[str, str]]], base: Path, *, check_files: bool
) -> tuple[list[Sample], list[tuple[int, str]]]:
    rows = list(rows)
    samples: list[Sample] = []
    problems: list[tuple[int, str]] = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        row_problems: list[str] = []
        values = {k: (row.get(k) or "").strip() for k in MANIFEST_COLUMNS}
        for col in REQUIRED_COLUMNS:
            if not values[col]:
                row_problems.append(f"empty required column {col!r}")
        sid = values["sample_id"]
        if sid:
            if not _SAFE_ID.match(sid):
                row_problems.append(
                    f"sample_id {sid!r} must match {_SAFE_ID.pattern} (it becomes a directory name)"
                )
            if sid in first_line:
                row_problems.append(
                    f"duplicate sample_id {sid!r} (first used on line {first_line[sid]})"
                )
            else:
                first_line[sid] = line
        platform = values["platform"].lower()
        if platform and platform not in PLATFORMS:
            row_problems.append(
                f"unknown platform {values['platform']!r}; expected one of {sorted(PLATFORMS)}"
            )
        path = _absolute(base, values["path"])
        if path is not None and check_files and not path.exists():
            row_problems.append(f"path {values['path']!r} not found (looked for {path})")
        image = _absolute(base, values["image"])
        if image is not None and check_files and not image.is_file():
            row_problems.append(f"image {values['image']!r} not found (looked for {image})")
        mpp: float | None = None
        if values["mpp"]:
            try:
                mpp = _parse_mpp(values["mpp"])
            except ValueError:
                row_problems.append(
                    f"mpp {values['mpp']!r} is not a positive number of µm per pixel"
                )
        problems.extend((line, msg) for msg in row_problems)
        if not row_problems:
            samples.append(
                Sample(
                    sample_id=sid,
                    patient_id=values["patient_id"],
                    organ=values["organ"],
                    species=values["species"],
                    platform=platform,
                    path=str(path),
                    image=str(image) if image else None,
                    mpp=mpp,
                    source=values["source"],
                    license=values["license"],
                    line=line,
                )
            )
    given = {line: (row.get("path") or "").strip() for line, row in rows}
    problems.extend(_shared_data_problems(samples, given))
    return samples, problems


def _absolute(base: Path, text: str) -> Path | None:
    """``text`` made absolute against ``base``, WITHOUT following symbolic links.

    Readers find a sample's sidecar files by the name given (``st/B4.tsv.gz`` →
    ``st/B4_spots.tsv``), so a link must keep its own name, not its target's.
    """
    if not text:
        return None
    return Path(os.path.normpath(base / Path(text).expanduser()))


def _shared_data_problems(samples: list[Sample], given: dict[int, str]) -> list[tuple[int, str]]:
    """Rows whose data file is another row's (links and ``./`` resolved).

    The same data under two patient ids would leak between patient-level splits;
    under one patient it would count the same spots twice.
    """
    problems: list[tuple[int, str]] = []
    first: dict[tuple[str, str], Sample] = {}
    for s in samples:
        key = (os.path.realpath(s.path), os.path.realpath(s.image) if s.image else "")
        other = first.setdefault(key, s)
        if other is s:
            continue
        if other.patient_id != s.patient_id:
            why = (
                f"under patient {s.patient_id!r}: the same data under two patients would leak "
                "between training and validation"
            )
        else:
            why = "again: its spots would be counted twice"
        problems.append(
            (
                s.line,
                f"path {given.get(s.line, s.path)!r} is the data of sample "
                f"{other.sample_id!r} (line {other.line}, patient {other.patient_id!r}) {why}",
            )
        )
    return problems


def read_manifest(path: str | Path, *, check_files: bool = True) -> list[Sample]:
    """Read and validate a sample manifest (CSV, one row per sample).

    Relative ``path`` / ``image`` entries are resolved against the manifest's own
    directory. Blank lines and lines starting with ``#`` are ignored.

    Parameters
    ----------
    path
        The manifest CSV. Required columns: ``sample_id``, ``patient_id``, ``organ``,
        ``species``, ``platform``, ``path``; optional: ``image``, ``mpp`` (µm/px),
        ``source``, ``license``. Unknown columns are an error (typos would be
        silently ignored otherwise).
    check_files
        Check that every ``path`` and ``image`` exists.

    Returns
    -------
    list[Sample]
        The rows in file order.

    Raises
    ------
    FileNotFoundError
        The manifest itself does not exist.
    ManifestError
        (a ``ValueError``) listing every bad row with its line number: missing
        file, unknown platform, duplicate ``sample_id``, bad ``mpp``, empty
        required field, missing/unknown column.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"manifest {path} not found (expected a CSV file, see data/manifests/README.md)"
        raise FileNotFoundError(msg)
    base = Path(os.path.abspath(path)).parent
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        problem = (
            f"not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start} is not valid "
            "UTF-8; save the manifest as UTF-8 (e.g. 'Save as CSV UTF-8')"
        )
        raise ManifestError(path, [(line, problem)]) from e
    lines = list(enumerate(text.splitlines(), start=1))
    content = [(n, text) for n, text in lines if text.strip() and not text.lstrip().startswith("#")]
    if not content:
        raise ManifestError(path, [(0, "the file has no header row")])
    header_line, header_text = content[0]
    header = [h.strip() for h in next(csv.reader([header_text]))]
    problems: list[tuple[int, str]] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        problems.append((header_line, f"missing required column(s) {missing}; found {header}"))
    unknown = [c for c in header if c not in MANIFEST_COLUMNS]
    if unknown:
        problems.append(
            (header_line, f"unknown column(s) {unknown}; allowed: {list(MANIFEST_COLUMNS)}")
        )
    dup_cols = sorted({c for c in header if header.count(c) > 1})
    if dup_cols:
        problems.append((header_line, f"duplicate column(s) {dup_cols}"))
    if problems:
        raise ManifestError(path, problems)

    rows: list[tuple[int, dict[str, str]]] = []
    for n, text in content[1:]:
        fields = next(csv.reader([text]))
        if len(fields) != len(header):
            problems.append((n, f"expected {len(header)} fields, found {len(fields)}"))
            continue
        rows.append((n, dict(zip(header, fields, strict=True))))
    samples, row_problems = _validate_rows(rows, base, check_files=check_files)
    problems.extend(row_problems)
    if not samples and not problems:
        problems.append((0, "the manifest has a header but no sample rows"))
    if problems:
        raise ManifestError(path, sorted(problems, key=lambda p: p[0]))
    return samples


def manifest_frame(samples: list[Sample]) -> pd.DataFrame:
    """Return the samples as a DataFrame indexed by ``sample_id``."""
    return pd.DataFrame([s.to_dict() for s in samples]).set_index("sample_id")
