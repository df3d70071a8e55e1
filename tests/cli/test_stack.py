"""`bpbench up` end to end, as the README's first command: real processes, SQLite, the embedded broker, HTTP.

The first `bpbench up --exit-when-done` on a fresh data directory runs the real standard suite (this is the
one slow test of the service, bounded at 3 minutes); the tests after it reuse that directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from harness.processes import bpbench_command
from services.core.db import make_engine
from services.jobs.models import Job
from services.jobs.suites import standard_suite
from services.results.models import Result
from tests.support.apiserver import PROJECT_ROOT, free_port
from tests.support.cli import read_until_serving
from tests.support.jobs import tiny_spec

SUITE_BUDGET_S = 180.0


@dataclass
class UpRun:
    """A finished `bpbench up` run: its data directory, output and duration."""

    data_dir: Path
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def stack_env() -> dict[str, str]:
    """A user's environment: no BPBENCH_ settings at all, so `up` uses its own defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPBENCH_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env["COLUMNS"] = "200"
    return env


def up(data_dir: Path, *args: str, timeout_s: float = 300) -> UpRun:
    """Run `bpbench up --data-dir DIR --port <free> ARGS` to the end."""
    argv = [*bpbench_command(), "up", "--data-dir", str(data_dir), "--port", str(free_port()), *args]
    started = time.monotonic()
    done = subprocess.run(
        argv, env=stack_env(), capture_output=True, text=True, timeout=timeout_s, check=False
    )
    return UpRun(data_dir, done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def jobs_in(data_dir: Path) -> list[Job]:
    """Every job in the stack's SQLite database."""
    engine = make_engine(f"sqlite:///{data_dir / 'bpbench.db'}")
    try:
        with Session(engine) as session:
            return list(session.scalars(select(Job).order_by(Job.created_at)))
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def first_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpRun]:
    """`bpbench up --exit-when-done` on a fresh directory: the standard suite, for real."""
    yield up(tmp_path_factory.mktemp("stack") / "data", "--exit-when-done")


def test_up_runs_the_standard_suite_and_prints_the_comparison(first_up: UpRun) -> None:
    assert first_up.returncode == 0, first_up.stdout + first_up.stderr
    out = first_up.stdout
    assert f"Submitted the standard suite: {len(standard_suite('cpu'))} jobs" in out
    assert first_up.seconds < SUITE_BUDGET_S, f"up took {first_up.seconds:.0f} s"
    for heading in (
        "samples_per_s median",
        "95% CI",
        "ratio",
        "efficiency",
        "entered deep learning",
        "Milestones",
    ):
        assert heading in out
    assert "AlexNet wins the ImageNet challenge" in out
    jobs = jobs_in(first_up.data_dir)
    assert [job.status for job in jobs] == ["succeeded"] * 6, [job.error for job in jobs]
    assert sorted(job.kind for job in jobs) == sorted(spec.kind for _, spec in standard_suite("cpu"))


def test_the_first_start_writes_a_private_token(first_up: UpRun) -> None:
    token_file = first_up.data_dir / "api-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert token.startswith("bpb_") and len(token) > 40
    assert token in first_up.stdout


def test_every_training_job_has_a_result_with_throughput(first_up: UpRun) -> None:
    engine = make_engine(f"sqlite:///{first_up.data_dir / 'bpbench.db'}")
    try:
        with Session(engine) as session:
            results = session.scalars(select(Result)).all()
    finally:
        engine.dispose()
    assert len(results) == 6
    train = [r for r in results if r.kind == "train"]
    assert len(train) == 3 and all(r.samples_per_s and r.samples_per_s > 0 for r in train)
    gradcheck = next(r for r in results if r.kind == "gradcheck")
    assert gradcheck.metrics["passed"] is True


def test_a_second_up_keeps_every_job(first_up: UpRun) -> None:
    before = {job.id: job.status for job in jobs_in(first_up.data_dir)}
    again = up(first_up.data_dir, "--exit-when-done", timeout_s=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Submitted" not in again.stdout  # not a fresh directory: no new suite
    assert "6 job(s)" in again.stdout
    assert {job.id: job.status for job in jobs_in(first_up.data_dir)} == before


def test_a_job_cut_off_by_a_stop_runs_again_after_a_restart(first_up: UpRun) -> None:
    spec = tiny_spec()
    engine = make_engine(f"sqlite:///{first_up.data_dir / 'bpbench.db'}")
    try:
        with Session(engine) as session:
            # What an `up` killed in the middle of a job leaves behind.
            job = Job(
                spec=spec.engine_dict(),
                spec_hash=spec.spec_hash(),
                kind="train",
                device="cpu",
                device_class="cpu",
                queue="cpu",
                status="running",
                attempts=1,
            )
            session.add(job)
            session.commit()
            job_id = job.id
    finally:
        engine.dispose()
    again = up(first_up.data_dir, "--exit-when-done", timeout_s=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 job(s) requeued" in again.stdout
    job = next(job for job in jobs_in(first_up.data_dir) if job.id == job_id)
    assert (job.status, job.attempts) == ("succeeded", 2)


def test_ctrl_c_stops_every_process_it_started(first_up: UpRun) -> None:
    argv = [*bpbench_command(), "up", "--data-dir", str(first_up.data_dir), "--port", str(free_port())]
    process = subprocess.Popen(
        argv, env=stack_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    read_until_serving(process, 90)
    pids = json.loads((first_up.data_dir / "stack.pids").read_text())
    children = list(pids["children"].values())
    assert pids["up"] == process.pid
    assert {"broker", "api", "worker-cpu"} <= set(pids["children"])
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (first_up.data_dir / "stack.pids").exists()
