"""`bpbench up` against a held or damaged data directory: one line saying what to do, and the right exit.

Real `bpbench up` processes (embedded broker, SQLite) on data directories of their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from cli.stack import usable_gpus
from harness.processes import bpbench_command
from services.core.db import make_engine
from services.jobs.models import Job
from tests.support.apiserver import PROJECT_ROOT, free_port
from tests.support.cli import read_until_serving
from tests.support.jobs import tiny_spec


def user_env() -> dict[str, str]:
    """A user's environment: no BPBENCH_ settings, so `up` uses its own defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPBENCH_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env["COLUMNS"] = "80"  # narrower than every message: a wrapped line would show here
    return env


def up_argv(data_dir: Path, *args: str) -> list[str]:
    return [*bpbench_command(), "up", "--data-dir", str(data_dir), "--port", str(free_port()), *args]


def run_up(data_dir: Path, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        up_argv(data_dir, "--suite", "none", "--exit-when-done", *args),
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def serving_up(data_dir: Path) -> subprocess.Popen[str]:
    """A `bpbench up --suite none` that has printed "Serving"."""
    process = subprocess.Popen(
        up_argv(data_dir, "--suite", "none"),
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    read_until_serving(process)
    return process


def test_a_second_up_on_a_held_data_directory_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = serving_up(data_dir)
    try:
        second = run_up(data_dir)

        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stderr.splitlines() == [
            f"error: another `bpbench up` (pid {first.pid}) is using {data_dir}; "
            "stop it first, or pass another --data-dir"
        ]
        assert json.loads((data_dir / "stack.pids").read_text())["up"] == first.pid
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=60) == 0


def test_a_damaged_sqlite_file_gives_one_line_with_what_to_do(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = data_dir / "bpbench.db"
    database.write_bytes(b"this is not a database " * 200)

    done = run_up(data_dir)

    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"error: the database {database} cannot be read (file is not a database); move it aside "
        f"(mv {database} {database}.damaged) to start with an empty one, or restore a backup there, "
        "and run `bpbench up` again"
    ]
    assert not (data_dir / "stack.pids").exists()


def test_a_damaged_append_only_file_gives_one_line_with_what_to_do(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    aof = data_dir / "broker.aof"
    aof.write_bytes(b"garbage\x00\x01 not an append-only file\n*3\r\n$3\r\nSET")

    done = run_up(data_dir)

    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"error: the broker's append-only file {aof} is damaged; move it aside (mv {aof} {aof}.damaged) "
        "and run `bpbench up` again: the jobs are kept in the database and queued ones are published again"
    ]
    assert "redis-check-aof" not in done.stdout + done.stderr


@pytest.mark.slow
def test_an_up_killed_with_sigkill_takes_its_children_along_and_a_new_up_serves_the_same_directory(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    first = serving_up(data_dir)
    children = json.loads((data_dir / "stack.pids").read_text())["children"]

    first.kill()
    first.wait(timeout=30)
    killed_at = time.monotonic()
    for pid in children.values():
        # Each child gets SIGTERM when `up` dies (PR_SET_PDEATHSIG); a worker's warm shutdown takes a moment.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        assert not _alive(pid), f"child {pid} outlived the killed up"
    second = serving_up(data_dir)
    try:
        serving_after_s = time.monotonic() - killed_at
        assert json.loads((data_dir / "stack.pids").read_text())["up"] == second.pid
    finally:
        second.send_signal(signal.SIGINT)
        assert second.wait(timeout=60) == 0
    print(f"\nup SIGKILL: children gone, a new up serving the same directory {serving_after_s:.1f} s after")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of nobody we wait for still answers kill(0); its state says it is gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_exit_when_done_fails_a_gpu_job_on_a_host_without_a_gpu_instead_of_waiting_forever(
    tmp_path: Path,
) -> None:
    if usable_gpus():
        pytest.skip("this host has a GPU worker: a GPU job is served here")
    data_dir = tmp_path / "data"
    assert run_up(data_dir).returncode == 0  # a migrated, empty data directory
    spec = tiny_spec(device="gpu")
    engine = make_engine(f"sqlite:///{data_dir / 'bpbench.db'}")
    try:
        with Session(engine) as session:
            job = Job(
                spec=spec.engine_dict(),
                spec_hash=spec.spec_hash(),
                kind="train",
                device="gpu",
                device_class="gpu",
                queue="gpu",
                status="queued",
            )
            session.add(job)
            session.commit()
            job_id = job.id
    finally:
        engine.dispose()

    done = run_up(data_dir, timeout_s=120)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 queued job(s) failed: no worker of this stack serves their queue (served: cpu, device." in (
        done.stdout
    )
    engine = make_engine(f"sqlite:///{data_dir / 'bpbench.db'}")
    try:
        with Session(engine) as session:
            after = session.get(Job, job_id)
            assert after is not None
            assert after.status == "failed"
            assert after.error is not None and after.error.startswith(
                "no worker can serve queue 'gpu': this `bpbench up` serves only cpu, device."
            )
    finally:
        engine.dispose()
