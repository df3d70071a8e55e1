"""`/metrics`: Prometheus text format (see `services/api/metrics.py` for what is measured and how)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.api.deps import ReadAccess

router = APIRouter(tags=["metrics"])


@router.get("/metrics", dependencies=[ReadAccess], response_class=Response)
def metrics(request: Request) -> Response:
    """Jobs by status and kind, job durations, queue depths, live workers, HTTP requests (read scope)."""
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
