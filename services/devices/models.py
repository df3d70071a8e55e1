"""Devices (one row per distinct stable fingerprint) and the workers that serve them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from services.core.db import Base, utcnow


class Device(Base):
    """A CPU or GPU as the benchmarks see it: hardware plus the software that drives it.

    `id` is a short hash of the stable fields of the engine's fingerprint (see `services.devices.service`),
    so identical machines share a device and its queue `device.<id>`.
    """

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    device_class: Mapped[str] = mapped_column(String(8), doc="cpu or gpu")
    vendor: Mapped[str] = mapped_column(String(32), doc="Intel, AMD, NVIDIA, ARM, ... or unknown")
    name: Mapped[str] = mapped_column(String(200), doc="the CPU model or GPU name")
    memory_bytes: Mapped[int | None] = mapped_column(
        BigInteger, doc="GPU memory, or the host's RAM for a CPU"
    )
    software: Mapped[dict[str, Any]] = mapped_column(doc="versions: numpy, BLAS, python, CuPy, CUDA, driver")
    fingerprint: Mapped[dict[str, Any]] = mapped_column(doc="the engine's full fingerprint when first seen")
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def queue(self) -> str:
        """The queue of jobs aimed at exactly this device."""
        return f"device.{self.id}"

    def __repr__(self) -> str:
        return f"Device(id={self.id!r}, class={self.device_class!r}, name={self.name!r})"


class Worker(Base):
    """A `bpbench worker` process: what it serves and when it was last heard from."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(
        String(200), primary_key=True, doc="the Celery node name, e.g. cpu@host"
    )
    device_id: Mapped[str] = mapped_column(String(16), ForeignKey("devices.id"), index=True)
    device: Mapped[str] = mapped_column(String(40), doc="the --device it was started with: cpu, gpu:N, ...")
    queues: Mapped[list[str]] = mapped_column()
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_heartbeat: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    stopped_at: Mapped[datetime | None] = mapped_column(doc="set on a clean shutdown")

    def __repr__(self) -> str:
        return f"Worker(name={self.name!r}, device_id={self.device_id!r}, queues={self.queues!r})"
