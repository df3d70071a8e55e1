"""The bpbench API (FastAPI; OpenAPI at /docs, served offline): `create_app(settings)`, and `app` for uvicorn.

    uvicorn services.api.main:app        # one process; `bpbench api` (and `bpbench up`) migrate first
    uvicorn services.api.main:served_app --factory --workers N    # what `bpbench api --workers N` runs

The app holds its settings, session factory, token cache and submission group commit in `app.state`;
routes get them through `services.api.deps`. On start-up the token in `BPBENCH_API_TOKEN` (if any) is
stored as an admin token, so a fresh deployment has a first token without a separate step.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from services.api.deps import RequestChecks, TokenLookups
from services.api.errors import install_domain_error_handlers, install_error_handlers
from services.api.group_commit import GroupCommit
from services.api.limits import BodySizeLimit, RateLimiter
from services.api.metrics import install_metrics
from services.api.routes import (
    compare,
    devices,
    health,
    joblogs,
    jobs,
    metrics,
    monitoring,
    regressions,
    results,
    suites,
    timeline,
)
from services.api.routes.dashboard import install_dashboard
from services.api.routes.docs import install_api_docs
from services.auth.service import TokenCache, ensure_token
from services.core import queue
from services.core.config import DEFAULT_API_TOKEN_NAME, Settings, get_settings
from services.core.db import session_factory
from services.core.logging import configure_logging, install_redaction

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def bootstrap_token(settings: Settings) -> None:
    """Store BPBENCH_API_TOKEN as the first admin token, named `BPBENCH_API_TOKEN_NAME` (idempotent; the
    value itself is never logged). A token stored under the default name takes the configured one."""
    if not settings.api_token:
        return
    try:
        with session_factory(settings)() as session:
            ensure_token(
                session,
                settings.api_token,
                name=settings.api_token_name,
                scopes=["admin"],
                renamed_from=[DEFAULT_API_TOKEN_NAME],
            )
            session.commit()
    except IntegrityError:
        pass  # another API process (uvicorn --workers) stored it at the same moment
    except SQLAlchemyError as exc:
        # The database may not be migrated or reachable yet; /readyz says so, and the next start retries.
        log.warning("could not store BPBENCH_API_TOKEN as an admin token: %s", exc.__class__.__name__)


def install_limits(app: FastAPI, settings: Settings) -> None:
    """Body size cap, per-token rate limiter, CORS only for `BPBENCH_CORS_ORIGINS`, secrets out of logs."""
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        # Closed by default: without this middleware a browser on another origin gets no CORS headers.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    # uvicorn's access log prints the query string (`/?token=...`): redact before any handler sees it.
    install_redaction()


def _without_opentelemetry() -> dict[str, Any]:
    """FastAPI >= 0.160 looks for OpenTelemetry providers on every request (environment reads included: 3%
    of a submission's CPU). bpbench exports Prometheus metrics (`/metrics`) instead: turn that off."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI application for these settings (default: from the environment)."""
    settings = settings or get_settings()
    queue.configure(settings)  # keeps the app when the configuration is the same

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[None]:
        bootstrap_token(settings)
        yield
        application.state.group_commit.close()

    app = FastAPI(
        title="bpbench",
        version="0.1.0",
        summary="Benchmark neural-network training on CPUs and GPUs with a from-scratch backprop engine.",
        description=(
            "Submit benchmark jobs, follow them, and compare devices on the same spec with the vendor "
            "timeline "
            "of the seed. Writes need a bearer token (`submit` or `admin` scope); reads need a `read` token "
            "unless the server runs with `BPBENCH_PUBLIC_READ=true`. A refused value is a 422 whose `detail` "
            "items name the field, the value seen and what is accepted."
        ),
        lifespan=lifespan,
        dependencies=[RequestChecks],
        # /docs and /redoc come from install_api_docs: the same pages, with their scripts served here.
        docs_url=None,
        redoc_url=None,
        **_without_opentelemetry(),
    )
    app.state.settings = settings
    app.state.session_factory = session_factory(settings)
    app.state.token_lookups = TokenLookups(TokenCache(settings.token_cache_ttl_s))
    app.state.group_commit = GroupCommit(app.state.session_factory, max_batch=settings.submit_batch_max)
    install_error_handlers(app)
    install_domain_error_handlers(app)
    install_limits(app, settings)
    app.include_router(health.router)
    install_api_docs(app)
    for module in (jobs, joblogs, suites, results, compare, timeline, devices, monitoring):
        app.include_router(module.router, prefix=API_PREFIX)
    # Regressions, /metrics (+ HTTP metrics middleware) and the dashboard at / (services/web/).
    app.include_router(regressions.router, prefix=API_PREFIX)
    install_metrics(app, settings)
    app.include_router(metrics.router)
    install_dashboard(app)
    return app


# CPython's default first-generation threshold (700 allocations) made the collector run every few requests,
# each pass walking the young objects and, every hundred passes, the whole heap of the frameworks' objects.
SERVING_GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc_for_serving() -> None:
    """Freeze the objects made so far (start-up: modules, app, models; never collected anyway) and collect
    less often: 18% less CPU per submission (benchmarks/bench_submit.py). Only for API server processes."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVING_GC_THRESHOLDS)


# `bpbench api` passes its --log-format to the worker processes of `--workers N` (each one a fresh
# interpreter that imports `served_app`) through this variable.
LOG_FORMAT_VARIABLE = "BPBENCH_API_LOG_FORMAT"


def served_app() -> FastAPI:
    """The app of one `bpbench api --workers N` process: logging set up as the parent was told, then
    `create_app()` from the environment (uvicorn's `--factory`)."""
    log_format = os.environ.get(LOG_FORMAT_VARIABLE, "text")
    configure_logging("json" if log_format == "json" else "text")
    app = create_app()
    tune_gc_for_serving()
    return app


def __getattr__(name: str) -> FastAPI:
    # `app` is made on first use (uvicorn's `services.api.main:app`), not at import: importing this module
    # must not read the environment or touch a database.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
