"""Regression detection: a real slowdown of a device is flagged; repeated runs of the same code are not.

The results are real engine runs of one spec, recorded under one device through the job service. The
process runs pinned to one CPU core with one BLAS thread. The baseline runs have the core to themselves
(real-time priority: on a shared machine other processes would otherwise move the medians by 30%). The
planted slowdown makes that device genuinely slower without touching the engine: the same core shared, at
normal priority, with five busy processes (noisy neighbours), so the engine gets a sixth of it or less.
Both databases record the same runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session
from threadpoolctl import threadpool_limits

from engine.jobs import run_job
from harness.processes import bpbench_command
from services.core.config import Settings
from services.devices.service import device_id_for, register_device
from services.jobs import service as jobs
from services.jobs.spec import JobSpec
from services.results.regressions import (
    ALPHA,
    MIN_CHANGE,
    assess,
    detect,
    mann_whitney_u,
    smallest_p_value,
)
from tests.support import apiserver
from tests.support.apiserver import ApiServer, server_env

api = apiserver.api

BASELINE_RUNS = 5
COMPETITORS = 5  # busy processes sharing the core in the slow configuration

# About a second per run here: 40 windows of 30 steps of a small MLP, so a run's median spans many windows.
SPEC = JobSpec.model_validate(
    {
        "kind": "train",
        "device": "cpu",
        "model": {"name": "mlp", "layers": [784, 128, 10]},
        "dataset": "synthetic",
        "synthetic_samples": 512,
        "steps": 1240,
        "batch_size": 64,
        "seed": 5,
        "timing": {"warmup": 40, "window": 30, "min_repeats": 40, "max_repeats": 40},
    }
)


@contextlib.contextmanager
def one_core(*, realtime: bool = False, competitors: int = 0) -> Iterator[None]:
    """Run this process on one core with one BLAS thread.

    `realtime`: at SCHED_FIFO priority, so no other process of the machine can take the core (the device to
    itself, as on a dedicated benchmark host; the kernel still keeps 5% for others). `competitors`: busy
    processes pinned to the same core at normal priority, sharing it with this one.
    """
    previous = os.sched_getaffinity(0)
    core = max(previous)
    hogs = [
        subprocess.Popen(
            [sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass"]
        )
        for _ in range(competitors)
    ]
    try:
        os.sched_setaffinity(0, {core})
        if realtime:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        with threadpool_limits(limits=1):
            time.sleep(0.2 if hogs else 0)  # let the competitors start spinning
            yield
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        os.sched_setaffinity(0, previous)
        for hog in hogs:
            hog.kill()
            hog.wait(timeout=10)


def realtime_allowed() -> bool:
    """True if this process may use SCHED_FIFO (root or CAP_SYS_NICE, and a real-time budget)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (PermissionError, OSError):
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


# Measured once per test session and recorded once per database, whichever module asks first (this one, or
# the dashboard's test of the mark); pytest may set a module fixture up again when the database changes.
_MEASURED: dict[str, list[dict[str, Any]]] = {}
_RECORDED: dict[str, dict[str, Any]] = {}


@pytest.fixture
def measured() -> dict[str, list[dict[str, Any]]]:
    """Engine result documents: `BASELINE_RUNS` runs on the core to itself, then one on the shared core."""
    if not realtime_allowed():
        # At normal priority the baseline would move with the machine's other load (30% here): no test.
        pytest.skip("real-time scheduling (SCHED_FIFO) is not permitted: run as root or with CAP_SYS_NICE")
    if not _MEASURED:
        spec = SPEC.engine_dict()
        with one_core(realtime=True):
            baseline = [run_job(spec) for _ in range(BASELINE_RUNS)]
        with one_core(competitors=COMPETITORS):
            slow = [run_job(spec)]
        _MEASURED.update(baseline=baseline, slow=slow)
    return _MEASURED


def record(session_maker: Any, documents: list[dict[str, Any]], device_id: str) -> list[int]:
    """Store each document as the result of a succeeded job on `device_id` (job service, no broker).

    One session per step, as the API and the worker do it.
    """
    ids = []
    for document in documents:
        with session_maker() as session:
            job_id = jobs.create_job(session, SPEC).id
            session.commit()
        with session_maker() as session:
            claim = jobs.claim_job(session, job_id, worker_name="regression-test", device_id=device_id)
            assert claim is not None
        with session_maker() as session:
            result = jobs.complete_job(session, job_id, document, attempt=claim.attempt)
            assert result is not None and result.device_id == device_id
            ids.append(result.id)
    return ids


@pytest.fixture
def recorded(
    measured: dict[str, list[dict[str, Any]]], session_maker: Any, database_url: str
) -> dict[str, Any]:
    """The measured runs in this backend's database: the baseline runs first, the slow one last."""
    if database_url not in _RECORDED:
        with session_maker() as session:
            device_id = register_device(session, measured["baseline"][0]["fingerprint"]).id
        baseline = record(session_maker, measured["baseline"], device_id)
        slow = record(session_maker, measured["slow"], device_id)
        _RECORDED[database_url] = {"device_id": device_id, "baseline": baseline, "slow": slow[0]}
    return _RECORDED[database_url]


def median(document: dict[str, Any]) -> float:
    return float(document["statistics"]["samples_per_s"]["median"])


def test_the_slowed_down_device_is_the_same_device(measured: dict[str, list[dict[str, Any]]]) -> None:
    ids = {device_id_for(doc["fingerprint"]) for doc in measured["baseline"] + measured["slow"]}
    assert len(ids) == 1
    baseline = sorted(median(doc) for doc in measured["baseline"])[BASELINE_RUNS // 2]
    # A sixth of a core (or less, with the machine's other load) is a real slowdown of at least 40%.
    assert median(measured["slow"][0]) < 0.6 * baseline


def test_a_planted_slowdown_is_flagged_as_a_regression(
    recorded: dict[str, Any], measured: dict[str, list[dict[str, Any]]], db_session: Session
) -> None:
    verdicts = detect(
        db_session, spec_hash=SPEC.spec_hash(), device_id=recorded["device_id"], flagged_only=False
    )
    assert [v.result_id for v in verdicts] == [recorded["slow"]]
    assert verdicts[0].flag == "regression", verdicts[0].reason
    verdict = verdicts[0]
    assert verdict.flag == "regression"
    assert verdict.history_runs == BASELINE_RUNS
    expected = median(measured["slow"][0]) / verdict.baseline_samples_per_s - 1
    assert verdict.change_pct == pytest.approx(100 * expected)
    assert verdict.change_pct < -40
    assert verdict.p_value < 0.01
    assert verdict.z < -3


def test_repeated_runs_of_the_same_code_are_not_flagged(
    recorded: dict[str, Any], db_session: Session
) -> None:
    verdicts = detect(
        db_session,
        spec_hash=SPEC.spec_hash(),
        device_id=recorded["device_id"],
        latest_only=False,
        flagged_only=False,
    )
    by_result = {v.result_id: v for v in verdicts}
    # Runs 4 and 5 of the baseline have a history of three and four runs of the same code.
    quiet = [by_result[result_id] for result_id in recorded["baseline"][3:]]
    assert len(quiet) == BASELINE_RUNS - 3
    assert [v.flag for v in quiet] == [None] * len(quiet), [v.reason for v in quiet]
    assert recorded["baseline"][0] not in by_result  # no history yet: not assessed


def test_the_api_and_bpbench_compare_show_the_regression(
    recorded: dict[str, Any], api: ApiServer, service_settings: Settings
) -> None:
    with api.client() as client:
        doc = client.get("/api/v1/regressions", params={"spec_hash": SPEC.spec_hash()}).json()
    assert [(item["result_id"], item["flag"]) for item in doc["items"]] == [(recorded["slow"], "regression")]
    assert doc["rule"]["min_history"] == 3
    env = server_env(service_settings, api.token, BPBENCH_API_URL=api.url)
    shown = subprocess.run(
        [*bpbench_command(), "compare", "--spec-hash", SPEC.spec_hash()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "regression on" in shown.stdout
    assert f"{doc['items'][0]['change_pct']:+.1f}%" in shown.stdout


# --- the statistics, on known numbers ----------------------------------------------------------------------


def test_mann_whitney_matches_the_textbook_normal_approximation() -> None:
    # No ties: ranks of the first sample 1, 2, 5, 6 -> U = 14 - 10 = 4; mean 8, variance 4*4*9/12 = 12.
    result = mann_whitney_u([1.0, 2.0, 5.0, 6.0], [3.0, 4.0, 7.0, 8.0])
    assert result.u == 4.0
    z = (abs(4 - 8) - 0.5) / math.sqrt(12)
    assert result.p_value == pytest.approx(math.erfc(z / math.sqrt(2)))


def test_mann_whitney_agrees_with_scipy_when_scipy_is_there() -> None:
    stats = pytest.importorskip("scipy.stats")
    first = [10.1, 9.8, 10.4, 10.0, 9.9, 10.4, 10.2]
    second = [9.1, 9.3, 9.8, 9.0, 9.4, 9.8, 9.2, 9.5, 10.0]
    expected = stats.mannwhitneyu(first, second, method="asymptotic")
    result = mann_whitney_u(first, second)
    assert result.u == expected.statistic
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-12)


def test_a_change_under_the_floor_is_never_flagged() -> None:
    history = [(100.0, [100.0] * 20), (100.0, [100.0] * 20), (100.0, [100.0] * 20)]
    small = 100.0 * (1 - MIN_CHANGE / 2)
    outcome = assess([small] * 20, small, history)
    assert outcome["flag"] is None
    assert outcome["change_pct"] == pytest.approx(-50 * MIN_CHANGE)
    big = assess([80.0] * 20, 80.0, history)
    assert (big["flag"], round(big["change_pct"], 6)) == ("regression", -20.0)
    assert assess([130.0] * 20, 130.0, history)["flag"] == "improvement"


def test_a_history_of_fewer_than_three_runs_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        assess([1.0], 1.0, [(1.0, [1.0]), (1.0, [1.0])])


def test_the_exact_rank_test_cannot_reach_alpha_with_three_trials_a_side() -> None:
    stats = pytest.importorskip("scipy.stats")
    assert smallest_p_value(3, 3) == pytest.approx(0.1)
    exact = stats.mannwhitneyu([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], method="exact")
    assert exact.pvalue == pytest.approx(smallest_p_value(3, 3))  # the most extreme ordering
    assert smallest_p_value(5, 15) < ALPHA and smallest_p_value(1, 30) > ALPHA


def test_a_big_change_with_too_few_trials_is_not_flagged_and_says_why() -> None:
    history = [(100.0, [100.0]), (101.0, [101.0]), (99.0, [99.0])]
    outcome = assess([60.0, 61.0, 59.0], 60.0, history)
    assert outcome["flag"] is None
    assert "3 trials against 3 can reach p 0.1 (needs under 0.01) no" in outcome["reason"]
    enough = [(100.0, [100.0, 101.0, 99.0, 100.5, 99.5])] * 3
    assert assess([60.0, 61.0, 59.0, 60.5, 59.5], 60.0, enough)["flag"] == "regression"
