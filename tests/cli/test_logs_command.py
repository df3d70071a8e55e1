"""`bpbench logs <id>`: the lines a real worker stored for a job, by short id, once or followed to the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import apiserver
from tests.support.apiserver import ApiServer
from tests.support.cli import bpbench, one_line_error, user_env
from tests.support.jobs import tiny_spec, wait_until
from tests.support.workers import WorkerProcess

api = apiserver.api


@pytest.fixture
def cli_env(api: ApiServer, tmp_path: Path) -> dict[str, str]:
    """The environment `bpbench up` leaves a user: the API's address, its token in DATA_DIR/api-token."""
    return user_env(api.url, tmp_path / "data", api.token)


def submitted(api: ApiServer, **spec: Any) -> dict[str, Any]:
    with api.client() as client:
        response = client.post("/api/v1/jobs", json=tiny_spec(**spec).model_dump(mode="json"))
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def test_logs_by_short_id_prints_each_line_with_its_time_level_and_attempt(
    cli_env: dict[str, str], api: ApiServer, cpu_worker: WorkerProcess
) -> None:
    job = submitted(api)
    with api.client() as client:
        wait_until(
            lambda: client.get(f"/api/v1/jobs/{job['id']}/logs").json()["complete"], 90, "the job's whole log"
        )
        stored = client.get(f"/api/v1/jobs/{job['id']}/logs").json()["items"]
    shown = bpbench(cli_env, "logs", job["id"][:8])
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == len(stored) >= 2
    first = stored[0]
    expected = f"{first['time'].replace('T', ' ')[:19]} INFO    #1 {first['message']}"
    assert lines[0] == expected
    assert lines[0].endswith(f"job {job['id']}: attempt 1 started on {cpu_worker.name}")
    last = f"{stored[-1]['time'].replace('T', ' ')[:19]} INFO    #1 job {job['id']}: succeeded"
    assert lines[-1].startswith(last)
    assert shown.stderr.strip() == f"job {job['id']}: succeeded, {len(stored)} line(s)"


def test_logs_follow_prints_the_lines_of_a_running_job_until_it_ends(
    cli_env: dict[str, str], api: ApiServer, cpu_worker: WorkerProcess
) -> None:
    job = submitted(api, steps=3000)
    followed = bpbench(cli_env, "logs", job["id"], "--follow", "--json", timeout_s=180)
    assert followed.returncode == 0, followed.stderr
    lines = [json.loads(text) for text in followed.stdout.splitlines()]
    with api.client() as client:
        stored = client.get(f"/api/v1/jobs/{job['id']}/logs").json()
    assert stored["complete"] and stored["status"] == "succeeded"
    assert lines == stored["items"]  # every line once, in order, the last ones included
    assert lines[-1]["message"].startswith(f"job {job['id']}: succeeded")


def test_logs_of_an_unknown_job_is_one_line(cli_env: dict[str, str], api: ApiServer) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    line = one_line_error(bpbench(cli_env, "logs", unknown))
    assert f"HTTP 404 from GET /api/v1/jobs/{unknown}/logs" in line
    assert f"no job with id '{unknown}'" in line
