"""Alerts: what deserves a message (a flagged regression, a change point, a scheduled device gone quiet),
and its delivery to webhooks, retried with exponential backoff and recorded.

An event is identified by its `event_key` (`regression:result:<id>`, `change_point:<device>:<spec>:<result
id>`, `missing_data:<schedule>:<due time>`); `raise_alert` stores one pending delivery per configured URL and
ignores an event already stored, so a scan that runs every minute alerts each event once. `deliver_due`
POSTs each due delivery's JSON (`{"text": ..., "event": ...}`: `text` is what Slack's incoming webhooks
show) and records the outcome: a 2xx is `delivered`; anything else (an error status, a refused connection, a
timeout) waits `BACKOFF_BASE_S * 2**(attempts - 1)` seconds (at most `BACKOFF_CAP_S`) and is tried again,
until `MAX_ATTEMPTS` have failed: then `failed`, with the last status code and error kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.alerts.models import AlertDelivery
from services.core.db import utcnow

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
BACKOFF_BASE_S = 30.0
BACKOFF_CAP_S = 3600.0
DELIVERY_TIMEOUT_S = 10.0
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Event:
    """Something to tell people: its key (one alert per key), kind, one-line text and details."""

    key: str
    kind: str
    text: str
    details: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        return {
            "text": f"bpbench: {self.text}",
            "event": {"key": self.key, "kind": self.kind, **self.details},
        }


def raise_alert(session: Session, event: Event, urls: Sequence[str], *, now: datetime | None = None) -> int:
    """Store a pending delivery of `event` for each URL that has none yet; how many were new (committed)."""
    if not urls:
        return 0
    known = set(session.scalars(select(AlertDelivery.url).where(AlertDelivery.event_key == event.key)).all())
    created = 0
    for url in urls:
        if url in known:
            continue
        session.add(
            AlertDelivery(
                event_key=event.key,
                kind=event.kind,
                url=url,
                payload=event.payload(),
                next_attempt_at=now or utcnow(),
            )
        )
        try:
            session.commit()
            created += 1
        except IntegrityError:  # another process stored it between the SELECT and here
            session.rollback()
    return created


Post = Callable[[str, dict[str, Any]], httpx.Response]


def http_post(url: str, payload: dict[str, Any]) -> httpx.Response:
    """POST `payload` as JSON to `url` (no redirects followed: a webhook answers where it is asked)."""
    return httpx.post(url, json=payload, timeout=DELIVERY_TIMEOUT_S, follow_redirects=False)


def backoff_s(attempts: int) -> float:
    """The wait after the `attempts`-th failed try: 30 s, 60 s, 120 s, ... at most an hour."""
    return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1))


def deliver_due(
    session: Session, *, post: Post = http_post, now: datetime | None = None
) -> list[AlertDelivery]:
    """Try every pending delivery whose time has come; record each outcome (committed). Returns them."""
    now = now or utcnow()
    due = session.scalars(
        select(AlertDelivery)
        .where(AlertDelivery.status == "pending", AlertDelivery.next_attempt_at <= now)
        .order_by(AlertDelivery.next_attempt_at, AlertDelivery.id)
    ).all()
    for delivery in due:
        delivery.attempts += 1
        code: int | None = None
        try:
            response = post(delivery.url, delivery.payload)
            code = response.status_code
            error = None if response.is_success else f"HTTP {code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        delivery.last_status_code = code
        delivery.last_error = error[:MAX_ERROR_CHARS] if error else None
        if error is None:
            delivery.status = "delivered"
            delivery.delivered_at = now
        elif delivery.attempts >= MAX_ATTEMPTS:
            delivery.status = "failed"
            log.warning("alert %s to %s failed for good: %s", delivery.event_key, delivery.url, error)
        else:
            delivery.next_attempt_at = now + timedelta(seconds=backoff_s(delivery.attempts))
        session.commit()
    return list(due)


def list_deliveries(session: Session, *, status: str | None = None, limit: int = 100) -> list[AlertDelivery]:
    """The newest deliveries first, optionally of one status."""
    query = select(AlertDelivery).order_by(AlertDelivery.created_at.desc(), AlertDelivery.id.desc())
    if status is not None:
        query = query.where(AlertDelivery.status == status)
    return list(session.scalars(query.limit(limit)).all())
