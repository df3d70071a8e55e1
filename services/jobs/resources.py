"""How much memory a job needs, checked twice against what is allowed.

The estimate is the job kind's own (`engine/kinds/<kind>.py`: from the network builder's shapes and the
data set's real size, about 1.5x what the engine holds at its peak, the interpreter included; a grid of
real jobs checks that it bounds their peaks); this module only compares it.

At submission the estimate is checked against the server's cap (`max_job_memory_bytes`): a job that could
never run anywhere is refused with a 422. On the worker, right after the claim, it is checked against the
memory the device has free now: a job that cannot fit fails at once with a clear error instead of dying of
an out-of-memory kill half-way (which the reconciler would then retry, uselessly, `max_attempts` times).
"""

from __future__ import annotations

from typing import Any

from engine.kinds import estimate_memory
from engine.kinds.base import MemoryEstimate as MemoryEstimate
from engine.kinds.base import mib
from services.jobs.spec import JobSpec

_REDUCE = "reduce batch_size, the layer widths, gemm_sizes or synthetic_samples"


class JobTooLarge(ValueError):
    """The job's estimated memory exceeds what is allowed or available; the message gives both figures."""


def estimate_job_memory(
    spec: JobSpec, *, read_dataset_files: bool = False, engine_doc: dict[str, Any] | None = None
) -> MemoryEstimate:
    """The estimated peak memory of running `spec`, by its kind (`engine_doc`: its `engine_dict()`, for a
    caller that has it already; it is not changed).

    By default nothing is read from the file system: a set named by `dataset_path` counts at its published
    size (at submission the answer must not depend on what exists, and the API may not see the workers'
    files). The worker passes `read_dataset_files=True`: then `mnist` counts what its files' headers declare.
    """
    document = dict(engine_doc) if engine_doc is not None else spec.engine_dict()
    if not read_dataset_files:
        document["dataset_path"] = None
    return estimate_memory(document)


def check_memory_cap(
    spec: JobSpec, cap_bytes: int, who: str = "this server", *, engine_doc: dict[str, Any] | None = None
) -> MemoryEstimate:
    """The estimate, or `JobTooLarge` if it exceeds the cap (`who` applies it: the server at submission)."""
    estimate = estimate_job_memory(spec, engine_doc=engine_doc)
    if estimate.total_bytes > cap_bytes:
        raise JobTooLarge(
            f"the job needs an estimated {estimate.describe()}; {who} accepts at most {mib(cap_bytes)} "
            f"per job ({_REDUCE})"
        )
    return estimate


def check_fits(spec: JobSpec, free_bytes: int, where: str) -> MemoryEstimate:
    """The estimate (the data set's files read), or `JobTooLarge` if it exceeds `free_bytes` free on
    `where` (on the worker)."""
    estimate = estimate_job_memory(spec, read_dataset_files=True)
    if estimate.total_bytes > free_bytes:
        raise JobTooLarge(
            f"the job needs an estimated {estimate.describe()} but {where} has {mib(free_bytes)} free "
            f"({_REDUCE}, or use a bigger device)"
        )
    return estimate
