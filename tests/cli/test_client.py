"""The client commands (`bpbench submit/jobs/show/cancel/compare/timeline/devices`) as a user runs them:
real `bpbench` processes talking HTTP to a real API with a real worker."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.processes import bpbench_command
from tests.support import apiserver
from tests.support.apiserver import ApiServer, free_port
from tests.support.workers import WorkerProcess

TINY = [
    "--kind", "train", "--model", "mlp", "--layers", "784,16,10", "--dataset", "synthetic",
    "--synthetic-samples", "256", "--steps", "20", "--batch-size", "32",
    "--warmup", "2", "--window", "3", "--min-repeats", "3", "--max-repeats", "5",
]  # fmt: skip

api = apiserver.api  # the shared API server fixture


@pytest.fixture
def cli_env(api: ApiServer, tmp_path: Path) -> dict[str, str]:
    """A user's environment: the API's address and the token in DATA_DIR/api-token, as `up` leaves it."""
    (tmp_path / "api-token").write_text(api.token + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPBENCH_")}
    return {**env, "BPBENCH_API_URL": api.url, "BPBENCH_DATA_DIR": str(tmp_path), "COLUMNS": "200"}


def bpbench(env: dict[str, str], *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `bpbench ARGS` and capture its output."""
    return subprocess.run(
        [*bpbench_command(), *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_submit_wait_runs_the_job_and_prints_its_result(
    cli_env: dict[str, str], cpu_worker: WorkerProcess
) -> None:
    job = as_json(bpbench(cli_env, "submit", *TINY, "--wait", "--json"))
    assert job["status"] == "succeeded", job["error"]
    assert job["device_id"] == cpu_worker.device_id
    assert job["result"]["samples_per_s"] > 0
    assert job["spec"]["model"]["layers"] == [784, 16, 10]

    compared = as_json(bpbench(cli_env, "compare", "--spec-hash", job["spec_hash"], "--json"))
    assert compared["spec_hash"] == job["spec_hash"]
    row = next(r for r in compared["rows"] if r["device_id"] == cpu_worker.device_id)
    assert row["runs"] >= 1
    table = bpbench(cli_env, "compare", "--spec-hash", job["spec_hash"])
    assert table.returncode == 0, table.stderr
    assert "samples_per_s median" in table.stdout
    assert row["device_name"] in table.stdout
    if row["timeline"]:
        assert row["timeline"]["platform"] in table.stdout


def test_jobs_show_and_cancel(cli_env: dict[str, str]) -> None:
    # No GPU worker runs in the tests: the job waits in the gpu queue until cancelled.
    job = as_json(bpbench(cli_env, "submit", *TINY, "--device", "gpu", "--json"))
    assert (job["status"], job["queue"]) == ("queued", "gpu")
    assert as_json(bpbench(cli_env, "cancel", job["id"], "--json"))["status"] == "cancelled"
    shown = bpbench(cli_env, "show", job["id"])
    assert shown.returncode == 0, shown.stderr
    assert "cancelled" in shown.stdout and job["id"] in shown.stdout
    listed = as_json(
        bpbench(cli_env, "jobs", "--status", "cancelled", "--device", "gpu", "--limit", "1000", "--json")
    )
    assert job["id"] in [item["id"] for item in listed["items"]]
    assert listed["total"] >= 1


def test_devices_and_timeline(cli_env: dict[str, str], cpu_worker: WorkerProcess) -> None:
    devices = as_json(bpbench(cli_env, "devices", "--json"))["items"]
    mine = next(d for d in devices if d["id"] == cpu_worker.device_id)
    assert mine["live"] is True
    assert mine["queue"] == f"device.{cpu_worker.device_id}"
    timeline = as_json(bpbench(cli_env, "timeline", "--json"))
    assert [v["vendor"] for v in timeline["vendors"]] == [
        "NVIDIA", "AMD", "Intel", "IBM", "ARM", "Google", "FPGA vendors",
    ]  # fmt: skip
    assert [m["year"] for m in timeline["milestones"]] == [1986, 2006, 2007, 2009, 2012]
    table = bpbench(cli_env, "timeline")
    assert "Cell/Broadband Engine" in table.stdout and "AlexNet" in table.stdout


def _one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_an_unreachable_api_is_one_line(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "BPBENCH_API_URL": f"http://127.0.0.1:{free_port()}"}
    line = _one_line_error(bpbench(env, "jobs"), 1)
    assert "cannot reach the bpbench API" in line and env["BPBENCH_API_URL"] in line


def test_http_errors_are_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    refused = _one_line_error(bpbench(cli_env, "submit", *TINY, "--target", "nosuchdevice"), 1)
    assert "HTTP 422" in refused and "target" in refused and "nosuchdevice" in refused
    missing = _one_line_error(bpbench(cli_env, "show", "no-such-job"), 1)
    assert "HTTP 404" in missing
    no_token = {**cli_env, "BPBENCH_DATA_DIR": str(tmp_path / "empty")}
    unauthorized = _one_line_error(bpbench(no_token, "submit", *TINY), 1)
    assert "HTTP 401" in unauthorized and "bearer token" in unauthorized


def test_a_bad_option_is_refused_before_any_request(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "BPBENCH_API_URL": f"http://127.0.0.1:{free_port()}"}
    line = _one_line_error(bpbench(env, "submit", "--steps", "0"), 2)
    assert "--steps" in line and "0" in line
