"""`bpbench show` and `cancel` with short ids, what `cancel` says, and what a new user meets first (401,
403, `--version`): real `bpbench` processes against the real API and, where a job runs, a real worker."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session

from services.auth.service import create_token
from tests.support import apiserver
from tests.support.apiserver import ApiServer
from tests.support.cli import TINY, as_json, bpbench, one_line_error, user_env
from tests.support.jobs import wait_until
from tests.support.workers import WorkerProcess

api = apiserver.api  # the shared API server fixture


@pytest.fixture
def cli_env(api: ApiServer, tmp_path: Path) -> dict[str, str]:
    """The environment `bpbench up` leaves a user: the API's address, its token in DATA_DIR/api-token."""
    return user_env(api.url, tmp_path / "data", api.token)


def queued_gpu_job(api: ApiServer) -> dict[str, Any]:
    """A job that stays queued: no GPU worker runs in the tests."""
    with api.client() as client:
        response = client.post("/api/v1/jobs", json={"kind": "gemm", "device": "gpu", "gemm_sizes": [64]})
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def test_show_and_cancel_accept_the_start_of_a_job_id(cli_env: dict[str, str], api: ApiServer) -> None:
    job = queued_gpu_job(api)
    short = job["id"][:8]
    shown = as_json(bpbench(cli_env, "show", short, "--json"))
    assert (shown["id"], shown["status"]) == (job["id"], "queued")
    table = bpbench(cli_env, "show", short.upper())
    assert table.returncode == 0, table.stderr
    assert job["id"] in table.stdout
    cancelled = bpbench(cli_env, "cancel", short)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"job {job['id']} cancelled (it had not started)"


