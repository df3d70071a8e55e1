"""The job kinds: `engine/kinds/<kind>.py` for each name of `engine.spec.KINDS`, each defining `KIND`.

`KINDS_BY_NAME` is read from the vocabulary, so a new kind is its module plus its name in `KINDS`.
"""

from __future__ import annotations

import importlib
from typing import Any

from engine.backends import backend_of
from engine.kinds.base import SAFETY_FACTOR, JobKind, MemoryEstimate
from engine.spec import KINDS, DeviceSpellingError, JobError, parse_device

KINDS_BY_NAME: dict[str, JobKind] = {
    name: importlib.import_module(f"engine.kinds.{name}").KIND for name in KINDS
}


def kind_of(name: str) -> JobKind:
    """The JobKind called `name`, or JobError listing the kinds."""
    if name not in KINDS_BY_NAME:
        raise JobError(f"unknown job kind {name!r}; accepted: {', '.join(KINDS)}")
    return KINDS_BY_NAME[name]


def estimate_memory(spec: dict[str, Any]) -> MemoryEstimate:
    """The estimated peak memory of a fully resolved spec, by its kind, plus what the device's backend
    library holds while it runs (`Backend.runtime_bytes`, the `backend_runtime` part; none for NumPy)."""
    estimate = kind_of(str(spec["kind"])).estimate_memory(spec)
    try:
        runtime = backend_of(parse_device(str(spec["device"]).strip().lower())).runtime_bytes
    except DeviceSpellingError:
        return estimate  # the device itself is refused where it is checked
    if not runtime:
        return estimate
    parts = {**estimate.parts, "backend_runtime": runtime}
    return MemoryEstimate(estimate.total_bytes + int(runtime * SAFETY_FACTOR), parts)


__all__ = ["KINDS_BY_NAME", "JobKind", "MemoryEstimate", "estimate_memory", "kind_of"]
