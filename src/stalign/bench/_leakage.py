"""Refuse to test an encoder on the patients or sections it was trained on.

An aligned export records its training data (``stalign.json``'s ``provenance``, see
[`read_provenance`][stalign.models.read_provenance]). Evaluating it on those patients
(or, with a split by section, those sections) measures memory, not generalisation, so
[`evaluate`][stalign.bench.evaluate] checks it before any work.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["check_no_train_test_overlap"]


def _sources(encoders: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    """``(label, source)`` for every source, one per seed where a label holds a list."""
    for label, value in encoders.items():
        for v in value if isinstance(value, list | tuple) else [value]:
            yield str(label), v


def check_no_train_test_overlap(
    encoders: Mapping[str, Any],
    *,
    split_by: str,
    test_groups: Sequence[str] | None,
    allow_overlap: bool = False,
) -> None:
    """Raise when an exported encoder was trained or validated on a test patient/section.

    Parameters
    ----------
    encoders
        ``{label: source or [sources]}`` as given to `evaluate`; sources that are not
        export folders (registry names, in-memory encoders) have no provenance and pass.
    split_by
        ``"patient"`` or ``"sample"``: which recorded ids are compared.
    test_groups
        The test patients or sections (``None``: leave-one-out over all, nothing to check).
    allow_overlap
        Skip the check (``--allow-patient-overlap``), e.g. to measure memorisation.

    Raises
    ------
    ValueError
        Naming the encoder, its export folder and the overlapping ids.
    """
    if allow_overlap or not test_groups:
        return
    from ..models import read_provenance

    kind = "patients" if split_by == "patient" else "samples"
    test = {str(g) for g in test_groups}
    for label, source in _sources(encoders):
        if not isinstance(source, str | os.PathLike) or not Path(source).is_dir():
            continue
        prov = read_provenance(source)
        seen = set(prov.get(f"training_{kind}") or ()) | set(prov.get(f"validation_{kind}") or ())
        overlap = sorted(seen & test)
        if overlap:
            msg = (
                f"encoder {label!r} ({source}) was trained or validated on {kind} {overlap}, "
                f"which this evaluation tests on: choose other test {kind}, or pass "
                "allow_patient_overlap=True (--allow-patient-overlap) to measure it anyway"
            )
            raise ValueError(msg)
