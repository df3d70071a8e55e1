"""Schedules: a named suite run on one device (or device class) every so often, so a history builds up."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, Float, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from services.core.db import Base, utcnow


class Schedule(Base):
    """Run suite `suite` on `target` every `every_s` seconds; `next_run_at` is when it is due next."""

    __tablename__ = "schedules"
    __table_args__ = (
        CheckConstraint("every_s > 0", name="every_positive"),
        Index("ix_schedules_enabled_next", "enabled", "next_run_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    suite: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(64), doc="a device id, or a class: cpu, gpu, gpu:N")
    every_s: Mapped[float] = mapped_column(Float)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    next_run_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_run_at: Mapped[datetime | None] = mapped_column()
    last_job_ids: Mapped[list[str]] = mapped_column(default=list, doc="the jobs of the last run")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
