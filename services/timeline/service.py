"""The seed's timeline as stored: the vendor table and the milestones, each in the seed's order."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.timeline.models import Milestone, VendorEntry


def list_vendor_entries(session: Session) -> list[VendorEntry]:
    """Every vendor row, in the seed's order."""
    return list(session.scalars(select(VendorEntry).order_by(VendorEntry.position)))


def list_milestones(session: Session) -> list[Milestone]:
    """Every milestone, in the seed's order."""
    return list(session.scalars(select(Milestone).order_by(Milestone.position)))
