"""Amending a published evaluation (the demo appends its training section to the report)."""

from __future__ import annotations

import pytest

from stalign.bench import amend_evaluation_outputs, check_evaluation_outputs
from stalign.bench._publish import publish, staging_dir


def _published(tmp_path):
    out = tmp_path / "eval"
    out.mkdir(parents=True)
    stage = staging_dir(out)
    (stage / "report.md").write_text("# Report\n")
    (stage / "figures" / "a.png").write_bytes(b"\x89PNG a")
    publish(stage, out, {"what": "test"})
    return out


def test_appending_to_a_published_report_breaks_its_manifest(tmp_path):
    # the fault: the demo used to append to report.md after evaluate had signed it
    out = _published(tmp_path)
    with open(out / "report.md", "a", encoding="utf-8") as fh:
        fh.write("## more\n")
    with pytest.raises(ValueError, match=r"differs from outputs\.json"):
        check_evaluation_outputs(out)


def test_amend_rewrites_and_adds_files_and_resigns(tmp_path):
    out = _published(tmp_path)
    text = (out / "report.md").read_text() + "## Alignment training\n"
    manifest = amend_evaluation_outputs(
        out, {"report.md": text, "figures/curves.png": b"\x89PNG c"}
    )
    assert set(manifest["files"]) == {"report.md", "figures/a.png", "figures/curves.png"}
    assert manifest["run"] == {"what": "test"}
    assert (out / "report.md").read_text() == text
    assert check_evaluation_outputs(out) == manifest


def test_amend_refuses_a_mixed_folder_and_paths_outside(tmp_path):
    out = _published(tmp_path)
    (out / "figures" / "a.png").write_bytes(b"edited")
    with pytest.raises(ValueError, match=r"differs from outputs\.json"):
        amend_evaluation_outputs(out, {"report.md": "x"})
    assert (out / "report.md").read_text() == "# Report\n"  # nothing written
    out2 = _published(tmp_path / "b")
    for bad in ("../escape.md", "outputs.json"):
        with pytest.raises(ValueError, match="inside"):
            amend_evaluation_outputs(out2, {bad: "x"})
    assert not (tmp_path / "b" / "escape.md").exists()
