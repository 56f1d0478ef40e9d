"""Train / validation / test splits of a cohort's sections, planned once, checked for leaks.

`plan_split` is the one planner: ``stalign train`` (the samples of a pairs store), the
demo pipeline (`stalign.pipeline.plan_sections`, the sections of a manifest) and
``PairsDataset(split=...)`` / ``PairsDataset.split_by_patient`` (through
`assign_patients`) use it, so every split follows the same rules:

* a section is on one side only, and test sections never train or validate;
* a split by patient keeps every section of a patient on one side;
* validation shares no patient with training unless that is asked for
  (``allow_patient_overlap``: an inner split by section of one animal or person),
  see `check_disjoint_split`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_SPLIT",
    "SplitPlan",
    "assign_patients",
    "check_disjoint_split",
    "check_split_request",
    "plan_split",
    "split_by_patient",
]

#: the default split of `split_by_patient`: 80 % of the patients train, 20 % validate
DEFAULT_SPLIT = {"train": 0.8, "val": 0.2}


@dataclass(frozen=True)
class SplitPlan:
    """Sample ids per side of a split.

    Sections named by the request come in its order (a patient's sections in the order
    of the samples given to `plan_split`); the others (the training side by default, a
    fraction held out) in the order of the samples given.

    Attributes
    ----------
    fit
        Sections whose pairs train the weights.
    val
        Sections that validate during training (may be empty).
    test
        Sections evaluated once, at the end (empty when no test side was asked for).
    """

    fit: list[str]
    val: list[str]
    test: list[str]

    def as_dict(self) -> dict[str, list[str]]:
        """Return ``{'fit': [...], 'val': [...], 'test': [...]}``."""
        return {"fit": list(self.fit), "val": list(self.val), "test": list(self.test)}


def split_by_patient(
    patient_ids: Sequence[str],
    fractions: Mapping[str, float] | None = None,
    *,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Assign whole patients to splits, deterministically.

    Patients (not spots or samples) are split so that no individual appears in
    two splits. The unique ids are sorted, shuffled with ``seed`` and cut by
    ``fractions`` (largest remainder); every split with a positive fraction gets
    at least one patient when there are enough patients.

    Parameters
    ----------
    patient_ids
        Patient ids (duplicates allowed, e.g. one per spot).
    fractions
        Split name → fraction of patients (normalised to sum 1); default
        ``{'train': 0.8, 'val': 0.2}``.
    seed
        Seed of the shuffle; the same ids and seed always give the same split.

    Returns
    -------
    dict[str, list[str]]
        Split name → sorted patient ids.
    """
    fractions = dict(DEFAULT_SPLIT if fractions is None else fractions)
    if not fractions or any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        msg = f"fractions must be non-negative with a positive sum, got {fractions}"
        raise ValueError(msg)
    patients = sorted({str(p) for p in patient_ids})
    n = len(patients)
    names = list(fractions)
    total = sum(fractions.values())
    quota = np.array([fractions[k] / total * n for k in names])
    counts = np.floor(quota).astype(int)
    order = np.argsort(-(quota - counts), kind="stable")
    for k in order[: n - counts.sum()]:
        counts[k] += 1
    positive = [i for i, k in enumerate(names) if fractions[k] > 0]
    for i in positive:  # give every non-empty split a patient, taken from the largest
        if counts[i] == 0 and n >= len(positive):
            donor = int(np.argmax(counts))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[i] += 1
    perm = np.random.default_rng(seed).permutation(n)
    out: dict[str, list[str]] = {}
    start = 0
    for name, c in zip(names, counts, strict=True):
        out[name] = sorted(patients[j] for j in perm[start : start + c])
        start += c
    return out


def assign_patients(
    patient_ids: Sequence[str],
    fractions: Mapping[str, float] | None = None,
    *,
    seed: int = 0,
    assignment: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, list[str]]:
    """Return split name → patient ids: ``assignment`` checked, or `split_by_patient`.

    Raises
    ------
    ValueError
        A patient of ``assignment`` is in two splits, or bad ``fractions``.
    """
    if assignment is None:
        return split_by_patient(patient_ids, fractions, seed=seed)
    seen: dict[str, str] = {}
    for name, ps in assignment.items():
        for p in ps:
            if p in seen:
                msg = f"patient {p!r} is in splits {seen[p]!r} and {name!r}"
                raise ValueError(msg)
            seen[p] = name
    return {name: list(ps) for name, ps in assignment.items()}


