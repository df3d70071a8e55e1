"""Regression detection: is a device's new result for a spec outside the noise of that pair's history?

For one (device, spec_hash) pair, results are taken in the order they were recorded. A result is assessed
against the (at most `HISTORY_WINDOW`) results before it, once there are at least `MIN_HISTORY` of them:

- `baseline` = the median of the history's run medians (samples/s); `change` = new median / baseline - 1.
- `z` = (new median - baseline) / spread. The spread is the robust run-to-run scatter of the history
  (1.4826 x the median absolute deviation of the run medians), but never less than three floors, so that
  three runs that happen to agree closely do not make every later wobble significant: the typical
  within-run scatter of the history (the median over its runs of IQR / 1.349 of the trials, a robust sigma),
  the within-run scatter of the new run itself, and `SPREAD_FLOOR` (2%) x baseline. A machine whose trials
  scatter widely also moves between runs as much (measured on a shared, loaded 2-core VM: within-run sigma
  3-40% of the median, run medians 30% apart; on a quiet machine both are about 1%), and a run disturbed
  in part of its windows says little about its median. On a quiet machine a change of 5% is flagged; on a
  noisy one only a change of about three within-run sigmas.
- `p` = the two-sided Mann-Whitney U test of the new run's trials against the history's pooled trials
  (scipy's normal approximation with tie and continuity corrections). The exact test cannot go below
  `2 / C(n1 + n2, n1)` (0.1 with 3 trials a side), and the approximation is not to be trusted where the
  exact test could not reach `ALPHA`: such a result is never flagged, and its reason says so.

A result is flagged only when all four agree: |change| >= `MIN_CHANGE` (5%: smaller changes are never
flagged), |z| >= `Z_THRESHOLD` (3), p < `ALPHA` (0.01), and trial counts with which the exact test could
reach `ALPHA`. Higher samples/s is better, so a drop is a
`regression` and a rise an `improvement`. The rank test alone would flag plain noise (the trials of one run
are correlated, run-to-run scatter is larger than within-run scatter); the z-score on run medians measures
exactly that scatter, and the rank test keeps a run whose trials overlap the history from being flagged.

Verdicts are computed on read, not stored: they depend only on results already in the database, the rule
can be tuned without a migration or a backfill, and a pair's history is small (one indexed query on
`ix_results_compare`, trials of at most `HISTORY_WINDOW + 1` runs per assessed result).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from scipy.stats import mannwhitneyu
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.devices.models import Device
from services.results.models import Result, Trial

MIN_HISTORY = 3
HISTORY_WINDOW = 10
MIN_CHANGE = 0.05
Z_THRESHOLD = 3.0
ALPHA = 0.01
SPREAD_FLOOR = 0.02
MAD_TO_SIGMA = 1.4826
IQR_TO_SIGMA = 1 / 1.349

Flag = Literal["regression", "improvement"]


@dataclass(frozen=True)
class MannWhitney:
    """The U statistic of the first sample and the two-sided p-value (normal approximation)."""

    u: float
    p_value: float


def mann_whitney_u(first: list[float], second: list[float]) -> MannWhitney:
    """Two-sided Mann-Whitney U test of `first` against `second`: scipy's normal approximation (average
    ranks for ties, the tie-corrected variance, a continuity correction of 0.5). Raises ValueError on an
    empty sample."""
    n1, n2 = len(first), len(second)
    if n1 == 0 or n2 == 0:
        raise ValueError(f"Mann-Whitney needs two non-empty samples, got sizes {n1} and {n2}")
    if len(set(first) | set(second)) == 1:
        return MannWhitney(u=n1 * n2 / 2, p_value=1.0)  # all values equal: no evidence either way
    outcome = mannwhitneyu(first, second, alternative="two-sided", method="asymptotic")
    return MannWhitney(u=float(outcome.statistic), p_value=float(outcome.pvalue))


def smallest_p_value(n1: int, n2: int) -> float:
    """The smallest two-sided p-value the exact rank test can give for samples of n1 and n2 values: both
    extreme orderings out of C(n1 + n2, n1). With 3 trials a side it is 0.1, so no result can be flagged
    at `ALPHA` whatever the approximation says."""
    return min(1.0, 2 / math.comb(n1 + n2, n1)) if n1 and n2 else 1.0


@dataclass(frozen=True)
class Verdict:
    """One result assessed against its pair's history; `flag` is None when it is within the noise."""

    result_id: int
    job_id: str
    device_id: str
    device_name: str | None
    spec_hash: str
    kind: str
    model: str | None
    dataset: str | None
    batch_size: int | None
    dtype: str | None
    created_at: datetime
    flag: Flag | None
    change_pct: float
    samples_per_s: float
    baseline_samples_per_s: float
    z: float
    p_value: float
    history_runs: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (ISO 8601 time)."""
        doc = asdict(self)
        doc["created_at"] = self.created_at.isoformat()
        return doc


def _robust_sigma(values: list[float]) -> float:
    """IQR / 1.349 of a run's trials (0 for fewer than two): a standard deviation that ignores outliers."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q3 - q1) * IQR_TO_SIGMA


