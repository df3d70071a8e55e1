"""Devices and workers: identity from a fingerprint, registration, heartbeats, liveness.

A device is its hardware plus its stack. Its id is a short hash of the *stable* fields of the engine's
fingerprint (`engine.backend.fingerprint`): the device class, CPU model and core counts, the BLAS library
(with its thread count, which changes the numbers), for a GPU its name, memory, compute capability, driver
and CUDA runtime, and for a backend other than NumPy and CUDA its stack (backend, library version, driver
and runtime). Host names, the GPU's index on its host and interpreter details are left out, so identical
machines share one device (and one queue `device.<id>`), which is what a benchmark wants: same hardware
and software, same numbers. Its vendor is the one its backend recorded (`Backend.vendor`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.backends import backend_named
from engine.backends.vendors import vendor_of_name as vendor_of
from engine.spec import DEVICE_PATTERN, float64_refused
from services.core.db import utcnow
from services.core.queue import CONTROL_QUEUE
from services.devices.models import Device, Worker

DEVICE_ID_CHARS = 12
# The devices a float64 refusal names at most (the rest are counted).
FLOAT64_NAMED = 4

# Backends whose devices were registered before the fingerprint named its backend: their stack is left out
# of the device's id, so a CPU or CUDA GPU keeps the id (and queue, and history) it had.
LEGACY_BACKENDS = ("numpy", "cuda")


def backend_part(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint's `backend` block (engine.backend.fingerprint); for a fingerprint taken before the
    registry, the one it would have had: `cuda` for a GPU, else `numpy`, with their library's version."""
    part = fingerprint.get("backend")
    if isinstance(part, dict) and part.get("name"):
        return part
    gpu = _gpu_part(fingerprint)
    if gpu:
        return {"name": "cuda", "library": "cupy", "library_version": gpu.get("cupy_version")}
    return {"name": "numpy", "library": "numpy", "library_version": fingerprint.get("numpy_version")}


def backend_and_library(fingerprint: dict[str, Any]) -> tuple[str, str | None]:
    """The stack as compare and the dashboard show it: (`xla`, `jax 0.4.38`), (`numpy`, `numpy 2.4.6`)."""
    part = backend_part(fingerprint)
    library = " ".join(str(v) for v in (part.get("library"), part.get("library_version")) if v)
    return str(part["name"]), library or None


def stack_name(fingerprint: dict[str, Any]) -> str:
    """The stack in a few words: `numpy (numpy 2.4.6)`, `xla (jax 0.4.38)`."""
    backend, library = backend_and_library(fingerprint)
    return f"{backend} ({library})" if library else backend


def device_stack(device: Device) -> tuple[str, str | None]:
    """A device's backend and library, the library's version as of its newest registration (`software`)."""
    backend, library = backend_and_library(device.fingerprint or {})
    software = device.software or {}
    legacy = {"numpy": "numpy", "cuda": "cupy"}.get(backend)
    if legacy and software.get(legacy):
        return backend, f"{legacy} {software[legacy]}"
    return backend, software.get("library") or library


def device_float64(device: Device) -> bool | None:
    """Whether the device computes in float64, as its worker's fingerprint recorded it (`backend.float64`);
    None for a fingerprint taken before the backend block said."""
    recorded = (device.fingerprint or {}).get("backend")
    value = recorded.get("float64") if isinstance(recorded, dict) else None
    return value if isinstance(value, bool) else None


def vendor_of_device(fingerprint: dict[str, Any], name: str) -> str:
    """The hardware vendor: the one the backend recorded (`Backend.vendor`), else read from the name."""
    recorded = backend_part(fingerprint).get("vendor")
    return str(recorded) if recorded and recorded != "unknown" else vendor_of(name)


def device_class_of(fingerprint: dict[str, Any]) -> str:
    """The device's class: the first queue its backend's workers serve (`cpu` for NumPy, `gpu` for a CuPy
    GPU, the backend's own word otherwise: `xla`); a backend this build does not register: `gpu` if the
    fingerprint describes a GPU, else `cpu`."""
    try:
        return backend_named(str(backend_part(fingerprint)["name"])).queues[0]
    except KeyError:
        pass
    return (
        "gpu" if fingerprint.get("gpu") or str(fingerprint.get("device", "cpu")).startswith("gpu") else "cpu"
    )


def queue_classes_of(fingerprint: dict[str, Any]) -> tuple[str, ...]:
    """The queue classes a job aimed at this device may have been spelled for: its backend's queues (a
    ROCm GPU: `gpu` and `rocm`)."""
    try:
        return backend_named(str(backend_part(fingerprint)["name"])).queues
    except KeyError:
        return (device_class_of(fingerprint),)


