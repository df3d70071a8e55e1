"""What deserves an alert, read from the results: flagged regressions and change points.

- A regression (or improvement) is the pairwise check's verdict on a (device, spec) pair's newest result
  (`services.results.regressions.detect`): key `regression:result:<id>`.
- A change point is found over a pair's whole recent series (`services.results.changepoints`), for pairs
  with a result in the last `LOOKBACK` and at least two segments' worth of results: key
  `change_point:<device>:<spec>:<result id where the new level starts>`, so the same shift found again at
  the next scan is the same event. The series is cut where the software stack changed or a person marked
  an expected shift (`services.results.history`), and change points are looked for within each stretch.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.alerts.service import Event
from services.core.db import utcnow
from services.devices.models import Device
from services.results import regressions
from services.results.changepoints import MIN_SEGMENT
from services.results.history import device_history
from services.results.models import SpecDeviceStats

LOOKBACK = timedelta(days=1)


def _describe(
    device: str | None, kind: str, model: str | None, dataset: str | None, batch: int | None
) -> str:
    what = " ".join(str(part) for part in (kind, model, dataset) if part)
    return f"{device or 'unknown device'}: {what}" + (f" batch {batch}" if batch else "")


def regression_events(session: Session) -> list[Event]:
    """One event per flagged verdict of each pair's newest result."""
    events = []
    for verdict in regressions.detect(session, latest_only=True, flagged_only=True):
        where = _describe(
            verdict.device_name, verdict.kind, verdict.model, verdict.dataset, verdict.batch_size
        )
        text = (
            f"{verdict.flag} on {where}: {verdict.change_pct:+.1f}% "
            f"({verdict.baseline_samples_per_s:,.0f} -> {verdict.samples_per_s:,.0f} samples/s), "
            f"job {verdict.job_id}"
        )
        events.append(
            Event(
                f"regression:result:{verdict.result_id}",
                verdict.flag or "regression",
                text,
                verdict.as_dict(),
            )
        )
    return events


def change_point_events(session: Session, *, now: datetime | None = None) -> list[Event]:
    """One event per change point in the recent series of each recently measured pair."""
    since = (now or utcnow()) - LOOKBACK
    pairs = session.execute(
        select(SpecDeviceStats.device_id, SpecDeviceStats.spec_hash).where(
            SpecDeviceStats.newest_at >= since, SpecDeviceStats.result_count >= 2 * MIN_SEGMENT
        )
    ).all()
    names: dict[str, str] = {row.id: row.name for row in session.execute(select(Device.id, Device.name))}
    events = []
    for device_id, spec_hash in pairs:
        history = device_history(session, device_id, spec_hash)
        for point in history.change_points:
            first = history.points[point.index]
            where = _describe(names.get(device_id), first.kind, first.model, first.dataset, first.batch_size)
            text = (
                f"change point on {where}: {point.change:+.1%} "
                f"({point.before_median:,.0f} -> {point.after_median:,.0f} samples/s) "
                f"from result {first.result_id}, p {point.p_value:.3g}"
            )
            details = {
                "device_id": device_id,
                "spec_hash": spec_hash,
                "result_id": first.result_id,
                **point.as_dict(),
            }
            key = f"change_point:{device_id}:{spec_hash}:{first.result_id}"
            events.append(Event(key, "change_point", text, details))
    return events
