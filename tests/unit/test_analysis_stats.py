"""Statistics name their rule and agree with the standard library's definitions."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from loadbench.analysis import stats


def test_tukey_fences_on_hand_made_samples():
    kept, removed = stats.tukey([1.0, 1.1, 0.9, 1.0, 1.05, 9.0])
    assert removed == 1 and 9.0 not in kept
    s = stats.summarize([1.0, 1.1, 0.9, 1.0, 1.05, 9.0])
    assert s["tukey_removed"] == 1 and s["tukey_mean"] == pytest.approx(1.01)
    assert s["median"] == pytest.approx(1.025) and s["n"] == 6
    assert stats.summarize([2.0, 2.0, 2.0])["tukey_removed"] == 0
    assert stats.tukey([1, 2, 100]) == ([1.0, 2.0, 100.0], 0)  # too few for quartiles


@pytest.mark.parametrize("seed", range(5))
def test_summaries_match_the_standard_library(seed):
    values = np.random.default_rng(seed).lognormal(size=11).tolist()
    s = stats.summarize(values)
    assert s["median"] == pytest.approx(statistics.median(values))
    assert s["mean"] == pytest.approx(statistics.mean(values))
    assert s["std"] == pytest.approx(statistics.stdev(values))
    cuts = statistics.quantiles(values, n=20, method="inclusive")  # type 7, as numpy's default
    assert s["p5"] == pytest.approx(cuts[0]) and s["p95"] == pytest.approx(cuts[-1])
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    kept = [v for v in values if q1 - 1.5 * (q3 - q1) <= v <= q3 + 1.5 * (q3 - q1)]
    assert s["tukey_mean"] == pytest.approx(statistics.mean(kept))
    assert s["tukey_removed"] == len(values) - len(kept)


def test_values_that_are_not_finite_numbers_are_left_out():
    s = stats.summarize([1.0, float("nan"), float("inf"), None, "2", True, "x", 3.0])
    assert s["n"] == 3 and s["median"] == 2.0
    assert stats.summarize([]) == {"n": 0, "outlier_rule": stats.OUTLIER_RULE}
    assert stats.median([None, float("nan")]) is None
    assert stats.summarize([5.0])["std"] == 0.0 and stats.summarize([5.0])["p95"] == 5.0


def test_warnings_for_few_runs_and_large_spread():
    assert any("only 2 run(s)" in w for w in stats.warnings(stats.summarize([1, 2]), "x"))
    noisy = stats.warnings(stats.summarize([1, 1, 1, 1, 2]), "x")
    assert any("unstable" in w for w in noisy)
    assert stats.warnings(stats.summarize([1.0, 1.01, 0.99, 1.0, 1.0]), "x") == []
    assert stats.unstable(stats.summarize([1.0, 1.0])) is None and stats.too_few({"n": 4})
