"""evaluate refuses to test an encoder on the patients/sections it was trained on (issue 21.4)."""

import json

import pytest

from stalign.bench._leakage import check_no_train_test_overlap


def _export(tmp_path, name, provenance):
    folder = tmp_path / name / "timm"
    folder.mkdir(parents=True)
    (folder / "stalign.json").write_text(json.dumps({"name": "x", "provenance": provenance}))
    return folder


def test_overlapping_test_patient_or_section_is_refused(tmp_path):
    trained = _export(
        tmp_path,
        "aligned",
        {"training_patients": ["mouse1"], "training_samples": ["MOB1"],
         "validation_patients": ["mouse1"], "validation_samples": ["MOB2"]},
    )  # fmt: skip
    encoders = {"baseline": ["efficientnet_lite0"], "aligned": [str(trained)]}
    with pytest.raises(ValueError, match=r"'aligned'.*patients \['mouse1'\]"):
        check_no_train_test_overlap(encoders, split_by="patient", test_groups=["mouse1"])
    # a validation section counts as seen: it chose the checkpoint
    with pytest.raises(ValueError, match=r"samples \['MOB2'\]"):
        check_no_train_test_overlap(encoders, split_by="sample", test_groups=["MOB2", "MOB3"])
    check_no_train_test_overlap(encoders, split_by="patient", test_groups=["mouse2"])
    check_no_train_test_overlap(encoders, split_by="sample", test_groups=["MOB3"])
    check_no_train_test_overlap(
        encoders, split_by="patient", test_groups=["mouse1"], allow_overlap=True
    )


def test_exports_without_provenance_pass(tmp_path):
    old = _export(tmp_path, "old", {})
    check_no_train_test_overlap({"a": str(old)}, split_by="patient", test_groups=["mouse1"])


def test_evaluate_refuses_before_any_work(tmp_path):
    """The spec (built first by evaluate and its CLI) refuses the overlap: no output written."""
    from stalign.bench import EvaluationSpec

    trained = _export(tmp_path, "aligned", {"training_patients": ["mouse1"]})
    kwargs = {"pairs_dir": tmp_path / "store", "out": tmp_path / "eval"}
    encoders = {"aligned": [str(trained)]}
    with pytest.raises(ValueError, match="trained or validated on patients"):
        EvaluationSpec(encoders=encoders, test_patients=["mouse1"], **kwargs)
    spec = EvaluationSpec(
        encoders=encoders, test_patients=["mouse1"], allow_patient_overlap=True, **kwargs
    )
    assert spec.allow_patient_overlap and not (tmp_path / "eval").exists()
