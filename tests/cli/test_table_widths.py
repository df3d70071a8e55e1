"""The client tables fit 80 and 120 columns without breaking a word: real `bpbench` processes with
COLUMNS set, against the real API and worker. What a cell says is found whole (ids, statuses, names), and
the comparison and device list show what tells two devices apart: the device id and the BLAS threads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len

from tests.support import apiserver
from tests.support.apiserver import ApiServer
from tests.support.cli import TINY, as_json, bpbench, user_env
from tests.support.workers import WorkerProcess

api = apiserver.api

WIDTHS = [80, 120]


@pytest.fixture(scope="module")
def finished_job(api: ApiServer, cpu_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A train job the real worker ran, so that jobs, devices and the comparison have rows."""
    env = user_env(api.url, tmp_path_factory.mktemp("cli"), api.token)
    job = as_json(bpbench(env, "submit", *TINY, "--wait", "--json"))
    assert job["status"] == "succeeded", job["error"]
    return job


def table_at(api: ApiServer, tmp_path: Path, width: int, *args: str) -> str:
    env = user_env(api.url, tmp_path / "data", api.token, columns=width)
    done = bpbench(env, *args)
    assert done.returncode == 0, done.stderr
    too_wide = [line for line in done.stdout.splitlines() if cell_len(line) > width]
    assert too_wide == [], f"lines wider than {width}:\n" + "\n".join(too_wide)
    return done.stdout


def whole(word: str, text: str) -> bool:
    """`word` appears in `text` unbroken, not as part of a longer word."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


@pytest.mark.parametrize("width", WIDTHS)
def test_jobs_fit_the_terminal_with_short_ids_and_whole_words(
    api: ApiServer, finished_job: dict[str, Any], tmp_path: Path, width: int
) -> None:
    text = table_at(api, tmp_path, width, "jobs", "--limit", "5")
    env = user_env(api.url, tmp_path / "json", api.token)
    for job in as_json(bpbench(env, "jobs", "--limit", "5", "--json"))["items"]:
        assert whole(job["id"][:8], text), job["id"]
        assert whole(job["status"], text), job["status"]
    assert finished_job["id"] not in text  # the short id only; `show` and `cancel` take it


@pytest.mark.parametrize("width", WIDTHS)
def test_devices_fit_the_terminal_and_show_the_blas_threads(
    api: ApiServer, cpu_worker: WorkerProcess, finished_job: dict[str, Any], tmp_path: Path, width: int
) -> None:
    text = table_at(api, tmp_path, width, "devices")
    assert whole(cpu_worker.device_id, text)
    env = user_env(api.url, tmp_path / "json", api.token)
    device = next(
        d for d in as_json(bpbench(env, "devices", "--json"))["items"] if d["id"] == cpu_worker.device_id
    )
    threads = {p["num_threads"] for p in device["fingerprint"]["blas"] if p.get("user_api") == "blas"}
    assert len(threads) == 1
    row = next(line for line in text.splitlines() if cpu_worker.device_id in line)
    assert whole(str(threads.pop()), row)
    assert "BLAS" in text and "threads" in text


@pytest.mark.parametrize("width", WIDTHS)
def test_the_comparison_fits_the_terminal_with_the_device_id_and_blas_threads(
    api: ApiServer, cpu_worker: WorkerProcess, finished_job: dict[str, Any], tmp_path: Path, width: int
) -> None:
    text = table_at(api, tmp_path, width, "compare", "--spec-hash", finished_job["spec_hash"])
    row = next(line for line in text.splitlines() if whole(cpu_worker.device_id, line))
    env = user_env(api.url, tmp_path / "json", api.token)
    device = next(
        d for d in as_json(bpbench(env, "devices", "--json"))["items"] if d["id"] == cpu_worker.device_id
    )
    threads = next(p["num_threads"] for p in device["fingerprint"]["blas"] if p.get("user_api") == "blas")
    assert whole(str(threads), row), row
    compared = as_json(bpbench(env, "compare", "--spec-hash", finished_job["spec_hash"], "--json"))
    mine = next(r for r in compared["rows"] if r["device_id"] == cpu_worker.device_id)
    assert mine["runs"] >= 1


def test_a_narrow_terminal_names_the_columns_it_left_out(
    api: ApiServer, finished_job: dict[str, Any], tmp_path: Path
) -> None:
    text = table_at(api, tmp_path, 80, "compare", "--spec-hash", finished_job["spec_hash"])
    assert "not shown at 80 columns:" in " ".join(text.split())
    wide = table_at(api, tmp_path, 250, "compare", "--spec-hash", finished_job["spec_hash"])
    assert "not shown at" not in wide and "entered deep learning" in " ".join(wide.split())
