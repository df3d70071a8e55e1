"""Robust statistics of timing trials, and the adaptive repeat loop.

`summarize(values)` gives median, quartiles, IQR, a 95% confidence interval of the median, mean, std,
coefficient of variation, min and max. The CI is the distribution-free order-statistic interval
(binomial, no resampling, so it needs no random seed and is the same every time): with n sorted trials
it is [x_(l), x_(u)] with l the largest rank such that P(Binomial(n, 1/2) < l) <= 2.5% and u = n + 1 - l.
Its coverage is at least 95%; for n < 6 no such l exists and the CI is [min, max], whose coverage
is 1 - 2^(1-n) (noted as `ci95_coverage`).

`AdaptiveRepeats` is the repeat loop: after the warm-up, keep timing windows until at least
`min_repeats` trials are in and their CV is under `target_cv`, or `max_repeats` trials are in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

CI_METHOD = "order-statistic (binomial) 95% CI of the median"


EXACT_RANKS_UP_TO = 1000  # above this many trials the ranks come from a float walk near the boundary


def median_ci_ranks(n: int, confidence: float = 0.95) -> tuple[int, int, float]:
    """1-based ranks (l, u) of the order-statistic CI of the median, and its coverage.

    l is the largest rank with P(B <= l - 1) <= alpha / 2, B ~ Binomial(n, 1/2); the interval
    [x_(l), x_(n+1-l)] then covers >= confidence. Exact integer arithmetic in one pass up to
    `EXACT_RANKS_UP_TO` trials; beyond, the binomial terms are summed in floats from 8 standard
    deviations below the median (what is left out is under 1e-15). Either way linear time
    and no overflow (2.0**n overflows at n = 1024, which a comparison pooling many runs reaches).
    """
    if n < 1:
        raise ValueError("median_ci_ranks needs at least one trial")
    alpha = 1.0 - confidence
    if n > EXACT_RANKS_UP_TO:
        return _median_ci_ranks_large(n, alpha)
    limit = Fraction(str(alpha)) * 2**n  # exact alpha * 2^n
    lower, cumulative, term = 0, 0, 1  # cumulative = sum of C(n, i) for i < lower; term = C(n, lower)
    while lower + 1 <= (n + 1) // 2 and 2 * (cumulative + term) <= limit:
        cumulative += term
        term = term * (n - lower) // (lower + 1)
        lower += 1
    if lower == 0:
        # Too few trials for the asked confidence: use the full range and say what it covers.
        return 1, n, 1.0 - 2.0 * 0.5**n
    return lower, n + 1 - lower, float(1 - Fraction(2 * cumulative, 2**n))


def _median_ci_ranks_large(n: int, alpha: float) -> tuple[int, int, float]:
    """`median_ci_ranks` for large n: the same rule, the binomial terms in floats near the boundary."""
    lower = max(0, int(n / 2 - 4 * math.sqrt(n)))  # 8 standard deviations (sqrt(n) / 2) below n / 2
    log_term = math.lgamma(n + 1) - math.lgamma(lower + 1) - math.lgamma(n - lower + 1) - n * math.log(2)
    term = math.exp(log_term)
    cumulative = 0.0
    while lower + 1 <= (n + 1) // 2 and cumulative + term <= alpha / 2:
        cumulative += term
        term = term * (n - lower) / (lower + 1)
        lower += 1
    return lower, n + 1 - lower, 1.0 - 2.0 * cumulative


def summarize(values: Iterable[float]) -> dict[str, Any]:
    """Robust summary: n, median, q1, q3, iqr, ci95 [lo, hi], ci95_coverage, mean, std, cv, min, max.

    `std` is the sample standard deviation (ddof=1; 0 for a single trial); `cv` = std / mean.
    Plain Python floats, so the result is JSON-serialisable. An empty input gives n = 0 and None values.
    """
    x = np.sort(np.asarray(list(values), dtype=np.float64))
    n = int(x.size)
    if n == 0:
        keys = ("median", "q1", "q3", "iqr", "ci95", "ci95_coverage", "mean", "std", "cv", "min", "max")
        return {"n": 0, **dict.fromkeys(keys)} | {"ci_method": CI_METHOD}
    q1, median, q3 = (float(v) for v in np.percentile(x, [25, 50, 75]))
    lower, upper, coverage = median_ci_ranks(n)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    return {
        "n": n,
        "median": median,
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "ci95": [float(x[lower - 1]), float(x[upper - 1])],
        "ci95_coverage": coverage,
        "mean": mean,
        "std": std,
        "cv": std / mean if mean != 0 else None,
        "min": float(x[0]),
        "max": float(x[-1]),
        "ci_method": CI_METHOD,
    }


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The short form results carry in `metrics`: median, iqr, ci95, mean, cv, n."""
    return {key: summary[key] for key in ("median", "iqr", "ci95", "mean", "cv", "n")}


def coefficient_of_variation(values: Sequence[float]) -> float:
    """Sample std / mean; infinity when undefined (fewer than two values or a zero mean)."""
    if len(values) < 2:
        return math.inf
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    return float(arr.std(ddof=1)) / mean if mean != 0 else math.inf


@dataclass
class AdaptiveRepeats:
    """The stopping rule of the repeat loop: feed it trials with `add`, stop when `done` turns true.

    Done when `max_repeats` trials have been taken, or when at least `min_repeats` clean ones are in and
    their CV is under `target_cv`. A trial taken under bad conditions (`add(value, marks)` with a reason:
    a throttling device, a slow clock, a loaded host) is kept apart in `dropped` and not averaged in; it
    still counts towards `max_repeats`, so a machine that is always loaded cannot make the loop run
    forever. If every trial was marked, `trials` are the marked ones (`all_marked` says so): a figure
    taken under bad conditions, labelled, rather than none.
    """

    min_repeats: int = 5
    max_repeats: int = 50
    target_cv: float = 0.05
    clean: list[float] = field(default_factory=list)
    dropped: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.min_repeats <= self.max_repeats:
            raise ValueError(
                f"need 1 <= min_repeats <= max_repeats, got min_repeats={self.min_repeats}, "
                f"max_repeats={self.max_repeats}"
            )

    def add(self, value: float, marks: tuple[str, ...] = ()) -> None:
        """Record one trial, and why it was taken under bad conditions if it was (`marks`)."""
        if marks:
            self.dropped.append((float(value), tuple(marks)))
        else:
            self.clean.append(float(value))

    @property
    def all_marked(self) -> bool:
        """No clean trial, but marked ones: the figures come from those."""
        return not self.clean and bool(self.dropped)

    @property
    def trials(self) -> list[float]:
        """The trials the figures are made of: the clean ones (the marked ones if there is no clean one)."""
        return [value for value, _ in self.dropped] if self.all_marked else self.clean

    @property
    def taken(self) -> int:
        return len(self.clean) + len(self.dropped)

    def dropped_reasons(self) -> dict[str, int]:
        """How many trials each reason marked (a trial may have several)."""
        counts: dict[str, int] = {}
        for _, marks in self.dropped:
            for mark in marks:
                reason = mark.split(":", 1)[0]
                counts[reason] = counts.get(reason, 0) + 1
        return counts

    @property
    def cv(self) -> float:
        """CV of the trials so far."""
        return coefficient_of_variation(self.trials)

    @property
    def converged(self) -> bool:
        """At least `min_repeats` clean trials and their CV under target."""
        return len(self.clean) >= self.min_repeats and coefficient_of_variation(self.clean) < self.target_cv

    @property
    def done(self) -> bool:
        """Whether to stop taking trials."""
        return self.taken >= self.max_repeats or self.converged

    def stop_reason(self) -> str:
        """Why the loop stopped (or would stop now): "target_cv", "max_repeats" or "budget"."""
        if self.converged:
            return "target_cv"
        if self.taken >= self.max_repeats:
            return "max_repeats"
        return "budget"


def repeat_until_stable(
    trial: Callable[[], float],
    *,
    warmup: int = 1,
    min_repeats: int = 5,
    max_repeats: int = 50,
    target_cv: float = 0.05,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[list[float], str]:
    """Run `trial` `warmup` times untimed, then until `AdaptiveRepeats` is done.

    `trial()` returns the measured value of one trial (a time or a rate). Returns the trials and the
    stop reason ("target_cv", "max_repeats", or "stopped" when `should_stop()` turned true).
    """
    for _ in range(warmup):
        trial()
    loop = AdaptiveRepeats(min_repeats, max_repeats, target_cv)
    while not loop.done:
        if should_stop is not None and should_stop():
            return loop.trials, "stopped"
        loop.add(trial())
    return loop.trials, loop.stop_reason()
