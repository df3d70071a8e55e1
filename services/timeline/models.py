"""The seed's two timeline tables: vendors entering deep learning, and the milestones of GPU training.

Each row keeps the seed's Chinese text as written and an English rendering, and names its source.
"""

from __future__ import annotations

from sqlalchemy import Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from services.core.db import Base


class VendorEntry(Base):
    """When one vendor's platform entered deep learning (a row of the seed's vendor table).

    `entered_from`/`entered_to` are the years of use in deep learning (equal when the seed gives one year);
    `platform_year` is the platform's own release where the seed names it separately (NVIDIA: CUDA, 2007).
    `vendor` is the key matched against `devices.vendor`.
    """

    __tablename__ = "timeline_vendors"
    __table_args__ = (UniqueConstraint("vendor", name="uq_timeline_vendors_vendor"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    position: Mapped[int] = mapped_column(Integer, doc="row order in the seed, from 1")
    vendor: Mapped[str] = mapped_column(String(32))
    vendor_zh: Mapped[str] = mapped_column(String(64))
    platform: Mapped[str] = mapped_column(String(128))
    platform_zh: Mapped[str] = mapped_column(String(128))
    platform_year: Mapped[int | None] = mapped_column(Integer)
    entered_from: Mapped[int] = mapped_column(Integer)
    entered_to: Mapped[int] = mapped_column(Integer)
    entered: Mapped[str] = mapped_column(String(200), doc="the years as the English rendering states them")
    entered_zh: Mapped[str] = mapped_column(String(200), doc="the seed's cell, as written")
    note: Mapped[str] = mapped_column(Text)
    note_zh: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(200))

    @property
    def years(self) -> str:
        """The years of use in deep learning: `2009–2012`, or `2016` when the seed gives one year."""
        if self.entered_from == self.entered_to:
            return str(self.entered_from)
        return f"{self.entered_from}–{self.entered_to}"

    def __repr__(self) -> str:
        return f"VendorEntry(vendor={self.vendor!r}, entered={self.entered_from}-{self.entered_to})"


class Milestone(Base):
    """An event of the seed's timeline (the 1986 backprop paper, then the table of 2006-2012)."""

    __tablename__ = "timeline_milestones"
    __table_args__ = (UniqueConstraint("position", name="uq_timeline_milestones_position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    position: Mapped[int] = mapped_column(Integer, doc="order in the seed, from 1")
    year: Mapped[int] = mapped_column(Integer, index=True)
    event: Mapped[str] = mapped_column(Text)
    event_zh: Mapped[str] = mapped_column(Text)
    note: Mapped[str] = mapped_column(Text)
    note_zh: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(200))

    def __repr__(self) -> str:
        return f"Milestone(year={self.year}, event={self.event!r})"