def test_a_prefix_of_several_jobs_lists_them(cli_env: dict[str, str], api: ApiServer) -> None:
    # 17 ids: two of them share their first hex digit (16 values), whatever the random ids are.
    by_first_digit: dict[str, list[str]] = defaultdict(list)
    for _ in range(17):
        job = queued_gpu_job(api)
        by_first_digit[job["id"][0]].append(job["id"])
    digit, ids = max(by_first_digit.items(), key=lambda item: len(item[1]))
    with api.client() as client:
        total = client.get("/api/v1/jobs", params={"id_prefix": digit, "limit": 1}).json()["total"]
    line = one_line_error(bpbench(cli_env, "show", digit))
    assert f"'{digit}' is the start of {total} job ids: " in line
    assert line.endswith("; give more characters")
    listed = re.findall(r"[0-9a-f]{8}-[0-9a-f-]{27}", line)
    assert len(listed) == min(total, 10) and all(i.startswith(digit) for i in listed)
    if total <= 10:
        assert set(ids) <= set(listed)
    # Cancelled so that no later test finds them queued (through the API: `bpbench cancel` has its own tests).
    with api.client() as client:
        for job_id in (i for group in by_first_digit.values() for i in group):
            assert client.post(f"/api/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"


def test_an_unknown_prefix_says_so(cli_env: dict[str, str]) -> None:
    line = one_line_error(bpbench(cli_env, "show", "ffffffff-ffff"))
    assert line == "error: no job id starts with 'ffffffff-ffff' (see `bpbench jobs`)"
    line = one_line_error(bpbench(cli_env, "cancel", "not-an-id"))
    assert "HTTP 404 from GET /api/v1/jobs/not-an-id" in line


def test_cancel_of_a_finished_job_says_it_had_finished(cli_env: dict[str, str], api: ApiServer) -> None:
    job = queued_gpu_job(api)
    assert as_json(bpbench(cli_env, "cancel", job["id"], "--json"))["status"] == "cancelled"
    again = bpbench(cli_env, "cancel", job["id"][:13])
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"job {job['id']} had already finished (cancelled); nothing to cancel"


def test_cancel_of_a_running_job_says_it_stops_between_steps(
    cli_env: dict[str, str], api: ApiServer, cpu_worker: WorkerProcess
) -> None:
    long_job = [*TINY, "--steps", "200000", "--max-repeats", "100000"]
    job = as_json(bpbench(cli_env, "submit", *long_job, "--json"))

    def running() -> dict[str, Any] | None:
        doc = as_json(bpbench(cli_env, "show", job["id"], "--json"))
        assert doc["status"] in ("queued", "running"), doc
        return doc if doc["status"] == "running" else None

    wait_until(running, 60, f"job {job['id']} to run", interval_s=0.3)
    said = bpbench(cli_env, "cancel", job["id"][:8])
    assert said.returncode == 0, said.stderr
    assert said.stdout.strip() == (
        f"job {job['id']}: cancel requested; it stops between two steps (`bpbench show` follows it)"
    )

    def final() -> dict[str, Any] | None:
        doc = as_json(bpbench(cli_env, "show", job["id"], "--json"))
        return doc if doc["status"] not in ("queued", "running") else None

    assert wait_until(final, 60, f"job {job['id']} to stop")["status"] == "cancelled"


def test_the_id_prefix_filter_is_refused_when_it_is_not_hex(api: ApiServer) -> None:
    with api.client() as client:
        response = client.get("/api/v1/jobs", params={"id_prefix": "abc%"})
    assert response.status_code == 422
    assert response.json()["message"] == "id_prefix: got 'abc%'; accepted: a string matching ^[0-9a-f-]+$"


def test_a_401_without_a_token_says_where_the_token_is_looked_for(api: ApiServer, tmp_path: Path) -> None:
    data_dir = tmp_path / "empty"
    line = one_line_error(bpbench(user_env(api.url, data_dir, None), "jobs"))
    assert "HTTP 401" in line
    assert f"no token found: set BPBENCH_API_TOKEN, or put the token in {data_dir / 'api-token'}" in line
    assert "`bpbench up` writes it there and prints it" in line


def test_a_401_with_a_wrong_token_names_the_file_it_came_from(api: ApiServer, tmp_path: Path) -> None:
    data_dir = tmp_path / "stale"
    line = one_line_error(bpbench(user_env(api.url, data_dir, "bpb_not-a-token"), "jobs"))
    assert "HTTP 401" in line and "the bearer token is not valid (unknown or revoked)" in line
    assert f"the token sent came from {data_dir / 'api-token'}" in line


def test_the_cli_finds_the_api_of_a_running_up_in_its_data_directory(api: ApiServer, tmp_path: Path) -> None:
    env = user_env(None, tmp_path / "data", api.token)
    (tmp_path / "data" / "api-url").write_text(api.url + "\n")
    assert "total" in as_json(bpbench(env, "jobs", "--json"))
    # BPBENCH_API_URL, when set, wins over the file.
    elsewhere = "http://127.0.0.1:9"
    line = one_line_error(bpbench({**env, "BPBENCH_API_URL": elsewhere}, "jobs"))
    assert f"cannot reach the bpbench API at {elsewhere}" in line


def test_a_403_names_the_scopes_in_words(api: ApiServer, db_session: Session, tmp_path: Path) -> None:
    token, _ = create_token(db_session, name="read-only", scopes=["read"])
    db_session.commit()
    line = one_line_error(bpbench(user_env(api.url, tmp_path / "data", token), "submit", *TINY))
    assert line.endswith(
        "HTTP 403 from POST /api/v1/jobs: token 'read-only' has the scopes read; this endpoint needs 'submit'"
    )
    assert "(" not in line.split(": ", 2)[-1]


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    done = bpbench(user_env(None, tmp_path, None), "--version")
    assert done.returncode == 0, done.stderr
    from importlib.metadata import version

    assert done.stdout == f"bpbench {version('bpbench')}\n"


def test_token_revoke_help_says_when_a_revocation_takes_effect(tmp_path: Path) -> None:
    done = bpbench(user_env(None, tmp_path, None), "token", "revoke", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "API servers refuse it within BPBENCH_TOKEN_CACHE_TTL_S" in text
    assert "stops working at once" not in text


def test_the_api_answers_head_on_its_health_check_for_probes(api: ApiServer) -> None:
    assert httpx.head(f"{api.url}/healthz", timeout=10).status_code == 200