def _known_patient(patient_id: object) -> bool:
    return patient_id is not None and str(patient_id).strip().lower() not in ("", "nan", "none")


def check_disjoint_split(
    patients: Mapping[str, str],
    train_samples: Sequence[str],
    val_samples: Sequence[str],
    *,
    allow_patient_overlap: bool = False,
) -> None:
    """Refuse a validation set that shares samples (or, by default, patients) with training.

    Parameters
    ----------
    patients
        Sample id → patient id (e.g. of a pairs store's ``index.json``).
    train_samples, val_samples
        The chosen samples.
    allow_patient_overlap
        Accept shared patients (an inner split by section of the same animal/person).
        Samples without a patient id never count as shared.

    Raises
    ------
    ValueError
        Naming the shared samples or patients.
    """
    shared = sorted(set(train_samples) & set(val_samples))
    if shared:
        msg = (
            f"val_samples {shared} (--val-samples) are also training samples "
            "(--train-samples): validation must be held out from training"
        )
        raise ValueError(msg)
    if allow_patient_overlap:
        return
    train_p = {patients[s] for s in train_samples if _known_patient(patients.get(s))}
    val_p = {patients[s] for s in val_samples if _known_patient(patients.get(s))}
    both = sorted(train_p & val_p)
    if both:
        where = {p: sorted(s for s in val_samples if patients.get(s) == p) for p in both}
        msg = (
            f"patients {both} are in both training and validation (validation samples "
            f"{where}): spots of one patient leak between the sets; hold out whole patients "
            "(val_patients, --val-patients) or allow an inner split by section "
            "(allow_patient_overlap=True, --allow-patient-overlap)"
        )
        raise ValueError(msg)


def check_split_request(
    *,
    train_samples: Sequence[str] | None = None,
    test_samples: Sequence[str] | None = None,
    train_patients: Sequence[str] | None = None,
    test_patients: Sequence[str] | None = None,
    val_samples: Sequence[str] | None = None,
    val_patients: Sequence[str] | None = None,
) -> None:
    """Check a split request before any data is read: one kind of split, no id on two sides.

    Raises
    ------
    ValueError
        Both a split by patient (``train_patients``/``test_patients``) and one by
        section (``train_samples``/``test_samples``), both ``val_samples`` and
        ``val_patients``, or an id on the training and the test side (named).
    """
    by_patient = (train_patients, test_patients)
    by_sample = (train_samples, test_samples)
    if any(v is not None for v in by_patient) and any(v is not None for v in by_sample):
        msg = (
            "test_samples: expected a split by patient (train_patients, test_patients) or by "
            "section (train_samples, test_samples), not both; set the other pair to None"
        )
        raise ValueError(msg)
    if val_samples is not None and val_patients is not None:
        msg = "val_patients: expected val_samples or val_patients, not both"
        raise ValueError(msg)
    for kind, (train, test) in (("patients", by_patient), ("samples", by_sample)):
        overlap = sorted(set(train or ()) & set(test or ()))
        if overlap:
            msg = f"test_{kind}: expected {kind} not also in train_{kind} (both: {overlap})"
            raise ValueError(msg)


def _sections(
    patients: Mapping[str, str],
    samples: Sequence[str] | None,
    patient_ids: Sequence[str] | None,
    source: str,
) -> list[str]:
    """Sample ids named by ``samples``, or the sections of ``patient_ids``, in that order.

    A patient's sections come in the order of ``patients``.
    """
    if patient_ids is not None:
        wanted = [str(p) for p in patient_ids]
        known = {str(p) for p in patients.values()}
        what = "patients"
    else:
        wanted, known, what = [str(s) for s in samples or ()], set(patients), "sections"
    missing = [x for x in wanted if x not in known]
    if missing:
        msg = f"{what} {missing} are not in {source} ({what} there: {sorted(known)})"
        raise ValueError(msg)
    if patient_ids is None:
        return wanted
    return [s for p in dict.fromkeys(wanted) for s, q in patients.items() if str(q) == p]


