"""`GET /api/v1/compare`: one spec at a time; pooled-trial figures, ratio, efficiency, vendor timeline.

Results are planted in the database (devices, jobs, results, trials as the worker writes them, and counted
in `spec_device_stats` as `complete_job` counts them), with a batch size of their own so the filters see no
other test's results, and read back over real HTTP. How the spec is chosen with no filter is checked on a
database of the test's own (every result is a candidate), against the GROUP BY over every result that
`spec_candidates` ran before `spec_device_stats`.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from engine.stats import summarize
from services.core.db import make_engine, utcnow
from services.core.migrate import upgrade_to_head
from services.devices.models import Device
from services.jobs.models import Job
from services.results.compare import compare, spec_candidates
from services.results.filters import ResultFilter
from services.results.models import NO_DEVICE, Result, SpecDeviceStats, Trial
from services.results.service import record_spec_device_stats, refresh_spec_device_stats
from tests.support import apiserver
from tests.support.apiserver import ApiServer

A_TRIALS = ([100.0, 110.0, 120.0, 130.0, 140.0], [105.0, 115.0, 125.0])
B_TRIALS = ([1000.0 + 10 * i for i in range(10)],)
FLOPS_PER_STEP = 2.0e6

api = apiserver.api  # the shared API server fixture


@dataclass
class Planted:
    """What a test planted: the two devices, the batch size that isolates it, and the spec hashes."""

    cpu: Device
    gpu: Device
    batch_size: int
    main_hash: str
    other_hash: str


def _device(session: Session, device_class: str, vendor: str, name: str) -> Device:
    device = Device(
        id=uuid.uuid4().hex[:12],
        device_class=device_class,
        vendor=vendor,
        name=name,
        memory_bytes=2**34,
        software={},
        fingerprint={"planted": True},
    )
    session.add(device)
    return device


def _result(
    session: Session,
    device: Device | None,
    spec_hash: str,
    batch_size: int,
    trials: list[float],
    *,
    kind: str = "train",
    metrics: dict[str, Any] | None = None,
    created_at: datetime | None = None,
) -> None:
    spec = {"kind": kind, "model": {"name": "simple_convnet"}, "dataset": "digits", "batch_size": batch_size}
    device_class = device.device_class if device else "cpu"
    job = Job(
        spec=spec,
        spec_hash=spec_hash,
        kind=kind,
        device=device_class,
        device_class=device_class,
        queue=device_class,
        status="succeeded",
        device_id=device.id if device else None,
    )
    session.add(job)
    session.flush()
    summary = summarize(trials)
    metrics = metrics if metrics is not None else {"flops_per_step": FLOPS_PER_STEP}
    result = Result(
        job_id=job.id,
        device_id=device.id if device else None,
        spec_hash=spec_hash,
        kind=kind,
        model_name="simple_convnet" if kind == "train" else None,
        dataset="digits" if kind == "train" else None,
        batch_size=batch_size if kind == "train" else None,
        dtype="float32",
        samples_per_s=summary["median"] if kind == "train" else None,
        samples_per_s_ci_low=summary["ci95"][0] if kind == "train" else None,
        samples_per_s_ci_high=summary["ci95"][1] if kind == "train" else None,
        peak_flops_per_s=metrics.get("peak_flops_per_s") if kind == "gemm" else None,
        trial_count=len(trials),
        metrics=metrics,
        statistics={},
        fingerprint={},
        trials=[
            Trial(
                series="samples_per_s" if kind == "train" else "1024",
                index=i,
                value=value,
                samples_per_s=value if kind == "train" else None,
            )
            for i, value in enumerate(trials)
        ],
    )
    if created_at is not None:
        result.created_at = created_at
    session.add(result)
    session.flush()
    record_spec_device_stats(session, result)  # as complete_job does, in the same transaction


@pytest.fixture
def planted(db_session: Session) -> Planted:
    """An Intel CPU (two runs, a gemm peak) and an NVIDIA GPU (one run) of one spec; one run of another."""
    cpu = _device(db_session, "cpu", "Intel", f"Planted Xeon {uuid.uuid4().hex[:6]}")
    gpu = _device(db_session, "gpu", "NVIDIA", f"Planted H100 {uuid.uuid4().hex[:6]}")
    db_session.flush()
    batch_size = random.randint(20_000, 60_000)
    main_hash, other_hash = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    for trials in A_TRIALS:
        _result(db_session, cpu, main_hash, batch_size, trials)
    for trials in B_TRIALS:
        _result(db_session, gpu, main_hash, batch_size, trials)
    # Same kind, model, dataset and batch size, another spec (say more steps): never mixed in.
    _result(db_session, cpu, other_hash, batch_size, [1e6, 1e6, 1e6])
    _result(
        db_session,
        cpu,
        uuid.uuid4().hex[:16],
        batch_size,
        [5e8, 1e9],
        kind="gemm",
        # A calibration that qualifies: it ran a size >= 1024 (services/results/calibration.py).
        metrics={"peak_flops_per_s": 1.0e9, "dtype": "float32", "sizes": [{"n": 512}, {"n": 1024}]},
    )
    db_session.commit()
    return Planted(cpu, gpu, batch_size, main_hash, other_hash)


def _compare(api: ApiServer, **params: Any) -> Any:
    with api.client() as client:
        return client.get("/api/v1/compare", params=params)


def _rows(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["device_id"]: row for row in doc["rows"]}


def test_each_device_gets_the_median_and_ci_of_its_pooled_trials(api: ApiServer, planted: Planted) -> None:
    doc = _compare(api, spec_hash=planted.main_hash).json()
    rows = _rows(doc)
    assert list(rows) == [planted.gpu.id, planted.cpu.id]  # fastest first
    pooled = summarize([v for run in A_TRIALS for v in run])
    cpu = rows[planted.cpu.id]
    assert cpu["samples_per_s"]["median"] == pooled["median"] == 117.5
    assert cpu["samples_per_s"]["ci95"] == pooled["ci95"]
    assert (cpu["runs"], cpu["trials"]) == (2, 8)
    gpu = rows[planted.gpu.id]
    assert gpu["samples_per_s"]["median"] == summarize(B_TRIALS[0])["median"] == 1045.0
    assert gpu["samples_per_s"]["ci95"] == summarize(B_TRIALS[0])["ci95"]
    assert (gpu["runs"], gpu["trials"]) == (1, 10)
    assert (gpu["device_name"], gpu["device_class"], gpu["vendor"]) == (planted.gpu.name, "gpu", "NVIDIA")


def test_only_results_of_the_same_spec_are_compared(api: ApiServer, planted: Planted) -> None:
    by_filters = _compare(
        api, kind="train", model="simple_convnet", dataset="digits", batch_size=planted.batch_size
    ).json()
    # Two specs match; the one with more results is compared, and the response says so.
    assert by_filters["spec_hash"] == planted.main_hash
    assert [(c["spec_hash"], c["results"]) for c in by_filters["candidates"]] == [
        (planted.main_hash, 3),
        (planted.other_hash, 1),
    ]
    assert planted.other_hash in by_filters["note"]
    assert all(row["samples_per_s"]["median"] < 1e6 for row in by_filters["rows"])
    assert by_filters["spec"]["batch_size"] == planted.batch_size

    other = _compare(api, spec_hash=planted.other_hash).json()
    assert [(row["device_id"], row["samples_per_s"]["median"]) for row in other["rows"]] == [
        (planted.cpu.id, 1e6)
    ]
    assert other["note"] is None


def test_ratio_is_to_the_slowest_device_unless_a_baseline_is_named(api: ApiServer, planted: Planted) -> None:
    default = _compare(api, spec_hash=planted.main_hash).json()
    assert default["baseline_device_id"] == planted.cpu.id
    rows = _rows(default)
    assert rows[planted.cpu.id]["ratio"] == 1.0
    assert rows[planted.gpu.id]["ratio"] == pytest.approx(1045.0 / 117.5)

    by_name = _rows(_compare(api, spec_hash=planted.main_hash, baseline=planted.gpu.name).json())
    assert by_name[planted.gpu.id]["ratio"] == 1.0
    assert by_name[planted.cpu.id]["ratio"] == pytest.approx(117.5 / 1045.0)

    unknown = _compare(api, spec_hash=planted.main_hash, baseline="no such device")
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["field"] == "baseline"
    assert planted.cpu.id in unknown.json()["detail"][0]["accepted"]


def test_efficiency_is_against_the_devices_measured_gemm_peak(api: ApiServer, planted: Planted) -> None:
    rows = _rows(_compare(api, spec_hash=planted.main_hash).json())
    cpu = rows[planted.cpu.id]
    achieved = 117.5 * FLOPS_PER_STEP / planted.batch_size
    assert cpu["achieved_flops_per_s"] == pytest.approx(achieved)
    assert cpu["gemm_peak_flops_per_s"] == 1.0e9
    assert cpu["efficiency"] == pytest.approx(achieved / 1.0e9)
    assert rows[planted.gpu.id]["gemm_peak_flops_per_s"] is None  # never calibrated
    assert rows[planted.gpu.id]["efficiency"] is None


def test_each_row_carries_its_vendors_entry_in_the_seed_timeline(api: ApiServer, planted: Planted) -> None:
    rows = _rows(_compare(api, spec_hash=planted.main_hash).json())
    intel, nvidia = rows[planted.cpu.id]["timeline"], rows[planted.gpu.id]["timeline"]
    assert (intel["vendor"], intel["platform"], intel["years"]) == (
        "Intel",
        "CPU / Xeon Phi / FPGA",
        "2007–2012",
    )
    assert (nvidia["vendor"], nvidia["platform"], nvidia["years"]) == ("NVIDIA", "CUDA", "2009–2010")
    assert nvidia["entered"].startswith("2007 (platform released)")
    assert "ecosystem" in nvidia["note"]
    assert "000_5542642e4953c5ff" in nvidia["source"]


def test_no_match_is_a_404_and_a_bad_hash_a_422(api: ApiServer) -> None:
    missing = _compare(api, spec_hash="0" * 16)
    assert missing.status_code == 404
    assert "spec_hash=0000000000000000" in missing.json()["detail"]
    bad = _compare(api, spec_hash="xyz")
    assert bad.status_code == 422
    assert (bad.json()["detail"][0]["field"], bad.json()["detail"][0]["value"]) == ("spec_hash", "xyz")


# --- choosing the spec: `spec_device_stats`, on a database of the test's own --------------------------------


@pytest.fixture
def own_session(empty_database_url: str) -> Iterator[Session]:
    """A session on a database migrated for this test alone: compare with no filter sees every result."""
    upgrade_to_head(empty_database_url)
    engine = make_engine(empty_database_url)
    with Session(engine) as session:
        yield session
    engine.dispose()


def candidates_by_group_by(session: Session, filters: ResultFilter) -> list[dict[str, Any]]:
    """`spec_candidates` as it was before `spec_device_stats`: a GROUP BY over every throughput result."""
    results, devices = func.count(Result.id), func.count(func.distinct(Result.device_id))
    newest = func.max(Result.created_at)
    query = (
        select(
            Result.spec_hash,
            func.max(Result.kind),
            func.max(Result.model_name),
            func.max(Result.dataset),
            func.max(Result.batch_size),
            func.max(Result.dtype),
            results,
            devices,
            newest,
        )
        .where(Result.samples_per_s.is_not(None), *filters.conditions(Result))
        .group_by(Result.spec_hash)
        .order_by(results.desc(), devices.desc(), newest.desc(), Result.spec_hash)
    )
    keys = ("spec_hash", "kind", "model", "dataset", "batch_size", "dtype", "results", "devices", "newest")
    return [dict(zip(keys, row, strict=True)) for row in session.execute(query)]


def _ranking(session: Session, filters: ResultFilter) -> list[tuple[str, int, int]]:
    return [(c["spec_hash"], c["results"], c["devices"]) for c in spec_candidates(session, filters)]


def test_with_no_filter_the_spec_with_most_results_then_devices_then_the_newest_is_compared(
    own_session: Session,
) -> None:
    session = own_session
    cpu = _device(session, "cpu", "Intel", "Xeon A")
    gpu = _device(session, "gpu", "NVIDIA", "H100 B")
    session.flush()
    start = utcnow() - timedelta(hours=1)
    at = iter(start + timedelta(minutes=i) for i in range(100))
    lone, older_pair, newer_pair, small = "a" * 16, "b" * 16, "c" * 16, "d" * 16
    for device in (cpu, gpu, cpu):
        _result(session, device, older_pair, 32, [20.0, 21.0], created_at=next(at))  # 3 results, 2 devices
    for device in (gpu, cpu, gpu):
        _result(session, device, newer_pair, 16, [30.0, 31.0], created_at=next(at))  # the same, newer
    for _ in range(3):
        _result(session, cpu, lone, 64, [10.0, 11.0], created_at=next(at))  # 3 results, 1 device, newest
    for _ in range(2):
        _result(session, gpu, small, 8, [40.0, 41.0], created_at=next(at))
    session.commit()

    ranking = _ranking(session, ResultFilter())
    doc = compare(session, ResultFilter())

    assert ranking == [(newer_pair, 3, 2), (older_pair, 3, 2), (lone, 3, 1), (small, 2, 1)]
    assert spec_candidates(session, ResultFilter()) == candidates_by_group_by(session, ResultFilter())
    assert doc["spec_hash"] == newer_pair
    assert [(c["spec_hash"], c["newest"]) for c in doc["candidates"][:2]] == [
        (newer_pair, (start + timedelta(minutes=5)).isoformat()),
        (older_pair, (start + timedelta(minutes=2)).isoformat()),
    ]
    assert {row["device_id"]: row["runs"] for row in doc["rows"]} == {gpu.id: 2, cpu.id: 1}

    _result(session, gpu, older_pair, 32, [22.0, 23.0], created_at=start)  # one more result, an old one
    session.commit()

    assert _ranking(session, ResultFilter())[:2] == [(older_pair, 4, 2), (newer_pair, 3, 2)]
    again = compare(session, ResultFilter())
    assert again["spec_hash"] == older_pair
    assert again["candidates"][0]["newest"] == (start + timedelta(minutes=2)).isoformat()  # still the newest
    assert _ranking(session, ResultFilter(batch_size=16)) == [(newer_pair, 3, 2)]
    assert spec_candidates(session, ResultFilter(kind="train", dtype="float32")) == candidates_by_group_by(
        session, ResultFilter(kind="train", dtype="float32")
    )


def test_a_result_without_a_device_counts_as_a_result_but_not_as_a_device(own_session: Session) -> None:
    session = own_session
    cpu = _device(session, "cpu", "AMD", "EPYC C")
    session.flush()
    spec_hash = "e" * 16
    _result(session, cpu, spec_hash, 64, [10.0, 12.0])
    _result(session, None, spec_hash, 64, [11.0, 13.0])
    session.commit()

    stored = session.scalars(select(SpecDeviceStats).order_by(SpecDeviceStats.device_id)).all()

    assert [(row.device_id, row.result_count) for row in stored] == [(NO_DEVICE, 1), (cpu.id, 1)]
    assert _ranking(session, ResultFilter()) == [(spec_hash, 2, 1)]
    assert spec_candidates(session, ResultFilter()) == candidates_by_group_by(session, ResultFilter())
    assert [row["device_id"] for row in compare(session, ResultFilter())["rows"]] == [cpu.id]


def test_deleting_results_leaves_the_counts_stale_until_they_are_refreshed(own_session: Session) -> None:
    session = own_session
    cpu = _device(session, "cpu", "Intel", "Xeon D")
    gpu = _device(session, "gpu", "NVIDIA", "H100 E")
    session.flush()
    kept, emptied = "1" * 16, "2" * 16
    for device in (cpu, cpu, gpu):
        _result(session, device, kept, 64, [10.0, 12.0])
    _result(session, gpu, emptied, 32, [20.0, 22.0])
    session.commit()
    gone = session.scalars(
        select(Result.job_id).where(
            ((Result.spec_hash == kept) & (Result.device_id == gpu.id)) | (Result.spec_hash == emptied)
        )
    ).all()

    session.execute(delete(Job).where(Job.id.in_(gone)))  # the results go by ON DELETE CASCADE
    assert _ranking(session, ResultFilter()) == [(kept, 3, 2), (emptied, 1, 1)]  # not kept in step
    refresh_spec_device_stats(session, [kept, emptied])
    session.commit()

    assert session.scalar(select(func.count()).select_from(Result)) == 2
    assert _ranking(session, ResultFilter()) == [(kept, 2, 1)]
    assert spec_candidates(session, ResultFilter()) == candidates_by_group_by(session, ResultFilter())
