"""Liveness and readiness: `/healthz` answers while the process runs; `/readyz` checks database and broker."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.api.deps import SessionDep
from services.core.db import ping
from services.core.queue import get_celery_app

router = APIRouter(tags=["health"])


@router.get("/healthz")
@router.head("/healthz", include_in_schema=False)  # probes and uptime checkers that send HEAD
def healthz() -> dict[str, str]:
    """Liveness: the API process is serving."""
    return {"status": "ok"}


def _check_database(session: SessionDep) -> str | None:
    try:
        ping(session)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


def _check_broker() -> str | None:
    try:
        with get_celery_app().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'unreachable'}"
    return None


@router.get("/readyz", responses={503: {"description": "the database or the broker is unreachable"}})
def readyz(session: SessionDep) -> JSONResponse:
    """Readiness: 200 when the database and the broker both answer, else 503 naming what failed."""
    checks: dict[str, Any] = {}
    for name, error in (("database", _check_database(session)), ("broker", _check_broker())):
        checks[name] = "ok" if error is None else error
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )
