"""Compare says under what conditions each device ran: samples per joule, a loaded host beside quiet ones,
and the software fields that differ."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy.orm import Session

from services.core.config import Settings
from services.devices.service import register_device
from services.results.compare import compare
from services.results.filters import ResultFilter
from tests.support.jobs import tiny_spec
from tests.support.results import record


def _device(session: Session, label: str) -> str:
    fingerprint = {"cpu_model": f"{label} {uuid.uuid4().hex[:6]}", "host": {"cpu_count": 2}}
    return register_device(session, fingerprint).id


def _conditions(load: float, numpy: str, samples_per_j: float | None) -> Any:
    def adjust(document: dict[str, Any]) -> None:
        document["metrics"]["conditions"] = {
            **document["metrics"]["conditions"],
            "load_max": load,
            "cpu_count": 2,
        }
        document["fingerprint"]["numpy_version"] = numpy
        if samples_per_j is None:
            document["metrics"]["energy"] = {
                **document["metrics"]["energy"],
                "samples_per_j": None,
                "reason": "no RAPL on this host",
            }
        else:
            document["metrics"]["energy"] = {
                "source": "rapl",
                "reason": None,
                "mean_power_w": 40.0,
                "samples_per_j": samples_per_j,
                "energy_per_sample_j": 1 / samples_per_j,
                "windows": 3,
            }

    return adjust


def test_compare_shows_energy_load_and_stack_differences(
    db_session: Session, service_settings: Settings
) -> None:
    spec = tiny_spec(seed=int(uuid.uuid4().int % 100_000))
    quiet, loaded = _device(db_session, "Quiet CPU"), _device(db_session, "Loaded CPU")
    record(db_session, spec, quiet, _conditions(0.4, "2.4.6", 1200.0))
    record(db_session, spec, quiet, _conditions(0.6, "2.4.6", 1300.0))
    record(db_session, spec, loaded, _conditions(7.5, "2.5.0", None))
    doc = compare(db_session, ResultFilter(spec_hash=spec.spec_hash()))
    rows = {row["device_id"]: row for row in doc["rows"]}
    assert rows[quiet]["samples_per_j"] == pytest.approx(1250.0) and rows[quiet]["mean_power_w"] == 40.0
    assert rows[quiet]["loaded"] is False and rows[quiet]["load_max"] == pytest.approx(0.6)
    assert rows[loaded]["samples_per_j"] is None and rows[loaded]["energy_note"] == "no RAPL on this host"
    assert rows[loaded]["loaded"] is True
    assert doc["load_warning"].startswith(
        f"{rows[loaded]['device_name']} ran with the host loaded beyond its cores"
    )
    assert doc["stack_differences"]["numpy"] == {quiet: "2.4.6", loaded: "2.5.0"}
    assert "python" not in doc["stack_differences"]
