"""The split planner: one set of rules for ``stalign train``, the pipeline and the dataset."""

from __future__ import annotations

import pytest

from stalign.pairs import SplitPlan, check_disjoint_split, plan_split, split_by_patient
from stalign.pairs._split import assign_patients

#: sample id -> patient id, in store / manifest order
COHORT = {"A1": "a", "A2": "a", "B1": "b", "C1": "c", "C2": "c", "D1": "d"}


def test_held_out_validation_beside_the_training_samples():
    """``stalign train``'s style: --train-samples fit, --val-samples validate."""
    plan = plan_split(COHORT, train_samples=["B1", "A1"], val_samples=["C1"])
    assert plan == SplitPlan(fit=["B1", "A1"], val=["C1"], test=[])  # the order given
    rest = plan_split(COHORT, val_samples=["C1", "C2"])  # the others train
    assert rest.fit == ["A1", "A2", "B1", "D1"]
    by_patient = plan_split(COHORT, val_patients=["d", "a"])
    assert (by_patient.val, by_patient.fit) == (["D1", "A1", "A2"], ["B1", "C1", "C2"])
    assert plan_split(COHORT, train_samples=["A1"]).val == []  # no fraction then


def test_validation_may_not_share_samples_or_patients_with_training():
    with pytest.raises(ValueError, match=r"val_samples \['A1'\] \(--val-samples\) are also"):
        plan_split(COHORT, train_samples=["A1", "B1"], val_samples=["A1"])
    with pytest.raises(ValueError, match=r"patients \['a'\].*--allow-patient-overlap"):
        plan_split(COHORT, train_samples=["A1"], val_samples=["A2"])
    inner = plan_split(COHORT, train_samples=["A1"], val_samples=["A2"], allow_patient_overlap=True)
    assert (inner.fit, inner.val) == (["A1"], ["A2"])
    # samples without a patient id never count as shared
    check_disjoint_split({"x": "", "y": "nan"}, ["x"], ["y"])


def test_a_fraction_of_patients_validates():
    plan = plan_split(COHORT, val_fraction=0.25, seed=3)
    held_out = split_by_patient(list(COHORT.values()), {"train": 0.75, "val": 0.25}, seed=3)
    assert {COHORT[s] for s in plan.val} == set(held_out["val"])
    assert {COHORT[s] for s in plan.fit} == set(held_out["train"])
    for side in (plan.fit, plan.val):  # in the store's order
        assert side == sorted(side, key=list(COHORT).index)
    assert plan_split(COHORT, val_fraction=0).val == []
    with pytest.raises(ValueError, match=r"val_fraction: expected a number in \[0, 1\)"):
        plan_split(COHORT, val_fraction=1.0)
    with pytest.raises(ValueError, match=r"1 patient\(s\) \(a\).*--val-fraction 0"):
        plan_split({"A1": "a", "A2": "a"}, val_fraction=0.2)


def test_inner_validation_inside_the_training_side():
    """The pipeline's style: the training side includes its validation sections."""
    plan = plan_split(
        COHORT,
        train_patients=["a", "b"],
        test_patients=["c"],
        inner_validation=True,
        allow_patient_overlap=True,
    )
    assert plan.as_dict() == {"fit": ["A1", "A2"], "val": ["B1"], "test": ["C1", "C2"]}
    sections = plan_split(
        COHORT,
        train_samples=["A1", "A2"],
        test_samples=["B1"],
        val_samples=(),
        inner_validation=True,
    )
    assert (sections.fit, sections.val, sections.test) == (["A1", "A2"], [], ["B1"])
    with pytest.raises(ValueError, match=r"val_samples \['C1'\] are not training sections"):
        plan_split(COHORT, train_samples=["A1"], test_samples=["C1"], val_samples=["C1"],
                   inner_validation=True)  # fmt: skip
    with pytest.raises(ValueError, match="no training section left"):
        plan_split(COHORT, train_samples=["A1"], val_samples=["A1"], inner_validation=True)


def test_requests_that_cannot_be_planned_are_refused():
    with pytest.raises(ValueError, match=r"sections \['Z9'\] are not in the store"):
        plan_split(COHORT, test_samples=["Z9"], source="the store")
    with pytest.raises(ValueError, match=r"patients \['z'\] are not in"):
        plan_split(COHORT, val_patients=["z"])
    with pytest.raises(ValueError, match="not both"):
        plan_split(COHORT, train_patients=["a"], test_samples=["B1"])
    with pytest.raises(ValueError, match=r"test_samples: expected samples not also in train"):
        plan_split(COHORT, train_samples=["A1"], test_samples=["A1"])
    with pytest.raises(ValueError, match="val_samples or val_patients"):
        plan_split(COHORT, val_samples=["A1"], val_patients=["b"])
    with pytest.raises(ValueError, match=r"val_samples \['B1'\] are test sections"):
        plan_split(COHORT, test_samples=["B1"], val_samples=["B1"])


def test_dataset_assignments_keep_patients_apart():
    assert assign_patients(["a", "b"], assignment={"train": ["a"], "test": ["b"]}) == {
        "train": ["a"],
        "test": ["b"],
    }
    with pytest.raises(ValueError, match="patient 'a' is in splits 'train' and 'test'"):
        assign_patients(["a"], assignment={"train": ["a"], "test": ["a"]})
    assert assign_patients(["a", "b", "c"], {"x": 0.5, "y": 0.5}, seed=1) == split_by_patient(
        ["a", "b", "c"], {"x": 0.5, "y": 0.5}, seed=1
    )


def test_the_cli_leak_check_is_a_deprecated_alias():
    from stalign.cli._train import check_disjoint_split as old

    with pytest.warns(DeprecationWarning, match=r"stalign\.pairs\.check_disjoint_split"):
        old({"A1": "a"}, ["A1"], [])
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="leak"):
        old(COHORT, ["A1"], ["A2"])
