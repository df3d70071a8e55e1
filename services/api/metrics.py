"""Prometheus metrics of the service: `/metrics` in the text exposition format (prometheus-client).

Two sources, chosen for multi-process correctness:

- Job, queue and worker figures are computed at scrape time from the shared state (the database with
  GROUP BY queries, the broker through kombu), by a custom collector. Every API process therefore answers
  the same numbers, however many replicas or uvicorn workers there are, and a restart loses nothing:
  `bpbench_jobs{status,kind}`, `bpbench_job_duration_seconds{kind,status}` (a histogram built by the
  database from finished jobs' `finished_at - started_at`), `bpbench_queue_depth{queue}` (LLEN on Redis,
  a passive queue declare on AMQP, both through kombu's client side), `bpbench_broker_up`,
  `bpbench_workers_live{device_class}` and `bpbench_devices{device_class}`.
- HTTP request metrics are counted in this process by an ASGI middleware:
  `bpbench_http_requests_total{method,route,status}` and `bpbench_http_request_duration_seconds{method,route}`
  (labelled by the route template, `/api/v1/jobs/{job_id}`, never the raw path), and
  `bpbench_job_submit_batch_size` (jobs per group commit of `POST /api/v1/jobs`) and
  `bpbench_token_lookups_total{outcome}` (token cache misses that asked the database). With several API
  processes each counts its own requests: scrape each process (Prometheus sums them), as one does for any
  per-process counter; the job figures above are not affected.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Float, case, cast, func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.spec import KINDS
from services.core.config import Settings
from services.core.db import utcnow
from services.core.queue import CLASS_QUEUES, celery_app, device_queue
from services.devices.models import Device, Worker
from services.jobs.models import FINAL_STATUSES, JOB_STATUSES, Job

log = logging.getLogger(__name__)

JOB_DURATION_BUCKETS: tuple[float, ...] = (
    0.5,
    1,
    2,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
    3 * 3600,
    6 * 3600,
)
HTTP_LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SUBMIT_BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
JOB_KINDS: tuple[str, ...] = KINDS  # the engine's kinds: a new kind gets its series without an edit here
UNMATCHED_ROUTE = "<unmatched>"


def _duration_seconds(session: Session) -> Any:
    """SQL for `finished_at - started_at` in seconds, in this database's dialect."""
    if session.get_bind().dialect.name == "sqlite":
        # SQLite keeps UTC timestamps as text; julianday() reads them as days.
        return (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0
    return cast(func.extract("epoch", Job.finished_at - Job.started_at), Float)


class ServiceCollector(Collector):
    """Job, duration, queue and worker metrics, computed from the database and the broker on each scrape."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings) -> None:
        self._factory = factory
        self._settings = settings

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family; a failing source is logged and skipped, never an error page."""
        try:
            with self._factory() as session:
                yield from self._jobs(session)
                yield from self._durations(session)
                yield from self._workers(session)
                device_ids = list(session.scalars(select(Device.id)))
        except Exception as exc:
            log.warning("metrics: the database could not be read: %s", exc)
            device_ids = []
        yield from self._queues(device_ids)

    def _jobs(self, session: Session) -> Iterator[Metric]:
        counts = {(s, k): 0 for s in JOB_STATUSES for k in JOB_KINDS}
        for status, kind, count in session.execute(
            select(Job.status, Job.kind, func.count()).group_by(Job.status, Job.kind)
        ):
            counts[(status, kind)] = int(count)
        family = GaugeMetricFamily("bpbench_jobs", "Jobs by status and kind", labels=["status", "kind"])
        for (status, kind), count in sorted(counts.items()):
            family.add_metric([status, kind], count)
        yield family

    def _durations(self, session: Session) -> Iterator[Metric]:
        duration = _duration_seconds(session)
        columns = [func.count(), func.coalesce(func.sum(duration), 0.0)]
        columns += [func.sum(case((duration <= bound, 1), else_=0)) for bound in JOB_DURATION_BUCKETS]
        rows = session.execute(
            select(Job.kind, Job.status, *columns)
            .where(
                Job.status.in_(sorted(FINAL_STATUSES)),
                Job.started_at.is_not(None),
                Job.finished_at.is_not(None),
            )
            .group_by(Job.kind, Job.status)
        ).all()
        family = HistogramMetricFamily(
            "bpbench_job_duration_seconds",
            "Run time of finished jobs (started to finished), from the database",
            labels=["kind", "status"],
        )
        for kind, status, count, total, *cumulative in rows:
            buckets = [
                (f"{bound:g}", float(c or 0))
                for bound, c in zip(JOB_DURATION_BUCKETS, cumulative, strict=True)
            ]
            buckets.append(("+Inf", float(count)))
            family.add_metric([kind, status], buckets, float(total or 0.0))
        yield family

    def _workers(self, session: Session) -> Iterator[Metric]:
        cutoff = utcnow().timestamp() - self._settings.worker_dead_after_s
        live: dict[str, int] = dict.fromkeys(CLASS_QUEUES, 0)
        rows = session.execute(
            select(Device.device_class, Worker.last_heartbeat)
            .join(Device, Device.id == Worker.device_id)
            .where(Worker.stopped_at.is_(None))
        )
        for device_class, heartbeat in rows:
            if heartbeat.timestamp() >= cutoff:
                live[device_class] = live.get(device_class, 0) + 1
        family = GaugeMetricFamily(
            "bpbench_workers_live",
            "Workers with a recent heartbeat, per device class",
            labels=["device_class"],
        )
        for device_class, count in sorted(live.items()):
            family.add_metric([device_class], count)
        yield family
        devices = GaugeMetricFamily(
            "bpbench_devices", "Registered devices per class", labels=["device_class"]
        )
        for device_class, count in session.execute(
            select(Device.device_class, func.count()).group_by(Device.device_class)
        ):
            devices.add_metric([device_class], int(count))
        yield devices

    def _queues(self, device_ids: list[str]) -> Iterator[Metric]:
        names = [*CLASS_QUEUES, *(device_queue(d) for d in sorted(device_ids))]
        depth = GaugeMetricFamily(
            "bpbench_queue_depth", "Messages waiting in each broker queue", labels=["queue"]
        )
        up = GaugeMetricFamily("bpbench_broker_up", "1 if the broker answered this scrape")
        try:
            depths = queue_depths(names)
        except Exception as exc:
            log.warning("metrics: the broker could not be read: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        for name in names:
            depth.add_metric([name], depths[name])
        up.add_metric([], 1)
        yield up
        yield depth


def queue_depths(names: list[str]) -> dict[str, int]:
    """Messages ready in each queue, asked through kombu (a passive declare: Redis LLEN, AMQP queue.declare).

    A queue the broker does not know (never declared, or a Redis list that is empty and so absent) holds 0.
    """
    depths: dict[str, int] = {}
    with celery_app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
        for name in names:
            # A fresh channel per queue: on AMQP a passive declare of a missing queue closes its channel.
            channel = connection.channel()
            try:
                _, count, _ = channel.queue_declare(queue=name, passive=True)
                depths[name] = int(count)
            except Exception as exc:
                if not _is_missing_queue(exc):
                    raise
                depths[name] = 0
            finally:
                try:
                    channel.close()
                except Exception:  # the broker may already have closed it
                    log.debug("metrics: channel of %s already closed", name)
    return depths


def _is_missing_queue(exc: Exception) -> bool:
    """True for 'no such queue' answers (kombu's ChannelError on Redis, a 404 NotFound on AMQP)."""
    from amqp.exceptions import NotFound
    from kombu.exceptions import ChannelError

    return isinstance(exc, ChannelError | NotFound)


class HttpMetrics:
    """Request count and latency, by method, route template and status (this process only)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "bpbench_http_requests",
            "HTTP requests answered, by method, route template and status code",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "bpbench_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template",
            ["method", "route"],
            buckets=HTTP_LATENCY_BUCKETS,
            registry=registry,
        )


_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


def route_template(scope: Scope) -> str:
    """The template of the route that answered (`/api/v1/jobs/{job_id}`), never the raw path.

    The router writes the matched route into the scope; its `path` may lack the prefix of an included
    router, so the prefix is recovered as what precedes the route's own path, rendered with the path's
    parameters. Static files are `/static/{path}`; anything else is `<unmatched>` (bounded label values).
    """
    path: str = scope.get("path", "")
    template = getattr(scope.get("route"), "path", None)
    if template is None:
        return "/static/{path}" if path.startswith("/static/") else UNMATCHED_ROUTE
    params = scope.get("path_params") or {}
    rendered = _PARAM.sub(lambda m: str(params.get(m.group(1), m.group(0))), template)
    if rendered and path.endswith(rendered):
        return path[: len(path) - len(rendered)] + template
    return str(template)


class HttpMetricsMiddleware:
    """ASGI middleware: counts each HTTP request and times it, labelled by the matched route's template."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics
        # The labelled children, by (method, route, status): `labels()` takes a lock and builds a key each
        # time; the set is bounded by the routes, methods and statuses there are.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = route_template(scope)
            method = scope.get("method", "GET")
            key = (method, route, status)
            children = self._children.get(key)
            if children is None:
                children = (
                    self.metrics.requests.labels(method, route, str(status)),
                    self.metrics.latency.labels(method, route),
                )
                self._children[key] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - started)


def install_metrics(app: FastAPI, settings: Settings) -> CollectorRegistry:
    """Give `app` its own registry (service collector + HTTP metrics) and the HTTP middleware."""
    # No `*_created` series: they double the output and no dashboard of ours uses them (process-wide switch).
    disable_created_metrics()
    registry = CollectorRegistry()
    registry.register(ServiceCollector(app.state.session_factory, settings))
    app.add_middleware(HttpMetricsMiddleware, metrics=HttpMetrics(registry))
    batch_sizes = Histogram(
        "bpbench_job_submit_batch_size",
        "Jobs committed together by one group commit of POST /api/v1/jobs (this process)",
        buckets=SUBMIT_BATCH_BUCKETS,
        registry=registry,
    )
    app.state.group_commit.observe_batch = batch_sizes.observe
    token_lookups = Counter(
        "bpbench_token_lookups",
        "API tokens looked up in the database because the token cache did not hold them (this process), "
        "by outcome: valid or unknown",
        ["outcome"],
        registry=registry,
    )
    app.state.token_lookups.observe_lookup = lambda outcome: token_lookups.labels(outcome).inc()
    app.state.metrics_registry = registry
    return registry
