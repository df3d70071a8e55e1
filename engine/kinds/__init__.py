"""The job kinds, one module each; `KINDS_BY_NAME` maps `engine.spec.KINDS` to their `JobKind`."""

from __future__ import annotations

from typing import Any

from engine.kinds import backprop_vs_numerical, gemm, gradcheck, train
from engine.kinds.base import JobKind, MemoryEstimate
from engine.spec import KINDS, JobError

KINDS_BY_NAME: dict[str, JobKind] = {
    module.KIND.name: module.KIND for module in (train, gradcheck, backprop_vs_numerical, gemm)
}
assert tuple(KINDS_BY_NAME) == KINDS, "every kind of engine.spec.KINDS has one module, in that order"


def kind_of(name: str) -> JobKind:
    """The JobKind called `name`, or JobError listing the kinds."""
    if name not in KINDS_BY_NAME:
        raise JobError(f"unknown job kind {name!r}; accepted: {', '.join(KINDS)}")
    return KINDS_BY_NAME[name]


def estimate_memory(spec: dict[str, Any]) -> MemoryEstimate:
    """The estimated peak memory of a fully resolved spec, by its kind."""
    return kind_of(str(spec["kind"])).estimate_memory(spec)


__all__ = ["KINDS_BY_NAME", "JobKind", "MemoryEstimate", "estimate_memory", "kind_of"]
