"""The job kinds: `engine/kinds/<kind>.py` for each name of `engine.spec.KINDS`, each defining `KIND`.

`KINDS_BY_NAME` is read from the vocabulary, so a new kind is its module plus its name in `KINDS`.
"""

from __future__ import annotations

import importlib
from typing import Any

from engine.kinds.base import JobKind, MemoryEstimate
from engine.spec import KINDS, JobError

KINDS_BY_NAME: dict[str, JobKind] = {
    name: importlib.import_module(f"engine.kinds.{name}").KIND for name in KINDS
}


def kind_of(name: str) -> JobKind:
    """The JobKind called `name`, or JobError listing the kinds."""
    if name not in KINDS_BY_NAME:
        raise JobError(f"unknown job kind {name!r}; accepted: {', '.join(KINDS)}")
    return KINDS_BY_NAME[name]


def estimate_memory(spec: dict[str, Any]) -> MemoryEstimate:
    """The estimated peak memory of a fully resolved spec, by its kind."""
    return kind_of(str(spec["kind"])).estimate_memory(spec)


__all__ = ["KINDS_BY_NAME", "JobKind", "MemoryEstimate", "estimate_memory", "kind_of"]
