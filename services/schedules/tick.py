"""The minute tick (Celery beat sends it; any worker runs it): due schedules, then alerts.

1. Find the scheduled runs with no succeeded job a period after they were submitted (before this tick
   submits their next run), then submit the suite of every due schedule (`schedules.service.run_due`).
2. Collect the other events worth an alert: flagged regressions of each pair's newest result, change
   points in recently measured series.
3. Store a delivery per event and webhook (`BPBENCH_ALERT_WEBHOOK_URLS`; an event already stored is not
   stored again), then try every delivery that is due, retrying failed ones with backoff.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from services.alerts.events import change_point_events, regression_events
from services.alerts.service import Post, deliver_due, http_post, raise_alert
from services.core.config import Settings
from services.core.db import utcnow
from services.schedules.service import missing_data_events, run_due


def tick(
    factory: sessionmaker[Session], settings: Settings, *, now: datetime | None = None, post: Post = http_post
) -> dict[str, Any]:
    """One tick; what it did: schedules run, jobs submitted, events seen, alerts stored, deliveries tried."""
    now = now or utcnow()
    with factory() as session:
        # The runs before this tick are judged before it submits new ones (a new run replaces the last).
        quiet = missing_data_events(session, now=now) if settings.alert_webhook_urls else []
        ran = run_due(session, now=now)
    report: dict[str, Any] = {
        "schedules_run": len(ran),
        "jobs_submitted": sum(len(submitted) for _, submitted in ran),
        "events": 0,
        "alerts_stored": 0,
        "deliveries_tried": 0,
    }
    if not settings.alert_webhook_urls:
        return report
    with factory() as session:
        events = [*regression_events(session), *change_point_events(session, now=now), *quiet]
        report["events"] = len(events)
        report["alerts_stored"] = sum(
            raise_alert(session, e, settings.alert_webhook_urls, now=now) for e in events
        )
        report["deliveries_tried"] = len(deliver_due(session, post=post, now=now))
    return report
