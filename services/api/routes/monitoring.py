"""`/api/v1/schedules`: suites run on a device every so often (Celery beat's minute tick submits them),
`/api/v1/alerts`: the webhook messages sent about regressions, change points and quiet devices, and
`/api/v1/devices/{device_id}/marks`: expected shifts people marked, where a device's histories restart, and
`/api/v1/devices/{device_id}/history`: a (device, spec) series with its cuts and change points."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field

from services.alerts.service import list_deliveries
from services.api.deps import ReadAccess, SessionDep, SubmitAccess
from services.api.errors import unprocessable
from services.devices.service import get_device
from services.jobs.spec import Text
from services.results.history import add_mark, device_history, list_marks
from services.schedules import service as schedules
from services.schedules.service import MAX_EVERY_S, MIN_EVERY_S, ScheduleError

router = APIRouter(tags=["schedules"])


class ScheduleIn(BaseModel):
    """Run suite `suite` on `target` (a device id, or a class: cpu, gpu, gpu:N) every `every_hours`."""

    model_config = ConfigDict(extra="forbid")

    suite: Literal["standard", "smoke"] = "standard"
    target: Text = Field(min_length=1, max_length=64)
    every_hours: float = Field(ge=MIN_EVERY_S / 3600, le=MAX_EVERY_S / 3600)
    start_at: datetime | None = Field(None, description="first run (UTC); default: now")


class ScheduleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    suite: str
    target: str
    every_s: float
    enabled: bool
    next_run_at: datetime
    last_run_at: datetime | None
    last_job_ids: list[str]
    created_at: datetime


@router.get("/schedules", dependencies=[ReadAccess])
def get_schedules(session: SessionDep) -> list[ScheduleOut]:
    """Every schedule, oldest first."""
    return [ScheduleOut.model_validate(s) for s in schedules.list_schedules(session)]


@router.post("/schedules", status_code=status.HTTP_201_CREATED, dependencies=[SubmitAccess])
def post_schedule(request: ScheduleIn, session: SessionDep) -> ScheduleOut:
    """A new schedule; its first run is due at `start_at` (default: now, at the next minute tick)."""
    try:
        schedule = schedules.create_schedule(
            session,
            suite=request.suite,
            target=request.target,
            every_s=request.every_hours * 3600,
            start_at=request.start_at,
        )
    except ScheduleError as exc:
        raise unprocessable(
            "target", "body", request.target, "a registered device id or cpu, gpu, gpu:N", str(exc)
        ) from None
    return ScheduleOut.model_validate(schedule)


@router.delete(
    "/schedules/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[SubmitAccess]
)
def delete_schedule(schedule_id: Annotated[str, Field(max_length=36)], session: SessionDep) -> None:
    """Remove a schedule (its jobs already submitted stay)."""
    if not schedules.remove_schedule(session, schedule_id):
        raise HTTPException(status_code=404, detail=f"no schedule with id {schedule_id!r}")


class DeliveryOut(BaseModel):
    """One alert message to one webhook: the event, its text, and how its delivery went."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    event_key: str
    kind: str
    webhook: str = Field(description="the webhook's scheme and host (its path can hold a secret)")
    text: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime


@router.get("/alerts", dependencies=[ReadAccess])
def get_alerts(
    session: SessionDep,
    status: Literal["pending", "delivered", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeliveryOut]:
    """Alert deliveries, newest first."""
    return [
        DeliveryOut(
            id=d.id,
            event_key=d.event_key,
            kind=d.kind,
            webhook=f"{urlsplit(d.url).scheme}://{urlsplit(d.url).netloc}",
            text=str(d.payload.get("text", "")),
            status=d.status,
            attempts=d.attempts,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            created_at=d.created_at,
            delivered_at=d.delivered_at,
            next_attempt_at=d.next_attempt_at,
        )
        for d in list_deliveries(session, status=status, limit=limit)
    ]


class MarkIn(BaseModel):
    """An expected shift: from `at` (default now) on, the device's histories (one spec, or all) restart."""

    model_config = ConfigDict(extra="forbid")

    note: Text = Field(min_length=1, max_length=500)
    spec_hash: str | None = Field(None, min_length=16, max_length=16, pattern="^[0-9a-f]{16}$")
    at: datetime | None = None


class MarkOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    device_id: str
    spec_hash: str | None
    at: datetime
    note: str
    created_at: datetime


@router.post("/devices/{device_id}/marks", status_code=status.HTTP_201_CREATED, dependencies=[SubmitAccess])
def post_mark(
    device_id: Annotated[str, Field(max_length=16)], request: MarkIn, session: SessionDep
) -> MarkOut:
    """Mark an expected shift on a device (a new driver, a BIOS change)."""
    if get_device(session, device_id) is None:
        raise HTTPException(status_code=404, detail=f"no device with id {device_id!r}")
    mark = add_mark(
        session, device_id=device_id, note=request.note, spec_hash=request.spec_hash, at=request.at
    )
    return MarkOut.model_validate(mark)


@router.get("/devices/{device_id}/marks", dependencies=[ReadAccess])
def get_marks(device_id: Annotated[str, Field(max_length=16)], session: SessionDep) -> list[MarkOut]:
    """The shifts marked on a device, oldest first."""
    return [MarkOut.model_validate(m) for m in list_marks(session, device_id)]


@router.get("/devices/{device_id}/history", dependencies=[ReadAccess])
def get_history(
    device_id: Annotated[str, Field(max_length=16)],
    session: SessionDep,
    spec_hash: Annotated[str, Query(min_length=16, max_length=16, pattern="^[0-9a-f]{16}$")],
    limit: Annotated[int, Query(ge=2, le=1000)] = 100,
) -> dict[str, Any]:
    """The device's newest results of one spec (oldest first), where the series is cut (software changed, a
    mark) and its change points (ruptures + a permutation test, within each stretch)."""
    if get_device(session, device_id) is None:
        raise HTTPException(status_code=404, detail=f"no device with id {device_id!r}")
    return device_history(session, device_id, spec_hash, limit=limit).as_dict()