def _fraction_of_patients(
    patients: Mapping[str, str], side: list[str], fraction: float, seed: int, source: str
) -> list[str]:
    """Return the sections of ``fraction`` of ``side``'s patients (`split_by_patient`)."""
    ids = [str(patients[s]) for s in side]
    assignment = split_by_patient(ids, {"train": 1 - fraction, "val": fraction}, seed=seed)
    empty = [name for name in ("train", "val") if not assignment[name]]
    if empty:
        unique = sorted(set(ids))
        msg = (
            f"val_fraction {fraction} (--val-fraction) leaves no patient for {empty[0]}: "
            f"{source} has {len(unique)} patient(s) ({', '.join(unique[:5])}); choose the "
            "sections with train_samples and val_samples (--train-samples and --val-samples; "
            "add --allow-patient-overlap for sections of one patient), or pass "
            "--val-fraction 0 to train on everything without validation"
        )
        raise ValueError(msg)
    held_out = set(assignment["val"])
    return [s for s in side if str(patients[s]) in held_out]


def plan_split(
    patients: Mapping[str, str],
    *,
    train_samples: Sequence[str] | None = None,
    val_samples: Sequence[str] | None = None,
    test_samples: Sequence[str] | None = None,
    train_patients: Sequence[str] | None = None,
    val_patients: Sequence[str] | None = None,
    test_patients: Sequence[str] | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    inner_validation: bool = False,
    allow_patient_overlap: bool = False,
    source: str = "the data",
) -> SplitPlan:
    """Plan which sections train, validate and test; refuse a split that leaks.

    Parameters
    ----------
    patients
        Sample id → patient id of every available section, in a fixed order (a
        manifest's rows, a pairs store's ``index.json``); the plan keeps that order.
    train_samples, train_patients
        The training side, by section or by patient (default: every section not tested
        and, unless ``inner_validation``, not validating).
    test_samples, test_patients
        The test side, by section or by patient (default: none). Give a split by
        patient or by section, not both.
    val_samples, val_patients
        The validation sections, or the patients whose sections validate. Without
        ``inner_validation`` they are held out beside the training samples; with it
        they are chosen among the training side's sections.
    val_fraction
        Without a training or validation side given: this fraction (in [0, 1)) of the
        patients validates, picked by `split_by_patient` with ``seed``; 0: no validation.
    inner_validation
        The training side includes the validation sections (the demo's inner split by
        section): ``val_samples`` must be training sections and, when no validation is
        given, the last training section validates if there are two or more.
    allow_patient_overlap
        Let training and validation share patients (`check_disjoint_split`).
    source
        What ``patients`` came from, for messages (a manifest or store path).

    Returns
    -------
    SplitPlan
        ``fit``, ``val`` and ``test`` sample ids.

    Raises
    ------
    ValueError
        Unknown ids, a request `check_split_request` refuses, validation outside the
        training side (``inner_validation``) or shared with it (`check_disjoint_split`),
        no section left to train on, or a ``val_fraction`` outside [0, 1) or that
        leaves a side without a patient.
    """
    check_split_request(
        train_samples=train_samples,
        test_samples=test_samples,
        train_patients=train_patients,
        test_patients=test_patients,
        val_samples=val_samples,
        val_patients=val_patients,
    )
    if not 0 <= val_fraction < 1:
        msg = f"val_fraction: expected a number in [0, 1) (0: no validation), got {val_fraction}"
        raise ValueError(msg)
    test = _sections(patients, test_samples, test_patients, source)
    train_given = train_samples is not None or train_patients is not None
    val_given = val_samples is not None or val_patients is not None
    val = _sections(patients, val_samples, val_patients, source) if val_given else []
    if train_given:
        side = _sections(patients, train_samples, train_patients, source)
    else:
        beside = set(test) | (set() if inner_validation else set(val))
        side = [s for s in patients if s not in beside]
    if inner_validation:
        outside = [s for s in val if s not in side]
        if outside:
            msg = (
                f"val_samples {outside} are not training sections ({side}); validation "
                "must never use the test sections"
            )
            raise ValueError(msg)
        if not val_given:
            val = side[-1:] if len(side) >= 2 else []
        fit = [s for s in side if s not in val]
    elif not val_given and not train_given and val_fraction > 0:
        val = _fraction_of_patients(patients, side, val_fraction, seed, source)
        fit = [s for s in side if s not in val]
    else:
        fit = side
    if not fit:
        msg = f"no training section left: {side} are all validation sections (val_samples)"
        raise ValueError(msg)
    tested = [s for s in val if s in test]
    if tested:
        msg = f"val_samples {tested} are test sections: validation must never use them"
        raise ValueError(msg)
    check_disjoint_split(patients, fit, val, allow_patient_overlap=allow_patient_overlap)
    return SplitPlan(fit=fit, val=val, test=test)
