"""Devices: one row per distinct stable fingerprint, vendors as the timeline names them."""

from __future__ import annotations

import copy
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.core.db import utcnow
from services.devices.models import Device, Worker
from services.devices.service import (
    device_id_for,
    heartbeat,
    live_workers,
    mark_worker_stopped,
    register_device,
    register_worker,
    software_of,
    vendor_of,
)
from services.timeline.data import VENDORS

CPU_FINGERPRINT: dict[str, Any] = {
    "device": "cpu",
    "cpu_model": "Intel(R) Xeon(R) Platinum 8480+",
    "physical_cores": 56,
    "logical_cores": 112,
    "numpy_version": "2.4.6",
    "blas": [
        {
            "user_api": "blas",
            "internal_api": "openblas",
            "prefix": "libscipy_openblas",
            "version": "0.3.31",
            "architecture": "SapphireRapids",
            "threading_layer": "pthreads",
            "num_threads": 112,
        }
    ],
    "python_version": "3.11.7",
    "platform": "Linux-6.8-x86_64",
    "hostname": "bench-01",
}
GPU_FINGERPRINT: dict[str, Any] = {
    **CPU_FINGERPRINT,
    "device": "gpu:0",
    "gpu": {
        "name": "NVIDIA H100 80GB HBM3",
        "index": 0,
        "total_memory_bytes": 85_000_000_000,
        "compute_capability": "9.0",
        "driver_version": "550.54.15",
        "cuda_driver_version": 12040,
        "cuda_runtime_version": 12040,
        "cupy_version": "13.3.0",
        "tf32": "0",
    },
}


@pytest.mark.parametrize(
    ("name", "vendor"),
    [
        ("Intel(R) Xeon(R) Processor", "Intel"),
        ("11th Gen Intel(R) Core(TM) i7-1185G7 @ 3.00GHz", "Intel"),
        ("AMD EPYC 9654 96-Core Processor", "AMD"),
        ("AMD Ryzen 9 7950X 16-Core Processor", "AMD"),
        ("AMD Instinct MI300X", "AMD"),
        ("NVIDIA H100 80GB HBM3", "NVIDIA"),
        ("Tesla V100-SXM2-16GB", "NVIDIA"),
        ("NVIDIA GeForce RTX 4090", "NVIDIA"),
        ("Neoverse-V2", "ARM"),
        ("aarch64", "ARM"),
        ("Apple M2 Max", "Apple"),
        ("POWER9 (raw), altivec supported", "IBM"),
        ("some accelerator", "unknown"),
    ],
)
def test_the_vendor_is_read_from_the_cpu_model_or_gpu_name(name: str, vendor: str) -> None:
    assert vendor_of(name) == vendor


def test_device_vendors_use_the_timeline_spelling() -> None:
    timeline_vendors = {row.vendor for row in VENDORS}
    assert {"Intel", "AMD", "NVIDIA", "ARM", "IBM", "Google"} <= timeline_vendors


def test_identical_machines_share_a_device_and_the_thread_count_makes_another() -> None:
    other_host = {**copy.deepcopy(CPU_FINGERPRINT), "hostname": "bench-02", "python_version": "3.12.1"}
    one_thread = copy.deepcopy(CPU_FINGERPRINT)
    one_thread["blas"][0]["num_threads"] = 1

    assert device_id_for(other_host) == device_id_for(CPU_FINGERPRINT)
    assert device_id_for(one_thread) != device_id_for(CPU_FINGERPRINT)
    assert device_id_for(GPU_FINGERPRINT) != device_id_for(CPU_FINGERPRINT)
    assert len(device_id_for(CPU_FINGERPRINT)) == 12


def test_a_gpu_on_another_index_of_the_same_host_is_the_same_device() -> None:
    second = copy.deepcopy(GPU_FINGERPRINT)
    second["device"], second["gpu"]["index"] = "gpu:1", 1
    assert device_id_for(second) == device_id_for(GPU_FINGERPRINT)


def test_two_driver_releases_of_the_same_cuda_version_are_two_stacks() -> None:
    newer = copy.deepcopy(GPU_FINGERPRINT)
    newer["gpu"]["driver_version"] = "550.90.07"  # the same CUDA 12.4 driver API, another release

    assert device_id_for(newer) != device_id_for(GPU_FINGERPRINT)
    assert (software_of(newer)["driver"], software_of(newer)["cuda_driver"]) == ("550.90.07", 12040)


def test_registering_a_fingerprint_twice_keeps_one_row(db_session: Session) -> None:
    fingerprint = copy.deepcopy(GPU_FINGERPRINT)
    fingerprint["gpu"]["name"] = f"NVIDIA H100 test {uuid.uuid4().hex[:6]}"  # a device of this test only

    first = register_device(db_session, fingerprint)
    first_seen = first.first_seen
    again = register_device(db_session, fingerprint)

    count = db_session.scalar(select(func.count()).select_from(Device).where(Device.id == first.id))
    assert (count, again.id, again.first_seen) == (1, first.id, first_seen)
    assert again.last_seen >= first_seen
    assert (again.device_class, again.vendor, again.memory_bytes) == ("gpu", "NVIDIA", 85_000_000_000)
    assert again.software["cupy"] == "13.3.0" and again.software["numpy"] == "2.4.6"
    assert again.queue == f"device.{again.id}"


def test_a_worker_is_live_while_it_beats_and_not_after_it_stops(db_session: Session) -> None:
    device = register_device(db_session, CPU_FINGERPRINT, memory_bytes=512 * 2**30)
    name = f"test-{uuid.uuid4().hex[:8]}@bench-01"
    register_worker(
        db_session,
        name=name,
        device_id=device.id,
        device="cpu",
        queues=["cpu", device.queue],
        hostname="bench-01",
        pid=4242,
    )
    assert name in {w.name for w in live_workers(db_session, dead_after_s=30)}

    row = db_session.get(Worker, name)
    assert row is not None
    row.last_heartbeat = utcnow() - timedelta(seconds=120)
    db_session.commit()
    assert name not in {w.name for w in live_workers(db_session, dead_after_s=30)}

    assert heartbeat(db_session, name) is True
    assert name in {w.name for w in live_workers(db_session, dead_after_s=30)}

    assert mark_worker_stopped(db_session, name, pid=4242, started_at=row.started_at) is True
    assert name not in {w.name for w in live_workers(db_session, dead_after_s=30)}
    assert heartbeat(db_session, "nobody@nowhere") is False