def assess(
    new_trials: list[float], new_median: float, history: list[tuple[float, list[float]]]
) -> dict[str, Any]:
    """The module's rule for one run against `history`: [(run median, its trials)], oldest first.

    Returns `flag`, `change_pct`, `baseline`, `z`, `p_value` and `reason`; needs `MIN_HISTORY` runs.
    """
    if len(history) < MIN_HISTORY:
        raise ValueError(f"a history of at least {MIN_HISTORY} results is needed, got {len(history)}")
    medians = [median for median, _ in history]
    baseline = statistics.median(medians)
    mad = statistics.median([abs(m - baseline) for m in medians])
    within = max(
        statistics.median([_robust_sigma(trials) for _, trials in history]), _robust_sigma(new_trials)
    )
    spread = max(MAD_TO_SIGMA * mad, within, SPREAD_FLOOR * abs(baseline), 1e-12)
    change = new_median / baseline - 1 if baseline else 0.0
    z = (new_median - baseline) / spread
    pooled = [value for _, trials in history for value in trials]
    p_value = mann_whitney_u(new_trials, pooled).p_value if new_trials and pooled else 1.0
    reachable = smallest_p_value(len(new_trials), len(pooled))
    checks = [
        (f"change {change:+.1%} (flagged from {MIN_CHANGE:.0%})", abs(change) >= MIN_CHANGE),
        (f"z {z:+.1f} (flagged from {Z_THRESHOLD:g})", abs(z) >= Z_THRESHOLD),
        (f"Mann-Whitney p {p_value:.2g} (flagged under {ALPHA:g})", p_value < ALPHA),
        (
            f"{len(new_trials)} trials against {len(pooled)} can reach p {reachable:.2g} "
            f"(needs under {ALPHA:g})",
            reachable < ALPHA,
        ),
    ]
    flag: Flag | None = None
    if all(ok for _, ok in checks):
        flag = "regression" if change < 0 else "improvement"
    verdict = flag or "within noise"
    reason = f"{verdict}: " + "; ".join(f"{text} {'yes' if ok else 'no'}" for text, ok in checks)
    return {
        "flag": flag,
        "change_pct": 100.0 * change,
        "baseline": baseline,
        "z": z,
        "p_value": p_value,
        "reason": reason,
    }


def _trials_by_result(session: Session, result_ids: list[int]) -> dict[int, list[float]]:
    values: dict[int, list[float]] = defaultdict(list)
    for start in range(0, len(result_ids), 500):
        chunk = result_ids[start : start + 500]
        rows = session.execute(
            select(Trial.result_id, Trial.samples_per_s)
            .where(Trial.result_id.in_(chunk), Trial.samples_per_s.is_not(None))
            .order_by(Trial.result_id, Trial.index)
        )
        for result_id, value in rows:
            values[result_id].append(float(value or 0.0))  # NULLs filtered in the query
    return values


def detect(
    session: Session,
    *,
    device_id: str | None = None,
    spec_hash: str | None = None,
    kind: str | None = None,
    latest_only: bool = True,
    flagged_only: bool = True,
) -> list[Verdict]:
    """Verdicts of results with a throughput figure, newest first.

    `latest_only`: only each pair's newest result (else every result with enough history);
    `flagged_only`: only regressions and improvements (else every assessed result, flagged or not).
    """
    query = select(
        Result.id,
        Result.job_id,
        Result.device_id,
        Result.spec_hash,
        Result.kind,
        Result.model_name,
        Result.dataset,
        Result.batch_size,
        Result.dtype,
        Result.samples_per_s,
        Result.created_at,
    ).where(Result.samples_per_s.is_not(None), Result.device_id.is_not(None))
    if device_id is not None:
        query = query.where(Result.device_id == device_id)
    if spec_hash is not None:
        query = query.where(Result.spec_hash == spec_hash)
    if kind is not None:
        query = query.where(Result.kind == kind)
    rows = session.execute(
        query.order_by(Result.device_id, Result.spec_hash, Result.created_at, Result.id)
    ).all()
    pairs: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in rows:
        pairs[(row.device_id, row.spec_hash)].append(row)
    # Which results are assessed, and whose trials that needs.
    wanted: list[tuple[Any, list[Any]]] = []
    for runs in pairs.values():
        indexes = [len(runs) - 1] if latest_only else range(MIN_HISTORY, len(runs))
        for index in indexes:
            if index >= MIN_HISTORY:
                wanted.append((runs[index], runs[max(0, index - HISTORY_WINDOW) : index]))
    # Rows were filtered on samples_per_s IS NOT NULL: every median below is a float.
    needed = sorted({r.id for row, history in wanted for r in [row, *history]})
    trials = _trials_by_result(session, needed)
    names = {device_id: name for device_id, name in session.execute(select(Device.id, Device.name))}
    verdicts = []
    for row, history in wanted:
        outcome = assess(
            trials.get(row.id, []),
            float(row.samples_per_s or 0.0),
            [(float(h.samples_per_s or 0.0), trials.get(h.id, [])) for h in history],
        )
        if flagged_only and outcome["flag"] is None:
            continue
        verdicts.append(
            Verdict(
                result_id=row.id,
                job_id=row.job_id,
                device_id=row.device_id,
                device_name=names.get(row.device_id),
                spec_hash=row.spec_hash,
                kind=row.kind,
                model=row.model_name,
                dataset=row.dataset,
                batch_size=row.batch_size,
                dtype=row.dtype,
                created_at=row.created_at,
                flag=outcome["flag"],
                change_pct=outcome["change_pct"],
                samples_per_s=float(row.samples_per_s),
                baseline_samples_per_s=outcome["baseline"],
                z=outcome["z"],
                p_value=outcome["p_value"],
                history_runs=len(history),
                reason=outcome["reason"],
            )
        )
    verdicts.sort(key=lambda v: (v.created_at, v.result_id), reverse=True)
    return verdicts
