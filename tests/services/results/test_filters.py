"""The one results filter: its SQL picks the same results on `results` and on the per-spec stats."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.devices.service import register_device
from services.jobs import service as jobs
from services.results.filters import ResultFilter
from services.results.models import Result, SpecDeviceStats
from services.results.service import count_results, list_results
from tests.support.jobs import tiny_spec


def _document(median: float) -> dict[str, Any]:
    return {
        "kind": "train",
        "metrics": {"steps": 20},
        "statistics": {"samples_per_s": {"median": median, "ci95": [median - 1, median + 1]}},
        "trials": [median - 1, median, median + 1],
        "fingerprint": {"device": "cpu"},
        "engine_time_s": 0.1,
    }


def _stored(session: Session, device_id: str, **spec: Any) -> Result:
    job = jobs.create_job(session, tiny_spec(**spec))
    session.commit()
    claim = jobs.claim_job(session, job.id, worker_name="filter@test", device_id=device_id)
    assert claim is not None
    result = jobs.complete_job(session, job.id, _document(1000.0), attempt=claim.attempt)
    assert result is not None
    return result


def test_a_filter_picks_the_same_results_when_listing_counting_and_choosing_a_spec(
    db_session: Session,
) -> None:
    cpu = register_device(db_session, {"device": "cpu", "cpu_model": f"Filter CPU {uuid.uuid4().hex[:8]}"})
    batch = 40 + uuid.uuid4().int % 20  # a batch size no other test of the session stores
    mine = [_stored(db_session, cpu.id, seed=seed, batch_size=batch) for seed in (1, 2)]
    other = _stored(db_session, cpu.id, seed=1, batch_size=batch + 1)
    result_filter = ResultFilter(batch_size=batch, device_ids=(cpu.id,))

    listed = list_results(db_session, result_filter, limit=None)
    stats = db_session.scalars(
        select(SpecDeviceStats).where(result_filter.as_sql_filter(SpecDeviceStats))
    ).all()

    assert {r.id for r in listed} == {r.id for r in mine}
    assert other.id not in {r.id for r in listed}
    assert count_results(db_session, result_filter) == 2
    assert count_results(db_session, result_filter, cap=1) == 2  # capped: "more than 1"
    assert sorted(s.spec_hash for s in stats) == sorted(r.spec_hash for r in mine)
    assert [r.id for r in list_results(db_session, result_filter, limit=1)] == [mine[1].id]  # newest first


def test_a_filter_with_nothing_set_is_true_and_says_so() -> None:
    assert str(ResultFilter().as_sql_filter()) == "true"
    assert ResultFilter().describe() == "no filters"
    assert ResultFilter(dtype="float32", kind="train").describe() == "kind=train, dtype=float32"
    assert ResultFilter(spec_hash="a" * 16, batch_size=8).given() == {"batch_size": 8, "spec_hash": "a" * 16}