def device_spelling(device: Device) -> str:
    """A spelling of the device grammar for jobs aimed at this device by its id (a suite's, a schedule's):
    its class where the class is a spelling (`cpu`, `gpu`), else the one its fingerprint was taken on
    (`xla:cpu:0`, `opencl:0:0`: `xla` alone is no device)."""
    for spelling in (device.device_class, (device.fingerprint or {}).get("device")):
        if isinstance(spelling, str) and DEVICE_PATTERN.fullmatch(spelling):
            return spelling
    return device.device_class  # refused where the spec is made, naming what is accepted


def device_queue_classes(device: Device) -> tuple[str, ...]:
    """The queue classes a job aimed at this device may be spelled for (`check_target`): its backend's
    queues; a device registered before fingerprints named their backend: its class (a GPU's: and `cuda`)."""
    fingerprint = device.fingerprint or {}
    if isinstance(fingerprint.get("backend"), dict):
        return queue_classes_of(fingerprint)
    return ("gpu", "cuda") if device.device_class == "gpu" else (device.device_class,)


def stable_fields(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The fields of a fingerprint that identify a device (see the module docstring)."""
    blas = [
        {
            k: pool.get(k)
            for k in ("internal_api", "version", "architecture", "threading_layer", "num_threads")
        }
        for pool in fingerprint.get("blas") or []
        if isinstance(pool, dict)
    ]
    fields: dict[str, Any] = {
        "class": device_class_of(fingerprint),
        "cpu_model": fingerprint.get("cpu_model"),
        "physical_cores": fingerprint.get("physical_cores"),
        "logical_cores": fingerprint.get("logical_cores"),
        "blas": sorted(blas, key=lambda pool: json.dumps(pool, sort_keys=True)),
        "blas_env": fingerprint.get("blas_env") or {},
    }
    part = backend_part(fingerprint)
    if part["name"] not in LEGACY_BACKENDS:
        # The same CPU through JAX or dpnp is another device: its own id, queue and history.
        stack = ("name", "library_version", "driver_version", "runtime_version")
        fields["stack"] = {key: part.get(key) for key in stack}
    gpu = fingerprint.get("gpu")
    if isinstance(gpu, dict):
        fields["gpu"] = {
            k: gpu.get(k)
            for k in (
                "name",
                "total_memory_bytes",
                "compute_capability",
                "driver_version",
                "cuda_driver_version",
                "cuda_runtime_version",
            )
        }
    return fields


def device_id_for(fingerprint: dict[str, Any]) -> str:
    """The short, stable id of the device a fingerprint describes (12 hex characters)."""
    canonical = json.dumps(stable_fields(fingerprint), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:DEVICE_ID_CHARS]


def _gpu_part(fingerprint: dict[str, Any]) -> dict[str, Any]:
    gpu = fingerprint.get("gpu")
    return gpu if isinstance(gpu, dict) else {}


def software_of(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The software stack of a fingerprint: Python, NumPy, BLAS, CuPy, CUDA, driver, platform (kernel)."""
    gpu = _gpu_part(fingerprint)
    blas = [
        f"{pool.get('internal_api')} {pool.get('version')}"
        for pool in fingerprint.get("blas") or []
        if isinstance(pool, dict) and pool.get("user_api") == "blas"
    ]
    # NumPy's and CuPy's versions have always been here (`numpy`, `cupy`); another backend adds its own, so
    # a history is cut where a device's stack changes and nowhere else.
    part = backend_part(fingerprint)
    other = part.get("name") not in LEGACY_BACKENDS
    software = {
        "backend": part.get("name") if other else None,
        "library": backend_and_library(fingerprint)[1] if other else None,
        "backend_driver": part.get("driver_version") if other else None,
        "backend_runtime": part.get("runtime_version") if other else None,
        "python": fingerprint.get("python_version"),
        "numpy": fingerprint.get("numpy_version"),
        "blas": ", ".join(blas) or None,
        "cupy": gpu.get("cupy_version"),
        "cuda_runtime": gpu.get("cuda_runtime_version"),
        "cuda_driver": gpu.get("cuda_driver_version"),
        "driver": gpu.get("driver_version"),
        "platform": fingerprint.get("platform"),
    }
    return {key: value for key, value in software.items() if value is not None}


def register_device(
    session: Session, fingerprint: dict[str, Any], *, memory_bytes: int | None = None
) -> Device:
    """Insert the device of this fingerprint, or refresh `last_seen` and `software` if it is known; commits.

    `memory_bytes` is the host's RAM for a CPU (the fingerprint gives GPU memory itself).
    """
    device_id = device_id_for(fingerprint)
    device_class = device_class_of(fingerprint)
    gpu = _gpu_part(fingerprint)
    hardware = backend_part(fingerprint).get("hardware")
    name = str(
        hardware
        or (gpu.get("name") if device_class == "gpu" else fingerprint.get("cpu_model"))
        or "unknown CPU"
    )
    memory = int(gpu["total_memory_bytes"]) if gpu.get("total_memory_bytes") else memory_bytes
    device = session.get(Device, device_id)
    now = utcnow()
    if device is None:
        device = Device(
            id=device_id,
            device_class=device_class,
            vendor=vendor_of_device(fingerprint, name),
            name=name,
            memory_bytes=memory,
            software=software_of(fingerprint),
            fingerprint=fingerprint,
            first_seen=now,
            last_seen=now,
        )
        session.add(device)
    else:
        device.last_seen = now
        device.software = software_of(fingerprint)
        device.memory_bytes = memory
    session.commit()
    return device


class WorkerNameTaken(RuntimeError):
    """Another live process holds this worker name; the message says which."""


def register_worker(
    session: Session,
    *,
    name: str,
    device_id: str,
    device: str,
    queues: Sequence[str],
    hostname: str,
    pid: int,
    concurrency: int = 1,
    dead_after_s: float | None = None,
) -> Worker:
    """Insert or replace the row of a worker that just started (a restart under the same name reuses it).

    With `dead_after_s`, a row that another process holds and that is live by `live_worker_condition`
    is not replaced: `WorkerNameTaken` is raised instead (one conditional UPDATE decides a race).
    """
    now = utcnow()
    values: dict[str, Any] = {
        "device_id": device_id,
        "device": device,
        "queues": list(queues),
        "hostname": hostname,
        "pid": pid,
        "concurrency": concurrency,
        "started_at": now,
        "last_heartbeat": now,
        "stopped_at": None,
    }
    if dead_after_s is not None:
        free = ~live_worker_condition(dead_after_s=dead_after_s, now=now) | (
            (Worker.pid == pid) & (Worker.hostname == hostname)
        )
        taken = session.execute(update(Worker).where(Worker.name == name, free).values(**values))
        if not getattr(taken, "rowcount", 0):
            session.rollback()
            holder = session.get(Worker, name, populate_existing=True)
            if holder is not None:
                session.rollback()
                raise WorkerNameTaken(
                    f"worker name {name!r} is held by a live worker (pid {holder.pid} on {holder.hostname}, "
                    f"last heartbeat {holder.last_heartbeat:%H:%M:%S}); choose another --name"
                )
    worker = session.get(Worker, name, populate_existing=True)
    if worker is None:
        worker = Worker(name=name)
        session.add(worker)
    for column, value in values.items():
        setattr(worker, column, value)
    try:
        session.commit()
    except IntegrityError:  # another process inserted this name first
        session.rollback()
        raise WorkerNameTaken(
            f"worker name {name!r} was taken by another worker starting at the same time"
        ) from None
    return worker


def free_worker_name(session: Session, base: str, *, dead_after_s: float) -> str:
    """`base` if no live worker holds it, else the first of `base-2`, `base-3`, ... that none holds."""
    live = select(Worker.name).where(
        live_worker_condition(dead_after_s=dead_after_s), Worker.name.like(f"{base}%")
    )
    held = set(session.scalars(live))
    session.rollback()
    if base not in held:
        return base
    number = 2
    while f"{base}-{number}" in held:
        number += 1
    return f"{base}-{number}"


def heartbeat(
    session: Session, name: str, *, pid: int | None = None, started_at: datetime | None = None
) -> bool:
    """Record that the worker is alive now; False if it has no row (or, given `pid` and `started_at`, the
    row is no longer this process's). A beat clears `stopped_at`: a process that beats is not stopped."""
    condition = Worker.name == name
    if pid is not None:
        condition = condition & (Worker.pid == pid)
    if started_at is not None:
        condition = condition & (Worker.started_at == started_at)
    result = session.execute(update(Worker).where(condition).values(last_heartbeat=utcnow(), stopped_at=None))
    session.commit()
    return bool(getattr(result, "rowcount", 0))


def mark_worker_stopped(session: Session, name: str, *, pid: int, started_at: datetime) -> bool:
    """Record a clean shutdown of the process that registered `name` with this `pid` at `started_at`;
    False (nothing written) when the row now belongs to another process."""
    result = session.execute(
        update(Worker)
        .where(Worker.name == name, Worker.pid == pid, Worker.started_at == started_at)
        .values(stopped_at=utcnow())
    )
    session.commit()
    return bool(getattr(result, "rowcount", 0))


def live_worker_condition(*, dead_after_s: float, now: datetime | None = None) -> ColumnElement[bool]:
    """The one rule of a live worker, as a SQL condition on `workers`: it has not stopped, and its last
    heartbeat is at most `dead_after_s` old at `now` (default: now). Every question about liveness (the
    devices API, suites, the reconciler, the metrics) asks it through this condition."""
    cutoff = (now or utcnow()) - timedelta(seconds=dead_after_s)
    return Worker.stopped_at.is_(None) & (Worker.last_heartbeat >= cutoff)


def list_devices(session: Session) -> list[Device]:
    """Every registered device, by class then name."""
    return list(session.scalars(select(Device).order_by(Device.device_class, Device.name, Device.id)))


def get_device(session: Session, device_id: str) -> Device | None:
    """The device with this id, or None."""
    return session.get(Device, device_id)


def devices_by_id(session: Session, device_ids: Collection[str]) -> dict[str, Device]:
    """The registered devices among `device_ids`, by id (one query; unknown ids are left out)."""
    if not device_ids:
        return {}
    return {d.id: d for d in session.scalars(select(Device).where(Device.id.in_(list(device_ids))))}


def devices_taking(session: Session, device_class: str, *, target: str | None = None) -> list[Device]:
    """The registered devices a job of this queue class may run on: its target alone when it names one,
    else every device whose workers consume the class's queue (a job spelled `opencl:0:0` waits on
    `opencl` and any OpenCL worker takes it, whatever its own numbers)."""
    if target is not None:
        found = get_device(session, target)
        return [found] if found is not None else []
    return [device for device in list_devices(session) if device_class in device_queue_classes(device)]


def float64_refusal_of_registered(
    session: Session, device: str, device_class: str, dtype: str, *, target: str | None = None
) -> str | None:
    """Why a `dtype` job spelled `device` cannot run on any registered device that may take it
    (`devices_taking`); None when one of them does float64, when one has not said, or when none is
    registered yet: then only a worker can tell, and it checks at run time (`engine.backend.check_float64`).
    """
    if dtype != "float64":
        return None
    candidates = devices_taking(session, device_class, target=target)
    if not candidates or any(device_float64(found) is not False for found in candidates):
        return None
    named = ", ".join(f"{found.name} ({found.id})" for found in candidates[:FLOAT64_NAMED])
    if len(candidates) > FLOAT64_NAMED:
        named += f" and {len(candidates) - FLOAT64_NAMED} more"
    why = (
        f"its target {named} has no float64"
        if target is not None
        else f"no registered device that takes {device_class} jobs has float64: {named}"
    )
    return float64_refused(device, why)


def list_workers(session: Session, *, device_id: str | None = None) -> list[Worker]:
    """Every worker row (live or not), newest heartbeat first."""
    query = select(Worker).order_by(Worker.last_heartbeat.desc())
    if device_id is not None:
        query = query.where(Worker.device_id == device_id)
    return list(session.scalars(query))


def workers_with_liveness(
    session: Session, *, dead_after_s: float, device_id: str | None = None, now: datetime | None = None
) -> list[tuple[Worker, bool]]:
    """Every worker row (live or not), newest heartbeat first, each with whether it is live."""
    live = case((live_worker_condition(dead_after_s=dead_after_s, now=now), True), else_=False)
    query = select(Worker, live).order_by(Worker.last_heartbeat.desc())
    if device_id is not None:
        query = query.where(Worker.device_id == device_id)
    return [(worker, bool(is_live)) for worker, is_live in session.execute(query)]


def live_workers(session: Session, *, dead_after_s: float) -> list[Worker]:
    """Workers that have a recent heartbeat and did not stop."""
    query = select(Worker).where(live_worker_condition(dead_after_s=dead_after_s))
    return list(session.scalars(query.order_by(Worker.name)))


def served_queues(session: Session, *, dead_after_s: float) -> set[str]:
    """The job queues at least one live worker consumes now (the control queue every worker also
    consumes carries no jobs, so it is left out)."""
    return {
        queue
        for worker in live_workers(session, dead_after_s=dead_after_s)
        for queue in worker.queues or []
        if queue != CONTROL_QUEUE
    }


def live_device_ids(session: Session, *, dead_after_s: float) -> set[str]:
    """Ids of the devices served by at least one live worker."""
    return {worker.device_id for worker in live_workers(session, dead_after_s=dead_after_s)}
