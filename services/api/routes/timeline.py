"""`/api/v1/timeline`: the seed's vendor table and milestones, as seeded in the database."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy.orm import Session

from services.api.deps import ReadAccess, SessionDep
from services.timeline.data import SEED_CITATION
from services.timeline.service import list_milestones, list_vendor_entries

router = APIRouter(prefix="/timeline", tags=["timeline"])


class VendorOut(BaseModel):
    """When one vendor's platform entered deep learning (the seed's cells, and an English rendering)."""

    vendor: str
    vendor_zh: str
    platform: str
    platform_zh: str
    platform_year: int | None
    entered_from: int
    entered_to: int
    years: str
    entered: str
    entered_zh: str
    note: str
    note_zh: str
    source: str


class MilestoneOut(BaseModel):
    """An event of the seed's timeline."""

    year: int
    event: str
    event_zh: str
    note: str
    note_zh: str
    source: str


class TimelineOut(BaseModel):
    """The seed's two tables, in the seed's order."""

    source: str
    vendors: list[VendorOut]
    milestones: list[MilestoneOut]


def timeline(session: Session) -> TimelineOut:
    """Both tables from the database."""
    vendors = list_vendor_entries(session)
    milestones = list_milestones(session)
    return TimelineOut(
        source=SEED_CITATION,
        vendors=[VendorOut.model_validate(v, from_attributes=True) for v in vendors],
        milestones=[MilestoneOut.model_validate(m, from_attributes=True) for m in milestones],
    )


@router.get("", response_model=TimelineOut, dependencies=[ReadAccess])
def get_timeline(session: SessionDep) -> TimelineOut:
    """The vendor table (platform, years it entered deep learning, note) and the milestones 1986-2012."""
    return timeline(session)
