"""Alert deliveries: one row per (event, webhook URL), its payload and how its delivery went."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from services.core.db import Base, utcnow

ALERT_KINDS: tuple[str, ...] = ("regression", "improvement", "change_point", "missing_data")
DELIVERY_STATUSES: tuple[str, ...] = ("pending", "delivered", "failed")


class AlertDelivery(Base):
    """One event sent (or being sent) to one webhook; `event_key` makes each event alert once per URL."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (
        UniqueConstraint("event_key", "url", name="uq_alert_deliveries_event_url"),
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status_known"),
        Index("ix_alert_deliveries_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_key: Mapped[str] = mapped_column(String(200), doc="what happened, e.g. regression:result:42")
    kind: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2000))
    payload: Mapped[dict[str, Any]] = mapped_column(doc="the JSON body sent, with a Slack-compatible text")
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column()
