"""`bpbench up` supervises its children: a killed worker or broker is started again and the stack serves on.

Real `bpbench up --suite none` processes on data directories of their own; children killed with SIGKILL.
The restart policy itself is checked on its own numbers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from cli.supervision import RestartPolicy
from harness.processes import bpbench_command
from tests.support.apiserver import PROJECT_ROOT, free_port
from tests.support.jobs import wait_until


def test_a_child_that_ran_long_enough_is_restarted_at_once_however_often() -> None:
    policy = RestartPolicy(stable_after_s=10.0)

    delays = [policy.record_exit(uptime_s=60.0) for _ in range(20)]

    assert delays == [0.0] * 20
    assert (policy.restarts, policy.fast_failures) == (20, 0)


def test_fast_failures_back_off_doubling_and_give_up_at_the_fifth() -> None:
    policy = RestartPolicy(stable_after_s=10.0, first_backoff_s=0.5, max_fast_failures=5)

    delays = [policy.record_exit(uptime_s=1.0) for _ in range(5)]

    assert delays == [0.5, 1.0, 2.0, 4.0, None]


def test_a_stable_run_between_fast_failures_starts_the_count_again() -> None:
    policy = RestartPolicy(stable_after_s=10.0, first_backoff_s=0.5, max_fast_failures=3)

    delays = [
        policy.record_exit(1.0),
        policy.record_exit(1.0),
        policy.record_exit(30.0),
        policy.record_exit(1.0),
    ]

    assert delays == [0.5, 1.0, 0.0, 0.5]


def test_the_backoff_is_capped() -> None:
    policy = RestartPolicy(first_backoff_s=1.0, max_backoff_s=3.0, max_fast_failures=10)

    assert [policy.record_exit(0.0) for _ in range(4)] == [1.0, 2.0, 3.0, 3.0]


@dataclass
class ServingUp:
    """A `bpbench up --suite none` serving on a port of its own, with its output collected."""

    data_dir: Path
    port: int
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def pids(self) -> dict[str, int]:
        return dict(json.loads((self.data_dir / "stack.pids").read_text())["children"])

    def client(self) -> httpx.Client:
        token = (self.data_dir / "api-token").read_text().strip()
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def output(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[ServingUp]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPBENCH_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env["COLUMNS"] = "200"
    port = free_port()
    data_dir = tmp_path / "data"
    argv = [*bpbench_command(), "up", "--data-dir", str(data_dir), "--port", str(port), "--suite", "none"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    up = ServingUp(data_dir, port, process)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            up.lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_until(lambda: "Serving" in up.output() or process.poll() is not None, 120, "up to serve")
        assert "Serving" in up.output(), up.output()
        yield up
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _submit_and_wait(client: httpx.Client) -> dict[str, object]:
    spec = {"kind": "train", "dataset": "spiral", "model": {"name": "mlp", "layers": [2, 4, 3]}, "steps": 5}
    answer = client.post("/api/v1/jobs", json={**spec, "synthetic_samples": 32, "batch_size": 4})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]

    def final() -> dict[str, object] | None:
        job: dict[str, object] = client.get(f"/api/v1/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(final, 120, "the job to finish", interval_s=0.5)


def test_a_killed_worker_is_restarted_and_runs_the_next_job(serving: ServingUp) -> None:
    old = serving.pids()["worker-cpu"]

    os.killpg(old, signal.SIGKILL)
    killed_at = time.monotonic()
    new = wait_until(lambda: (pid := serving.pids()["worker-cpu"]) != old and pid, 30, "a new worker")
    with serving.client() as client:
        done = _submit_and_wait(client)
    served_after_s = time.monotonic() - killed_at

    assert _alive(new) and serving.process.poll() is None
    # At once after a run of 10 s; after the first backoff when the kill came sooner after its start.
    assert re.search(
        r"worker-cpu exited with status -9; restarting it( in 0.5 s)? \(restart 1\)", serving.output()
    )
    assert done["status"] == "succeeded", done
    print(f"\nup: worker SIGKILL -> restarted, next job succeeded {served_after_s:.1f} s after the kill")


def test_a_killed_broker_is_restarted_and_the_api_and_worker_serve_on(serving: ServingUp) -> None:
    old = serving.pids()["broker"]

    os.kill(old, signal.SIGKILL)
    killed_at = time.monotonic()
    new = wait_until(lambda: (pid := serving.pids()["broker"]) != old and pid, 30, "a new broker")
    with serving.client() as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 60, "the API to be ready again")
        done = _submit_and_wait(client)
    served_after_s = time.monotonic() - killed_at

    assert _alive(new) and serving.process.poll() is None
    assert re.search(
        r"broker exited with status -9; restarting it( in 0.5 s)? \(restart 1\)", serving.output()
    )
    assert done["status"] == "succeeded", done
    print(f"\nup: broker SIGKILL -> restarted, next job succeeded {served_after_s:.1f} s after the kill")
