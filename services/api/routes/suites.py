"""`/api/v1/suites`: submit a named suite of jobs for every live device, or for the devices listed."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from engine.spec import parse_device
from services.api.deps import SessionDep, SettingsDep, SubmitAccess
from services.api.errors import unprocessable
from services.api.json_body import StrictJSONRoute
from services.api.routes.jobs import JobOut, job_out
from services.core.queue import device_queue
from services.devices.service import (
    device_spelling,
    get_device,
    list_devices,
    live_device_ids,
    served_queues,
)
from services.jobs import service
from services.jobs.spec import DEVICE_PATTERN, Text
from services.jobs.suites import runnable_suite

router = APIRouter(prefix="/suites", tags=["suites"], route_class=StrictJSONRoute)


class SuiteRequest(BaseModel):
    """Which suite (`standard`, or `smoke`: the same jobs at toy sizes), and where: device ids or classes."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Literal["standard", "smoke"] = "standard"
    devices: list[Annotated[Text, Field(min_length=1, max_length=64)]] | None = Field(
        None, min_length=1, max_length=64, description="device ids or classes; default: every live device"
    )


class SuiteOut(BaseModel):
    """The jobs a suite submission created, in suite order per device."""

    suite: str
    targets: list[str]
    jobs: list[JobOut]
    left_out: list[str] = Field(
        default_factory=list,
        description="entries not submitted, each with why: a float64 one where the device has no float64",
    )


def _resolve_targets(
    session: Session, requested: list[str] | None, dead_after_s: float
) -> list[tuple[str, str | None]]:
    """(spec device, exact target device id or None) for each place the suite runs."""
    if requested is None:
        live = live_device_ids(session, dead_after_s=dead_after_s)
        devices = [device for device in list_devices(session) if device.id in live]
        if not devices:
            raise HTTPException(
                status_code=status.HTTP_409_CONFLICT,
                detail="no live worker: start one (`bpbench worker --device cpu`) or list devices or classes",
            )
        return [(device_spelling(device), device.id) for device in devices]
    targets: list[tuple[str, str | None]] = []
    for index, entry in enumerate(dict.fromkeys(requested)):
        device = get_device(session, entry)
        if device is not None:
            targets.append((device_spelling(device), device.id))
        elif DEVICE_PATTERN.fullmatch(entry):
            targets.append((entry, None))
        else:
            raise unprocessable(
                f"devices.{index}",
                "body",
                entry,
                "a registered device id (GET /api/v1/devices) or cpu, gpu, gpu:N",
                f"devices.{index}: {entry!r} is neither a registered device nor a class",
            )
    return targets


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SuiteOut,
    dependencies=[SubmitAccess],
    responses={409: {"description": "no live worker serves the devices asked for (or, none given, any)"}},
)
def submit_suite(request: SuiteRequest, session: SessionDep, settings: SettingsDep) -> SuiteOut:
    """Submit every job of the suite for each device: each job is committed, then published."""
    targets = _resolve_targets(session, request.devices, settings.worker_dead_after_s)
    # Work no live worker consumes would wait forever: refused, naming the targets and what would serve them.
    served = served_queues(session, dead_after_s=settings.worker_dead_after_s)
    unserved = [
        target or spec_device
        for spec_device, target in targets
        if (device_queue(target) if target else parse_device(spec_device).device_class) not in served
    ]
    if unserved:
        listed = ", ".join(unserved[:8]) + (f" and {len(unserved) - 8} more" if len(unserved) > 8 else "")
        raise HTTPException(
            status_code=status.HTTP_409_CONFLICT,
            detail=f"no live worker serves {listed}: start one there (`bpbench worker --device ...`) "
            "or leave them out; nothing was submitted",
        )
    jobs: list[JobOut] = []
    left_out: list[str] = []
    for spec_device, target in targets:
        items, refused = runnable_suite(session, request.name, spec_device, target)
        left_out += refused
        for item, spec in items:
            job = service.submit_job(session, spec, target_device_id=target)
            jobs.append(job_out(session, job, with_result=False, suite_item=item))
    return SuiteOut(
        suite=request.name,
        targets=[target or device for device, target in targets],
        jobs=jobs,
        left_out=left_out,
    )
