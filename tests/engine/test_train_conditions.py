"""Training under watched conditions: windows taken on a loaded host are set aside and replaced, energy is
reported where a sensor exists and explained where none does."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from engine import telemetry
from engine.jobs import run_job
from engine.kinds import train
from engine.spec import resolve_spec

SPEC = resolve_spec(
    {
        "kind": "train",
        "dataset": "spiral",
        "synthetic_samples": 200,
        "model": {"name": "mlp", "layers": [2, 16, 3]},
        "steps": 200,
        "batch_size": 10,
        "timing": {"warmup": 2, "window": 5, "min_repeats": 3, "max_repeats": 10, "target_cv": 10.0},
    }
)


def _source_with(loads: list[float], powercap: Path | None = None) -> type[telemetry.TelemetrySource]:
    """A telemetry source whose load average follows `loads` (two reads a window), then stays at 0."""
    readings = itertools.chain(loads, itertools.repeat(0.0))

    class Scripted(telemetry.TelemetrySource):
        def __init__(self, gpu_index: int | None = None, **kwargs: Any) -> None:
            if powercap is not None:
                kwargs["powercap_root"] = powercap
            kwargs["loadavg"] = lambda: (next(readings), 0.0, 0.0)
            super().__init__(gpu_index, **kwargs)

    return Scripted


def test_windows_on_a_loaded_host_are_dropped_and_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    busy = 1000.0  # far above any machine's core count
    monkeypatch.setattr(train, "TelemetrySource", _source_with([busy, busy, busy, busy]))
    result = run_job(SPEC)
    timing, conditions = result["timing"], result["metrics"]["conditions"]
    assert timing["dropped_windows"] == 2 and timing["dropped_reasons"] == {"host loaded": 2}
    assert timing["windows"] == 3 and len(result["trials"]) == 3  # three clean ones, as min_repeats asks
    assert timing["all_windows_marked"] is False
    assert conditions["load_max"] == busy and conditions["dropped_windows"] == 2


def test_when_every_window_is_marked_the_figures_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train, "TelemetrySource", _source_with([1000.0] * 1000))
    result = run_job(SPEC)
    assert result["timing"]["all_windows_marked"] is True
    assert result["timing"]["dropped_windows"] == 10 == len(result["trials"])  # max_repeats, then stop
    assert result["timing"]["stop_reason"] == "max_repeats"
    assert result["metrics"]["samples_per_s"]["median"] > 0


def test_energy_per_sample_from_rapl_counters(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    counter = zone / "energy_uj"
    counter.write_text("0\n")
    joules = itertools.count(0, 2_000_000)  # every read advances 2 J: 2 J per window (read at both ends)

    class Counting(telemetry.RaplDomain):
        def read_uj(self) -> int:
            return next(joules)

    monkeypatch.setattr(telemetry, "RaplDomain", Counting)
    monkeypatch.setattr(train, "TelemetrySource", _source_with([], powercap=tmp_path))
    metrics = run_job(SPEC)["metrics"]
    energy = metrics["energy"]
    assert energy["source"] == "rapl" and energy["reason"] is None and energy["windows"] == 3
    assert energy["samples_per_j"] == pytest.approx(
        metrics["samples_per_s"]["median"] / energy["mean_power_w"]
    )
    assert energy["energy_per_sample_j"] == pytest.approx(1 / energy["samples_per_j"])


def test_without_a_sensor_energy_is_null_with_the_reason() -> None:
    energy = run_job(SPEC)["metrics"]["energy"]
    if energy["source"] is None:
        assert energy["samples_per_j"] is None and energy["mean_power_w"] is None
        assert energy["reason"]  # e.g. "no RAPL on this host (/sys/class/powercap is absent)"
    else:
        assert energy["samples_per_j"] > 0
