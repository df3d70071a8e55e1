"""Recording results without a worker: real engine documents of small runs, stored through the jobs service
as a worker stores them (claim, then complete), with their throughput or peak set to planted values."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from engine.jobs import run_job
from services.jobs import service as jobs
from services.jobs.models import Job
from services.jobs.spec import JobSpec

_DOCUMENTS: dict[str, dict[str, Any]] = {}


def engine_document(spec: JobSpec) -> dict[str, Any]:
    """The engine's result document of `spec`, measured once per spec hash and test session (a copy)."""
    key = spec.spec_hash()
    if key not in _DOCUMENTS:
        _DOCUMENTS[key] = run_job(spec.engine_dict())
    return copy.deepcopy(_DOCUMENTS[key])


def record(
    session: Session,
    spec: JobSpec,
    device_id: str,
    adjust: Callable[[dict[str, Any]], None] = lambda document: None,
) -> Job:
    """One finished job of `spec` on `device_id`, its result the real document after `adjust(document)`."""
    document = engine_document(spec)
    adjust(document)
    # Created but never published: a worker of the test session must not take it before the claim below.
    job = jobs.create_job(session, spec)
    session.commit()
    claim = jobs.claim_job(session, job.id, worker_name="recorded-by-test", device_id=device_id)
    assert claim is not None
    assert jobs.complete_job(session, job.id, document, attempt=claim.attempt) is not None
    return job


def with_median(median: float) -> Callable[[dict[str, Any]], None]:
    """An `adjust` that sets the run's median samples/s (and a CI around it)."""

    def adjust(document: dict[str, Any]) -> None:
        document["statistics"]["samples_per_s"].update(median=median, ci95=[median * 0.99, median * 1.01])
        document["trials"] = [median] * 5

    return adjust
