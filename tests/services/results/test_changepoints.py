"""Change points over a device's history: planted shifts are found where they are, noise is left alone."""

from __future__ import annotations

import numpy as np
import pytest

from services.results.changepoints import ALPHA, PERMUTATIONS, detect_change_points


def test_a_five_percent_drop_is_found_at_its_index_with_its_size() -> None:
    rng = np.random.default_rng(3)
    series = 1000 * (1 + rng.normal(0, 0.01, 20))
    series[12:] *= 0.95
    (point,) = detect_change_points(series)
    assert point.index == 12
    assert point.p_value == pytest.approx(1 / (PERMUTATIONS + 1))  # no permutation did as well
    assert point.change == pytest.approx(-0.05, abs=0.015)
    assert point.before_median == pytest.approx(float(np.median(series[:12])))


def test_two_shifts_are_both_found_in_order() -> None:
    rng = np.random.default_rng(4)
    series = np.r_[np.full(8, 100.0), np.full(8, 94.0), np.full(8, 104.0)] + rng.normal(0, 0.4, 24)
    points = detect_change_points(series)
    assert [p.index for p in points] == [8, 16]
    assert points[0].change < -0.05 and points[1].change > 0.09
    assert points[0].after_median == points[1].before_median  # the middle segment's median


def test_a_single_disturbed_run_is_not_a_change_point() -> None:
    rng = np.random.default_rng(5)
    series = 500 * (1 + rng.normal(0, 0.01, 20))
    series[9] *= 0.5  # one run on a loaded machine
    assert detect_change_points(series) == []


def test_a_flat_or_short_series_has_no_change_point() -> None:
    assert detect_change_points([7.0] * 12) == []
    assert detect_change_points([1.0, 2.0, 3.0, 100.0, 101.0]) == []  # fewer than 3 results a side


def test_the_answer_is_the_same_every_time_for_the_same_seed() -> None:
    rng = np.random.default_rng(6)
    series = list(100 + rng.normal(0, 1, 16))
    series[8:] = [v * 0.97 for v in series[8:]]
    assert detect_change_points(series, seed=1) == detect_change_points(series, seed=1)


def test_series_without_a_change_are_flagged_at_about_alpha() -> None:
    rng = np.random.default_rng(7)
    flagged = sum(bool(detect_change_points(rng.normal(100, 2, 20), seed=i)) for i in range(400))
    # Binomial(400, 0.01): mean 4; more than 12 has probability < 1e-3 (fixed seeds: no flakiness).
    assert flagged <= 12
    assert ALPHA == 0.01
