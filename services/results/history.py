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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from services.core.db import utcnow
from services.devices.service import software_of
from services.results.models import HistoryMark


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
