"""The evaluation report's overall verdict: its rule on hand-made summary tables."""

import pandas as pd
import pytest

from stalign.bench._report import DEPTH_METRIC, MARGIN_SDS, _verdicts, overall_verdict

PARAMS = {
    "baseline": "baseline",
    "aligned": "aligned",
    "encoders": {"baseline": "b", "shuffled": "s", "aligned": "a"},
}


def _table(means: dict[str, float], sd: float = 0.01, n: int = 3, metric: str = DEPTH_METRIC):
    return pd.DataFrame(
        [
            {"task": "genes", "metric": metric, "features": k, "mean": m, "std": sd, "n": n}
            for k, m in means.items()
        ]
    )


@pytest.mark.parametrize(
    ("means", "sd", "n", "word"),
    [
        ({"baseline": 0.10, "shuffled": 0.11, "aligned": 0.20}, 0.01, 3, "helped"),
        # beats the baseline beyond the spread, the shuffled control only within it
        ({"baseline": 0.10, "shuffled": 0.19, "aligned": 0.20}, 0.01, 3, "not shown to help"),
        # 1.5 sd above both: within twice the larger sd
        ({"baseline": 0.10, "shuffled": 0.10, "aligned": 0.115}, 0.01, 3, "not shown to help"),
        ({"baseline": 0.10, "shuffled": 0.11, "aligned": 0.05}, 0.01, 3, "not shown to help"),
        # one value per row: nothing to judge the difference by
        ({"baseline": 0.10, "shuffled": 0.11, "aligned": 0.20}, 0.0, 1, "inconclusive"),
    ],
)
def test_overall_verdict_rule(means, sd, n, word):
    v = overall_verdict(_table(means, sd, n), PARAMS)
    assert v["verdict"] == word
    assert "aligned − baseline" in v["reason"] and "aligned − shuffled" in v["reason"]
    assert "depth-adjusted gene readout" in v["rule"]


def test_overall_verdict_needs_a_shuffled_control_and_the_depth_adjusted_readout():
    params = {**PARAMS, "encoders": {"baseline": "b", "aligned": "a"}}
    v = overall_verdict(_table({"baseline": 0.1, "aligned": 0.3}), params)
    assert v["verdict"] == "inconclusive" and "no shuffled-pair control" in v["reason"]
    # the plain HEST readout alone never earns "helped"
    plain = _table({"baseline": 0.1, "shuffled": 0.1, "aligned": 0.3}, metric="pearson")
    assert overall_verdict(plain, PARAMS)["verdict"] == "inconclusive"


@pytest.mark.parametrize(
    ("aligned", "outcome", "word"),
    [
        (0.115, "within the margin", "not shown to help"),  # 1.5 sd: "better" by the old line rule
        (0.125, "aligned is better", "helped"),
        (0.075, "aligned is WORSE", "not shown to help"),
    ],
)
def test_per_metric_lines_use_the_overall_rule(aligned, outcome, word):
    """One margin (2 × the larger sd) for the verdict lines and the overall verdict."""
    table = _table({"baseline": 0.10, "shuffled": 0.10, "aligned": aligned})
    assert overall_verdict(table, PARAMS)["verdict"] == word
    lines = _verdicts(table, "baseline", "aligned", depth=True)
    assert len(lines) == 1 and outcome in lines[0]
    assert f"margin {MARGIN_SDS} × larger sd = 0.020" in lines[0]
