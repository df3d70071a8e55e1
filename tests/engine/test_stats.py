"""Robust statistics of trials and the adaptive repeat loop."""

from __future__ import annotations

import json

import pytest

from engine.stats import AdaptiveRepeats, headline, median_ci_ranks, repeat_until_stable, summarize


def test_summary_of_one_to_ten() -> None:
    s = summarize([3, 1, 2, 5, 4, 6, 7, 8, 9, 10])
    assert s["n"] == 10 and s["median"] == 5.5 and s["mean"] == 5.5
    assert (s["q1"], s["q3"], s["iqr"]) == (3.25, 7.75, 4.5)
    assert s["std"] == pytest.approx(3.0276503540974917)
    assert s["cv"] == pytest.approx(3.0276503540974917 / 5.5)
    assert (s["min"], s["max"]) == (1.0, 10.0)
    assert s["ci95"] == [2.0, 9.0]  # order statistics 2 and 9 of 10


@pytest.mark.parametrize(
    ("n", "ranks"),
    [(6, (1, 6)), (10, (2, 9)), (20, (6, 15)), (50, (18, 33)), (100, (40, 61))],
)
def test_median_ci_uses_the_binomial_order_statistics(n: int, ranks: tuple[int, int]) -> None:
    lower, upper, coverage = median_ci_ranks(n)
    assert (lower, upper) == ranks
    assert 0.95 <= coverage < 0.99


def test_too_few_trials_give_the_full_range_and_say_its_coverage() -> None:
    lower, upper, coverage = median_ci_ranks(5)
    assert (lower, upper) == (1, 5) and coverage == pytest.approx(1 - 2 / 32)
    assert summarize([5.0, 1.0, 3.0])["ci95"] == [1.0, 5.0]


def test_single_trial_has_zero_spread() -> None:
    s = summarize([2.0])
    assert s["median"] == 2.0 and s["std"] == 0.0 and s["cv"] == 0.0 and s["iqr"] == 0.0


def test_empty_trials_give_n_zero_and_no_values() -> None:
    s = summarize([])
    assert s["n"] == 0 and s["median"] is None and s["ci95"] is None


def test_summary_and_headline_are_plain_json() -> None:
    s = summarize([1.5, 2.5, 2.0, 2.2, 1.9, 2.1])
    json.dumps(s, allow_nan=False)
    assert set(headline(s)) == {"median", "iqr", "ci95", "mean", "cv", "n"}


def test_repeats_stop_at_min_repeats_when_the_cv_is_under_target() -> None:
    loop = AdaptiveRepeats(min_repeats=3, max_repeats=10, target_cv=0.05)
    for value in (100.0, 101.0):
        loop.add(value)
        assert not loop.done
    loop.add(99.0)
    assert loop.done and loop.stop_reason() == "target_cv"


def test_repeats_stop_at_max_repeats_when_the_cv_stays_high() -> None:
    loop = AdaptiveRepeats(min_repeats=2, max_repeats=4, target_cv=0.01)
    for value in (1.0, 2.0, 1.0, 2.0):
        assert not loop.done
        loop.add(value)
    assert loop.done and loop.stop_reason() == "max_repeats"


def test_repeats_refuse_min_above_max() -> None:
    with pytest.raises(ValueError, match="min_repeats=5, max_repeats=2"):
        AdaptiveRepeats(min_repeats=5, max_repeats=2)


def test_repeat_until_stable_runs_the_warmup_untimed_then_the_loop() -> None:
    values = iter([50.0, 50.0, 10.0, 10.0, 10.0, 99.0])
    trials, reason = repeat_until_stable(lambda: next(values), warmup=2, min_repeats=3, max_repeats=5)
    assert trials == [10.0, 10.0, 10.0] and reason == "target_cv"


def test_repeat_until_stable_stops_when_asked() -> None:
    calls: list[int] = []

    def trial() -> float:
        calls.append(1)
        return 1.0

    trials, reason = repeat_until_stable(trial, warmup=0, min_repeats=5, should_stop=lambda: len(calls) >= 2)
    assert trials == [1.0, 1.0] and reason == "stopped"
