"""Webhook alerts delivered to a real HTTP receiver on loopback: retried with backoff, recorded, sent once."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session

from services.alerts.models import AlertDelivery
from services.alerts.service import (
    BACKOFF_BASE_S,
    MAX_ATTEMPTS,
    Event,
    backoff_s,
    deliver_due,
    list_deliveries,
    raise_alert,
)
from services.core.db import utcnow


class Receiver:
    """An HTTP server on 127.0.0.1 that answers each POST with the next scripted status and keeps bodies."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                code = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if code < 300 else b"receiver says no")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(statuses: list[int]) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def _event(kind: str = "regression") -> Event:
    key = f"{kind}:result:{uuid.uuid4().hex[:8]}"
    return Event(key, kind, f"{kind} on cpu-test: -7.3%", {"change_pct": -7.3})


@pytest.fixture(autouse=True)
def _no_leftover_deliveries(db_session: Session) -> Iterator[None]:
    yield
    db_session.execute(delete(AlertDelivery))
    db_session.commit()


def test_a_delivery_is_posted_as_slack_compatible_json_and_recorded(
    db_session: Session, receiver_factory: Any
) -> None:
    receiver = receiver_factory([204])
    event = _event()
    assert raise_alert(db_session, event, [receiver.url]) == 1
    (delivery,) = deliver_due(db_session)
    assert receiver.bodies == [
        {
            "text": "bpbench: regression on cpu-test: -7.3%",
            "event": {"key": event.key, "kind": "regression", "change_pct": -7.3},
        }
    ]
    assert (delivery.status, delivery.attempts, delivery.last_status_code, delivery.last_error) == (
        "delivered",
        1,
        204,
        None,
    )
    assert delivery.delivered_at is not None


def test_an_event_alerts_once_per_url_however_often_it_is_raised(
    db_session: Session, receiver_factory: Any
) -> None:
    first, second = receiver_factory([]), receiver_factory([])
    event = _event("change_point")
    assert raise_alert(db_session, event, [first.url]) == 1
    assert raise_alert(db_session, event, [first.url, second.url]) == 1  # only the new URL
    deliver_due(db_session)
    deliver_due(db_session)
    assert len(first.bodies) == 1 and len(second.bodies) == 1


def test_a_failing_receiver_is_retried_with_backoff_then_succeeds(
    db_session: Session, receiver_factory: Any
) -> None:
    receiver = receiver_factory([500, 503])
    start = utcnow()
    raise_alert(db_session, _event(), [receiver.url], now=start)
    (delivery,) = deliver_due(db_session, now=start)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
    assert delivery.last_error == "HTTP 500: receiver says no"
    assert delivery.next_attempt_at == start + timedelta(seconds=BACKOFF_BASE_S)
    assert deliver_due(db_session, now=start + timedelta(seconds=BACKOFF_BASE_S - 1)) == []  # not yet due
    (delivery,) = deliver_due(db_session, now=start + timedelta(seconds=BACKOFF_BASE_S))
    assert (delivery.attempts, delivery.last_status_code) == (2, 503)
    assert delivery.next_attempt_at == start + timedelta(seconds=BACKOFF_BASE_S + 2 * BACKOFF_BASE_S)
    (delivery,) = deliver_due(db_session, now=start + timedelta(hours=1))
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 3, 200)
    assert len(receiver.bodies) == 3


def test_an_unreachable_receiver_fails_for_good_after_the_last_attempt(
    db_session: Session, receiver_factory: Any
) -> None:
    receiver = receiver_factory([])
    url = receiver.url
    receiver.close()  # nothing listens there any more: connection refused
    start = utcnow()
    raise_alert(db_session, _event(), [url], now=start)
    when = start
    for attempt in range(1, MAX_ATTEMPTS + 1):
        (delivery,) = deliver_due(db_session, now=when)
        assert delivery.attempts == attempt
        when += timedelta(seconds=backoff_s(attempt))
    assert delivery.status == "failed" and delivery.last_status_code is None
    assert delivery.last_error is not None and delivery.last_error.startswith("ConnectError")
    assert list_deliveries(db_session, status="failed")[0].id == delivery.id
    assert deliver_due(db_session, now=when + timedelta(days=1)) == []


def test_backoff_doubles_up_to_an_hour() -> None:
    assert [backoff_s(n) for n in (1, 2, 3, 4)] == [30.0, 60.0, 120.0, 240.0]
    assert backoff_s(20) == 3600.0
