"""`bpbench results`: the recorded results with the API's filters, as a table, JSON or CSV. Real `bpbench`
processes, the real API and a real CPU worker."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from tests.support import apiserver
from tests.support.apiserver import ApiServer
from tests.support.cli import TINY, as_json, bpbench, user_env
from tests.support.workers import WorkerProcess

api = apiserver.api


@pytest.fixture
def cli_env(api: ApiServer, tmp_path: Path) -> dict[str, str]:
    return user_env(api.url, tmp_path / "data", api.token)


def test_results_export_as_json_and_csv_with_filters(
    cli_env: dict[str, str], cpu_worker: WorkerProcess
) -> None:
    job: dict[str, Any] = as_json(bpbench(cli_env, "submit", *TINY, "--wait", "--json"))
    assert job["status"] == "succeeded", job["error"]
    filters = ["--spec-hash", job["spec_hash"], "--device", cpu_worker.device_id]
    page = as_json(bpbench(cli_env, "results", *filters, "--json"))
    assert job["id"] in [r["job_id"] for r in page["items"]]
    assert {(r["spec_hash"], r["device_id"]) for r in page["items"]} == {
        (job["spec_hash"], cpu_worker.device_id)
    }
    exported = bpbench(cli_env, "results", *filters, "--csv")
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [r["job_id"] for r in rows] == [r["job_id"] for r in page["items"]]
    mine = next(r for r in rows if r["job_id"] == job["id"])
    assert float(mine["samples_per_s"]) == pytest.approx(job["result"]["samples_per_s"])
    table = bpbench(cli_env, "results", *filters)
    assert table.returncode == 0, table.stderr
    assert job["id"][:8] in table.stdout and cpu_worker.device_id in table.stdout
    none = as_json(bpbench(cli_env, "results", "--spec-hash", "0000000000000000", "--json"))
    assert none["items"] == []


def test_results_refuses_csv_and_json_together(cli_env: dict[str, str]) -> None:
    done = bpbench(cli_env, "results", "--csv", "--json")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: give --csv or --json, not both"
