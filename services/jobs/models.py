"""The job table: the committed row is the source of truth; the broker only carries its id.

A job's id is a UUID4 string (36 characters, `str(uuid.uuid4())`): it can be made by any process without a
round trip, is unguessable in a URL, and is what the broker message carries.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Boolean, CheckConstraint, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from services.core.db import Base, utcnow
from services.devices import models as _devices  # noqa: F401  (the table the foreign keys point to)

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE_STATUSES: frozenset[str] = frozenset({"queued", "running"})


def new_job_id() -> str:
    """A fresh job id: a UUID4 in its canonical 36-character form."""
    return str(uuid.uuid4())


class Job(Base):
    """One benchmark job: its spec, where it should run, where it ran, and how far it got."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="status_known"
        ),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress_range"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_job_id)
    spec: Mapped[dict[str, Any]] = mapped_column(doc="JobSpec.engine_dict(): the fully populated spec")
    spec_hash: Mapped[str] = mapped_column(
        String(16), index=True, doc="JobSpec.spec_hash(): without the device"
    )
    kind: Mapped[str] = mapped_column(String(32), index=True)
    device: Mapped[str] = mapped_column(String(40), doc="the spec's device: cpu, gpu:N, xla:tpu:0, ...")
    device_class: Mapped[str] = mapped_column(String(8), doc="cpu or gpu")
    target_device_id: Mapped[str | None] = mapped_column(
        String(16), ForeignKey("devices.id"), doc="an exact device the job was aimed at, else None"
    )
    queue: Mapped[str] = mapped_column(String(64), doc="cpu, gpu or device.<device id>")
    status: Mapped[str] = mapped_column(String(16), default="queued", server_default=text("'queued'"))
    progress: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    progress_message: Mapped[str | None] = mapped_column(String(200))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    time_limit_s: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    worker_name: Mapped[str | None] = mapped_column(String(200))
    device_id: Mapped[str | None] = mapped_column(
        String(16), ForeignKey("devices.id"), index=True, doc="the device that ran (or runs) it"
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    published_at: Mapped[datetime | None] = mapped_column(doc="last time the id was sent to the broker")
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column(
        doc="the running attempt's last sign of life: set by the claim, then by its heartbeat thread"
    )
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish, once both are known."""
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None

    @property
    def is_final(self) -> bool:
        """True once the job has succeeded, failed or been cancelled."""
        return self.status in FINAL_STATUSES

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, kind={self.kind!r}, status={self.status!r}, queue={self.queue!r})"
