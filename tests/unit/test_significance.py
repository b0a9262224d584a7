"""The paired accuracy test: McNemar decides, the bootstrap interval sizes the difference, and the
statement says both in words. Pure numpy/scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from workloads.significance import bootstrap_interval, paired_accuracy, significantly_worse


def pair(only_a: int, only_b: int, both: int, neither: int = 0):
    """Labels and two prediction vectors with the given agreement counts."""
    rows = only_a + only_b + both + neither
    labels = np.zeros(rows, dtype=int)
    right_a = np.r_[np.ones(only_a), np.zeros(only_b), np.ones(both), np.zeros(neither)]
    right_b = np.r_[np.zeros(only_a), np.ones(only_b), np.ones(both), np.zeros(neither)]
    return labels, np.where(right_a == 1, 0, 1), np.where(right_b == 1, 0, 1)


def test_a_clearly_better_b_is_significant_with_an_interval_above_zero():
    result = paired_accuracy(*pair(only_a=3, only_b=20, both=300), names=("v1", "v2"))
    assert result["p_value"] == pytest.approx(binomtest(20, 23, 0.5).pvalue)
    assert result["significant"] and not significantly_worse(result)
    assert result["difference"] == pytest.approx(17 / 323)
    low, high = result["ci"]
    assert 0 < low < result["difference"] < high
    assert result["statement"].startswith("v2 is better than v1 by 5.3 points")
    assert f"95% CI [{100 * low:.1f}, {100 * high:.1f}]" in result["statement"]
    assert "3 only v1" in result["statement"]


def test_a_clearly_worse_b_reads_worse_with_a_positive_interval():
    result = paired_accuracy(*pair(only_a=25, only_b=2, both=300), names=("v1", "v2"))
    assert significantly_worse(result)
    low, high = (-100 * v for v in reversed(result["ci"]))  # the interval of "worse by"
    assert result["statement"].startswith("v2 is worse than v1 by 7.0 points")
    assert f"95% CI [{low:.1f}, {high:.1f}]" in result["statement"] and 0 < low < high


def test_a_small_difference_is_not_significant_and_says_so():
    result = paired_accuracy(*pair(only_a=4, only_b=6, both=300), names=("v1", "v2"))
    assert not result["significant"] and not significantly_worse(result)
    assert result["ci"][0] < 0 < result["ci"][1]
    assert result["statement"].startswith("v2 and v1 do not differ significantly: +0.6 points")


def test_identical_predictions_are_no_difference():
    result = paired_accuracy(*pair(only_a=0, only_b=0, both=90, neither=10), names=("a", "b"))
    assert result["p_value"] == 1.0 and result["ci"] == [0.0, 0.0]
    assert result["statement"] == (
        "no difference: a and b get the same rows right, all 100 of them (accuracy 0.9000)"
    )


def test_the_count_bootstrap_matches_resampling_rows():
    rng = np.random.default_rng(1)
    differences = rng.choice([-1, 0, 1], size=400, p=[0.05, 0.85, 0.10])
    resampled = [rng.choice(differences, size=400).mean() for _ in range(4000)]
    expected = np.quantile(resampled, [0.025, 0.975])
    assert bootstrap_interval(differences, seed=0) == pytest.approx(expected, abs=0.004)
