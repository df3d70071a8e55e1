"""What a job's worker said while it ran: its log lines and the loss points of its running attempt.

Both are written by the worker process that runs the attempt (`services/joblogs/capture.py`), through
`services/joblogs/service.py`, and read by the API; neither changes a `jobs` row. Rows go with their job
(ON DELETE CASCADE). Each is bounded per attempt: `MAX_LINES_PER_ATTEMPT` lines of at most
`MAX_MESSAGE_CHARS` characters, and one curve of at most `MAX_CURVE_POINTS` points.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from services.core.db import Base, utcnow
from services.jobs import models as _jobs  # noqa: F401  (the table the foreign keys point to)

MAX_LINES_PER_ATTEMPT = 500
MAX_MESSAGE_CHARS = 2000
MAX_CURVE_POINTS = 500


class JobLogLine(Base):
    """One log line of one attempt of a job; `id` is its sequence number (`?after=` pages on it)."""

    __tablename__ = "job_logs"
    __table_args__ = (Index("ix_job_logs_job_id_id", "job_id", "id"),)

    # 64 bits on PostgreSQL (lines outnumber jobs by hundreds); SQLite's rowid is 64 bits already, and only
    # an INTEGER primary key is that rowid.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer, doc="the claim's attempt number the line was logged in")
    logged_at: Mapped[datetime] = mapped_column(default=utcnow, doc="when the worker logged it (UTC)")
    level: Mapped[str] = mapped_column(String(10), doc="INFO, WARNING, ERROR, ...")
    logger: Mapped[str] = mapped_column(String(100), doc="the logger's name")
    message: Mapped[str] = mapped_column(Text, doc=f"the message, at most {MAX_MESSAGE_CHARS} characters")


class JobLossCurve(Base):
    """The loss points a running attempt has reported so far: `[[step, loss], ...]`, thinned to at most
    `MAX_CURVE_POINTS` (the first and the newest point always kept). Replaced as a whole on each write."""

    __tablename__ = "job_loss_curves"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    points: Mapped[list[Any]] = mapped_column(doc="[[step, loss], ...] in step order")
    total_steps: Mapped[int | None] = mapped_column(Integer, doc="the steps the attempt will train")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
