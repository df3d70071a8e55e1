"""`/api/v1/devices`: every registered device, its fingerprint, whether a worker serves it now, its queue."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from services.api.deps import ReadAccess, SessionDep, SettingsDep
from services.devices.service import device_float64, device_stack, list_devices, workers_with_liveness
from services.jobs.service import queued_job_counts

router = APIRouter(prefix="/devices", tags=["devices"])


class WorkerOut(BaseModel):
    """A worker process serving a device."""

    name: str
    device: str
    queues: list[str]
    hostname: str
    pid: int
    last_heartbeat: datetime
    live: bool


class DeviceOut(BaseModel):
    """A device: what it is, whether a live worker serves it, and the jobs waiting for it."""

    id: str
    name: str
    device_class: str
    vendor: str
    backend: str = Field(description="the backend that runs it: numpy, cuda, rocm, xla, ...")
    library: str | None = Field(description="its array library and version: numpy 2.4.6, jax 0.4.38")
    float64: bool | None = Field(
        description="whether it computes in float64, as its worker found (a float64 job for a device "
        "that has none is refused at submission); null: not recorded"
    )
    memory_bytes: int | None
    software: dict[str, Any]
    fingerprint: dict[str, Any]
    live: bool = Field(description="a worker of this device sent a heartbeat recently")
    last_heartbeat: datetime | None
    queue: str = Field(description="the queue of jobs aimed at exactly this device")
    queued_jobs: int = Field(description="queued jobs this device may take: aimed at it, or at its class")
    workers: list[WorkerOut]


class DevicePage(BaseModel):
    """Every registered device."""

    total: int
    items: list[DeviceOut]


def device_views(session: Session, worker_dead_after_s: float) -> list[DeviceOut]:
    """Every device (by class, then name) with its workers and the number of queued jobs it may take."""
    workers: dict[str, list[WorkerOut]] = {}
    for worker, live in workers_with_liveness(session, dead_after_s=worker_dead_after_s):
        workers.setdefault(worker.device_id, []).append(
            WorkerOut(
                name=worker.name,
                device=worker.device,
                queues=list(worker.queues),
                hostname=worker.hostname,
                pid=worker.pid,
                last_heartbeat=worker.last_heartbeat,
                live=live,
            )
        )
    targeted, by_class = queued_job_counts(session)
    views = []
    for device in list_devices(session):
        mine = workers.get(device.id, [])
        backend, library = device_stack(device)
        views.append(
            DeviceOut(
                id=device.id,
                name=device.name,
                device_class=device.device_class,
                vendor=device.vendor,
                backend=backend,
                library=library,
                float64=device_float64(device),
                memory_bytes=device.memory_bytes,
                software=device.software,
                fingerprint=device.fingerprint,
                live=any(w.live for w in mine),
                last_heartbeat=max((w.last_heartbeat for w in mine), default=None),
                queue=device.queue,
                queued_jobs=targeted.get(device.id, 0) + by_class.get(device.device_class, 0),
                workers=mine,
            )
        )
    return views


@router.get("", response_model=DevicePage, dependencies=[ReadAccess])
def get_devices(session: SessionDep, settings: SettingsDep) -> DevicePage:
    """Registered devices, by class and name: fingerprint, live or not, queue, queued jobs, workers."""
    items = device_views(session, settings.worker_dead_after_s)
    return DevicePage(total=len(items), items=items)
