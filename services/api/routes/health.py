"""Liveness and readiness: `/healthz` answers while the process runs; `/readyz` checks database, broker and
the data directory's free space."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.api.deps import SessionDep, SettingsDep
from services.core.data_dir import disk_problem
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


@router.get(
    "/readyz",
    responses={503: {"description": "the database or the broker is unreachable, or the data disk is full"}},
)
def readyz(session: SessionDep, settings: SettingsDep) -> JSONResponse:
    """Readiness: 200 when the database and the broker answer and the data directory has room, else 503
    naming what failed."""
    checks: dict[str, Any] = {}
    for name, error in (
        ("database", _check_database(session)),
        ("broker", _check_broker()),
        ("disk", disk_problem(settings.data_dir)),
    ):
        checks[name] = "ok" if error is None else error
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )
