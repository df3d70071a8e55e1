"""`bpbench schedule`, `bpbench mark` and `bpbench alerts` as a user runs them: real `bpbench` processes
talking HTTP to a real API on both databases."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session

from harness.processes import bpbench_command
from services.alerts.models import AlertDelivery
from services.alerts.service import Event, raise_alert
from services.core.config import Settings
from services.devices.service import register_device
from services.schedules.models import Schedule
from tests.support import apiserver
from tests.support.apiserver import ApiServer
from tests.support.jobs import tiny_spec
from tests.support.results import record, with_median

api = apiserver.api


@pytest.fixture
def cli_env(api: ApiServer, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "api-token").write_text(api.token + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPBENCH_")}
    return {**env, "BPBENCH_API_URL": api.url, "BPBENCH_DATA_DIR": str(tmp_path), "COLUMNS": "200"}


def bpbench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*bpbench_command(), *args], env=env, capture_output=True, text=True, timeout=120)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(autouse=True)
def _clean(db_session: Session) -> Any:
    yield
    db_session.execute(delete(Schedule))
    db_session.execute(delete(AlertDelivery))
    db_session.commit()


def test_schedule_add_list_remove(cli_env: dict[str, str]) -> None:
    made = as_json(bpbench(cli_env, "schedule", "add", "cpu", "--every", "6h", "--suite", "smoke", "--json"))
    assert (made["suite"], made["target"], made["every_s"], made["enabled"]) == (
        "smoke",
        "cpu",
        21600.0,
        True,
    )
    listed = as_json(bpbench(cli_env, "schedule", "list", "--json"))
    assert [s["id"] for s in listed] == [made["id"]]
    table = bpbench(cli_env, "schedule", "list")
    assert made["id"][:8] in table.stdout and "6h" in table.stdout
    removed = bpbench(cli_env, "schedule", "remove", made["id"])
    assert removed.returncode == 0 and f"schedule {made['id']} removed" in removed.stdout
    assert as_json(bpbench(cli_env, "schedule", "list", "--json")) == []


def test_bad_schedules_get_one_line_errors(cli_env: dict[str, str]) -> None:
    period = bpbench(cli_env, "schedule", "add", "cpu", "--every", "soon")
    assert period.returncode == 2 and "'soon': accepted: a number and m, h or d" in period.stderr
    target = bpbench(cli_env, "schedule", "add", "tpu:0", "--every", "1h")
    assert target.returncode == 1
    assert "target 'tpu:0' is neither a registered device id nor a class" in target.stderr
    assert "Traceback" not in target.stderr
    short = bpbench(cli_env, "schedule", "add", "cpu", "--every", "0.5m")  # under a minute
    assert short.returncode == 1 and "every_hours" in short.stderr


def test_a_mark_is_recorded_on_the_device(
    cli_env: dict[str, str], db_session: Session, api: ApiServer
) -> None:
    device = register_device(db_session, {"cpu_model": f"Marked {uuid.uuid4().hex[:6]}", "host": {}})
    marked = bpbench(cli_env, "mark", device.id, "--note", "BIOS 1.2 installed")
    assert marked.returncode == 0, marked.stderr
    assert f"marked {device.id} at " in marked.stdout and "BIOS 1.2 installed" in marked.stdout
    with api.client() as client:
        marks = client.get(f"/api/v1/devices/{device.id}/marks").json()
        missing = client.post("/api/v1/devices/nosuchdevice/marks", json={"note": "x"})
    assert [m["note"] for m in marks] == ["BIOS 1.2 installed"]
    assert missing.status_code == 404


def test_alerts_lists_deliveries_without_the_webhooks_secret_path(
    cli_env: dict[str, str], db_session: Session
) -> None:
    raise_alert(
        db_session,
        Event("regression:result:1", "regression", "regression on cpu-x: -9.0%", {}),
        ["https://hooks.example.com/services/T000/B000/SECRET"],
    )
    (delivery,) = as_json(bpbench(cli_env, "alerts", "--json"))
    assert delivery["webhook"] == "https://hooks.example.com"
    assert delivery["text"] == "bpbench: regression on cpu-x: -9.0%" and delivery["status"] == "pending"
    table = bpbench(cli_env, "alerts")
    assert "regression on cpu-x" in table.stdout and "SECRET" not in table.stdout


def test_history_shows_the_cut_at_an_upgrade_and_the_shift_after_it(
    cli_env: dict[str, str], db_session: Session, service_settings: Settings
) -> None:
    device = register_device(db_session, {"cpu_model": f"History {uuid.uuid4().hex[:6]}", "host": {}})
    spec = tiny_spec(seed=int(uuid.uuid4().int % 100_000))

    def run(median: float, numpy: str | None = None) -> Any:
        def adjust(document: dict[str, Any]) -> None:
            with_median(median)(document)
            if numpy is not None:
                document["fingerprint"]["numpy_version"] = numpy

        return record(db_session, spec, device.id, adjust)

    for median in (1000.0, 1003.0, 998.0, 1001.0):
        run(median)
    for median in (900.0, 902.0, 899.0, 901.0, 903.0, 898.0, 820.0, 822.0, 819.0, 821.0, 823.0, 818.0):
        run(median, numpy="9.9.9")  # an upgrade, then a real drop within the new stack
    history = as_json(bpbench(cli_env, "history", device.id, "--spec-hash", spec.spec_hash(), "--json"))
    assert len(history["points"]) == 16
    (cut,) = history["cuts"]
    assert cut["index"] == 4 and cut["changed"]["numpy"][1] == "9.9.9"
    (shift,) = history["change_points"]
    assert shift["index"] == 10 and shift["change"] == pytest.approx(820.5 / 900.5 - 1)
    table = bpbench(cli_env, "history", device.id, "--spec-hash", spec.spec_hash())
    assert "cut: software changed: numpy" in table.stdout and "change point -8.9%" in table.stdout
