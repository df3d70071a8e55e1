"""The calibration behind an efficiency figure: levelled sizes, same stack, and a flag above 100%."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy.orm import Session

from services.core.config import Settings
from services.devices.service import register_device
from services.jobs.spec import JobSpec
from services.results.calibration import calibration_for
from services.results.compare import compare
from services.results.filters import ResultFilter
from services.results.history import stack_of
from tests.support.jobs import tiny_spec
from tests.support.results import engine_document, record

QUICK = {"warmup": 1, "min_repeats": 2, "max_repeats": 3, "target_cv": 0.5}
SMOKE_GEMM = JobSpec.model_validate({"kind": "gemm", "gemm_sizes": [64], "timing": QUICK})
LEVELLED_GEMM = JobSpec.model_validate({"kind": "gemm", "gemm_sizes": [256, 1024], "timing": QUICK})


def _device(session: Session) -> str:
    fingerprint = {"cpu_model": f"Calibrated CPU {uuid.uuid4().hex[:6]}", "host": {"cpu_count": 2}}
    return register_device(session, fingerprint).id


def _scale_peak(factor: float) -> Any:
    def adjust(document: dict[str, Any]) -> None:
        document["metrics"]["peak_flops_per_s"] *= factor

    return adjust


def test_a_smoke_size_calibration_never_serves(db_session: Session, service_settings: Settings) -> None:
    device_id = _device(db_session)
    record(db_session, SMOKE_GEMM, device_id)
    stack = stack_of(engine_document(SMOKE_GEMM)["fingerprint"])
    calibration, why = calibration_for(db_session, device_id, "float32", stack)
    assert calibration is None
    assert why == (
        "no calibration of this device in float32 at sizes >= 1024 on this stack (1 gemm result(s) seen: "
        "1 below size 1024, 0 on another stack); run `bpbench submit --kind gemm "
        f"--gemm-sizes 1024,2048,4096 --dtype float32 --target {device_id}`"
    )


def test_the_best_levelled_calibration_of_the_same_stack_serves(
    db_session: Session, service_settings: Settings
) -> None:
    device_id = _device(db_session)
    low = record(db_session, LEVELLED_GEMM, device_id, _scale_peak(0.5))
    best = record(db_session, LEVELLED_GEMM, device_id)

    def other_stack(document: dict[str, Any]) -> None:
        document["fingerprint"]["numpy_version"] = "0.0.1"
        document["metrics"]["peak_flops_per_s"] *= 10  # higher, but measured on another NumPy

    record(db_session, LEVELLED_GEMM, device_id, other_stack)
    stack = stack_of(engine_document(LEVELLED_GEMM)["fingerprint"])
    calibration, why = calibration_for(db_session, device_id, "float32", stack)
    assert why is None and calibration is not None
    assert calibration.job_id == best.id != low.id
    assert calibration.sizes == [256, 1024]


def test_compare_flags_an_efficiency_over_100_percent_and_names_the_calibration(
    db_session: Session, service_settings: Settings
) -> None:
    device_id = _device(db_session)
    train = tiny_spec(seed=int(uuid.uuid4().int % 1000))
    record(db_session, train, device_id)
    achieved = engine_document(train)["metrics"]["flops_per_s"]
    calibration_job = record(
        db_session,
        LEVELLED_GEMM,
        device_id,
        lambda d: d["metrics"].update(peak_flops_per_s=achieved / 2),  # as if measured on a loaded machine
    )
    (row,) = compare(db_session, ResultFilter(spec_hash=train.spec_hash()))["rows"]
    assert row["calibration"]["job_id"] == calibration_job.id
    assert row["efficiency"] == pytest.approx(2.0, rel=0.2)
    assert row["efficiency_flag"].startswith("2")
    assert (
        f"(job {calibration_job.id}) was disturbed; recalibrate with `bpbench submit --kind gemm"
        in row["efficiency_flag"]
    )
