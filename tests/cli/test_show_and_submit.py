"""`bpbench show` draws a finished job as `bpbench run` does (units, no raw floats), `submit --wait` shows
step and loss and never a failed job at 100%, and a submission no live worker can take says so. Real
`bpbench` processes, the real API and a real CPU worker."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support import apiserver
from tests.support.apiserver import ApiServer
from tests.support.cli import TINY, as_json, bpbench, user_env
from tests.support.jobs import tiny_spec
from tests.support.workers import WorkerProcess

api = apiserver.api


@pytest.fixture
def cli_env(api: ApiServer, tmp_path: Path) -> dict[str, str]:
    return user_env(api.url, tmp_path / "data", api.token)


def test_show_of_a_finished_job_prints_runs_table_with_units(
    cli_env: dict[str, str], api: ApiServer, cpu_worker: WorkerProcess
) -> None:
    job = as_json(bpbench(cli_env, "submit", *TINY, "--wait", "--json"))
    assert job["status"] == "succeeded", job["error"]
    with api.client() as client:
        metrics = client.get(f"/api/v1/jobs/{job['id']}/report").json()["result"]["metrics"]
    shown = bpbench(cli_env, "show", job["id"][:8])
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    for row in ("samples/s", "step time (median)", "FLOPs/step", "achieved FLOP/s", "final loss"):
        assert row in text, row
    assert f"bpbench train on {metrics.get('device', 'cpu')}" in text or "bpbench train on" in text
    assert f"({metrics['parameters']} parameters)" in text
    assert re.search(r"achieved FLOP/s\s*│\s*[0-9.]+ [kMGT]?FLOP/s", text), text
    assert re.search(r"step time \(median\)\s*│\s*[0-9.]+ (µs|ms|s)\b", text), text
    # The raw numbers of the API document are not what a person reads.
    assert not re.search(rf"(?<![\d.]){metrics['flops_per_step']}(?![\d.])", text)
    assert f"{100:.0f}%, evaluating" in text or "100%" in text
    assert re.search(r"duration\s*│\s*[0-9.]+ (ms|s)\b", text), text


def test_submit_wait_shows_step_and_loss_and_a_failed_job_is_not_at_100(
    cli_env: dict[str, str], cpu_worker: WorkerProcess
) -> None:
    shown = bpbench(cli_env, "submit", *TINY, "--wait")
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"100% succeeded \S+ done", shown.stdout), shown.stdout
    # Past its time limit a job is stopped and failed part-way.
    too_long = Path(cli_env["BPBENCH_DATA_DIR"]) / "too-long.json"
    too_long.write_text(tiny_spec(steps=1_000_000, time_limit_s=2).model_dump_json())
    failed = bpbench(cli_env, "submit", str(too_long), "--wait")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    flat = " ".join(failed.stdout.split())
    # Where it stopped, as `run` shows it: the step and the loss, then the error.
    assert re.search(r"failed at step \d+/1000000, loss \d+\.\d{4}: time limit of 2 s exceeded", flat), flat
    bar_lines = [line for line in failed.stdout.splitlines() if "failed" in line and "%" in line]
    assert bar_lines, failed.stdout
    assert all("100%" not in line for line in bar_lines), bar_lines


def test_submit_warns_when_no_live_worker_serves_the_queue(cli_env: dict[str, str]) -> None:
    done = bpbench(cli_env, "submit", *TINY, "--device", "gpu", "--json")
    assert done.returncode == 0, done.stderr
    job: dict[str, Any] = as_json(done)
    warning = " ".join(done.stderr.split())
    assert warning == (
        f"warning: no live worker serves queue 'gpu' (a gpu device): job {job['id'][:8]} waits until one "
        "starts (`bpbench worker --device gpu`; see `bpbench devices`)"
    )
    assert as_json(bpbench(cli_env, "cancel", job["id"], "--json"))["status"] == "cancelled"


def test_submit_says_nothing_when_a_live_worker_serves_the_queue(
    cli_env: dict[str, str], cpu_worker: WorkerProcess
) -> None:
    done = bpbench(cli_env, "submit", *TINY, "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
