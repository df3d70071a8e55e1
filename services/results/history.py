"""A (device, spec) history cut into comparable stretches: like is compared with like.

Two results of the same device and spec are comparable only when they ran on the same software stack:
the stack is the fingerprint's software (`services.devices.service.software_of`: Python, NumPy and its BLAS,
CuPy, CUDA runtime, driver, platform with the kernel) plus the BLAS thread count. Where it changes (a NumPy
or driver upgrade), the history is cut and the cut says which fields changed from what to what.

People can also mark an expected shift (`HistoryMark`: a device, optionally one spec, a time and a note,
say "new driver 580"): the history is cut at the first result at or after the mark. Change points are
looked for inside each stretch, never across a cut.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from services.core.db import utcnow
from services.devices.service import software_of
from services.results.changepoints import ChangePoint, detect_change_points
from services.results.models import HistoryMark, Result


def stack_of(fingerprint: dict[str, Any] | None) -> dict[str, Any]:
    """The fields that must match for two results to be compared: the software and the BLAS threads."""
    fingerprint = fingerprint or {}
    threads = [
        pool.get("num_threads")
        for pool in fingerprint.get("blas") or []
        if isinstance(pool, dict) and pool.get("user_api") == "blas"
    ]
    return {**software_of(fingerprint), "blas_threads": threads[0] if threads else None}


@dataclass(frozen=True)
class Cut:
    """Where a new stretch starts (index into the history) and why."""

    index: int
    reason: str
    changed: dict[str, list[Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason, "changed": self.changed}


def cuts_of(
    created: Sequence[datetime], fingerprints: Sequence[dict[str, Any] | None], marks: Sequence[HistoryMark]
) -> list[Cut]:
    """The cuts of a history (oldest first): stack changes and marks, at most one cut per index."""
    cuts: dict[int, Cut] = {}
    stacks = [stack_of(fp) for fp in fingerprints]
    for index in range(1, len(stacks)):
        before, after = stacks[index - 1], stacks[index]
        changed = {
            k: [before.get(k), after.get(k)]
            for k in sorted(before.keys() | after.keys())
            if before.get(k) != after.get(k)
        }
        if changed:
            fields = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            cuts[index] = Cut(index, f"software changed: {fields}", changed)
    for mark in marks:
        first = next((i for i, at in enumerate(created) if at >= mark.at), None)
        if first is not None and first > 0 and first not in cuts:
            cuts[first] = Cut(first, f"marked: {mark.note}")
    return [cuts[i] for i in sorted(cuts)]


def stretches(length: int, cuts: Sequence[Cut]) -> list[tuple[int, int]]:
    """[start, end) of each stretch between the cuts."""
    bounds = [0, *(c.index for c in cuts), length]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def add_mark(
    session: Session, *, device_id: str, note: str, spec_hash: str | None = None, at: datetime | None = None
) -> HistoryMark:
    """Mark an expected shift on a device (every spec, or one): its histories restart there (committed)."""
    mark = HistoryMark(device_id=device_id, spec_hash=spec_hash, at=at or utcnow(), note=note)
    session.add(mark)
    session.commit()
    return mark


def marks_for(session: Session, device_id: str, spec_hash: str) -> list[HistoryMark]:
    """The marks that cut this (device, spec) history, oldest first."""
    return list(
        session.scalars(
            select(HistoryMark)
            .where(
                HistoryMark.device_id == device_id,
                or_(HistoryMark.spec_hash.is_(None), HistoryMark.spec_hash == spec_hash),
            )
            .order_by(HistoryMark.at)
        ).all()
    )


def list_marks(session: Session, device_id: str) -> list[HistoryMark]:
    """Every mark of a device, oldest first."""
    return list(
        session.scalars(
            select(HistoryMark).where(HistoryMark.device_id == device_id).order_by(HistoryMark.at)
        ).all()
    )


SERIES_LIMIT = 100  # results of a (device, spec) series read, newest


@dataclass(frozen=True)
class HistoryPoint:
    """One result of a series: its id, job, time and median samples/s."""

    result_id: int
    job_id: str
    created_at: datetime
    samples_per_s: float
    kind: str
    model: str | None
    dataset: str | None
    batch_size: int | None


@dataclass(frozen=True)
class History:
    """A (device, spec) series, oldest first, with its cuts and the change points found within stretches
    (`ChangePoint.index` counted in the whole series)."""

    device_id: str
    spec_hash: str
    points: list[HistoryPoint]
    cuts: list[Cut]
    change_points: list[ChangePoint]

    def as_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "spec_hash": self.spec_hash,
            "points": [{**asdict(p), "created_at": p.created_at.isoformat()} for p in self.points],
            "cuts": [c.as_dict() for c in self.cuts],
            "change_points": [
                {**c.as_dict(), "result_id": self.points[c.index].result_id} for c in self.change_points
            ],
        }


def device_history(session: Session, device_id: str, spec_hash: str, *, limit: int = SERIES_LIMIT) -> History:
    """The newest `limit` results of a (device, spec) pair, cut and searched for change points."""
    rows = session.execute(
        select(
            Result.id,
            Result.job_id,
            Result.samples_per_s,
            Result.kind,
            Result.model_name,
            Result.dataset,
            Result.batch_size,
            Result.created_at,
            Result.fingerprint,
        )
        .where(
            Result.device_id == device_id, Result.spec_hash == spec_hash, Result.samples_per_s.is_not(None)
        )
        .order_by(Result.created_at.desc(), Result.id.desc())
        .limit(limit)
    ).all()[::-1]
    points = [
        HistoryPoint(
            r.id,
            r.job_id,
            r.created_at,
            float(r.samples_per_s),
            r.kind,
            r.model_name,
            r.dataset,
            r.batch_size,
        )
        for r in rows
    ]
    cuts = cuts_of(
        [r.created_at for r in rows], [r.fingerprint for r in rows], marks_for(session, device_id, spec_hash)
    )
    found = []
    for start, end in stretches(len(points), cuts):
        values = [p.samples_per_s for p in points[start:end]]
        found += [replace(c, index=start + c.index) for c in detect_change_points(values)]
    return History(device_id, spec_hash, points, cuts, found)
