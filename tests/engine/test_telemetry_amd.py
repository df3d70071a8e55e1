"""AMD GPU telemetry through amdsmi, on the readings amdsmi gives (no AMD GPU here: see the closing note).

The tables below have the keys and shapes of amdsmi's Python binding (`py-interface/amdsmi_interface.py`):
the energy accumulator under `power` (ROCm 6.0) or `energy_accumulator` (6.1 and later), power under
`socket_power` (ROCm 7), `current_socket_power` (MI300) or `average_socket_power`, and "N/A" wherever the
part does not report a field.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.telemetry import (
    AmdSmiDevice,
    TelemetrySource,
    amd_energy_uj,
    amd_number,
    amd_sample,
    amd_throttle_reasons,
    open_gpu_meter,
)

MI300_METRICS: dict[str, Any] = {
    "temperature_edge": "N/A",
    "temperature_hotspot": 71,
    "average_gfx_activity": 98,
    "current_gfxclk": 1420,
    "current_uclk": 1300,
    "average_gfxclk_frequency": "N/A",
    "indep_throttle_status": (1 << 4) | (1 << 36) | (1 << 16),
    "throttle_status": "N/A",
}


def test_energy_is_ticks_times_resolution_under_either_key() -> None:
    assert amd_energy_uj({"power": 1_000_000, "counter_resolution": 15.3, "timestamp": 1}) == pytest.approx(
        15_300_000.0
    )
    assert amd_energy_uj({"energy_accumulator": 2_000, "counter_resolution": 15.259}) == pytest.approx(
        30_518.0
    )


def test_fields_the_part_does_not_report_are_none() -> None:
    assert amd_number("N/A") is None
    assert amd_number(0xFFFF) is None and amd_number(0xFFFFFFFFFFFFFFFF) is None
    assert amd_number(True) is None
    assert amd_number(71) == 71.0


def test_throttle_mask_names_power_current_and_thermal_bits() -> None:
    assert amd_throttle_reasons((1 << 4) | (1 << 16) | (1 << 36)) == [
        "power_cap:spl",
        "current_limit:tdc_gfx",
        "thermal:temp_hotspot",
    ]
    assert amd_throttle_reasons(0) == [] and amd_throttle_reasons("N/A") == []


def test_a_sample_reads_the_newest_key_present_and_skips_current_limits() -> None:
    sample = amd_sample(
        {"socket_power": "N/A", "current_socket_power": 612, "average_socket_power": "N/A"}, MI300_METRICS
    )
    assert sample == {
        "power_w": 612.0,
        "sm_clock_mhz": 1420.0,
        "memory_clock_mhz": 1300.0,
        "temperature_c": 71.0,
        "utilization_pct": 98.0,
        "throttle_reasons": ["power_cap:spl", "thermal:temp_hotspot"],
    }
    older = amd_sample(
        {"average_socket_power": 290}, {"average_gfxclk_frequency": 1700, "temperature_edge": 55}
    )
    assert (older["power_w"], older["sm_clock_mhz"], older["temperature_c"]) == (290.0, 1700.0, 55.0)
    assert older["utilization_pct"] is None and older["throttle_reasons"] == []


class RecordedAmdSmi:
    """amdsmi's functions answering with recorded readings: 612 W for 2 s, counter resolution 15.259 uJ."""

    def __init__(self) -> None:
        self.ticks = iter([1_000_000, 1_000_000 + round(1224.0 / 15.259e-6)])

    def amdsmi_get_energy_count(self, handle: object) -> dict[str, Any]:
        return {"energy_accumulator": next(self.ticks), "counter_resolution": 15.259, "timestamp": 0}

    def amdsmi_get_power_info(self, handle: object) -> dict[str, Any]:
        return {"socket_power": 612, "current_socket_power": "N/A", "average_socket_power": "N/A"}

    def amdsmi_get_gpu_metrics_info(self, handle: object) -> dict[str, Any]:
        return MI300_METRICS


def test_an_amd_window_takes_the_energy_counter_and_marks_throttling() -> None:
    now = [100.0]
    source = TelemetrySource(
        0,
        clock=lambda: now[0],
        loadavg=lambda: (0.0, 0, 0),
        gpu_meter=AmdSmiDevice(RecordedAmdSmi(), object()),
    )
    source.begin()
    now[0] += 2.0
    reading = source.end()
    assert reading.energy_source == "amdsmi"
    assert reading.energy_j == pytest.approx(1224.0, rel=1e-6)
    assert reading.mean_power_w == pytest.approx(612.0, rel=1e-6)
    assert reading.marks == ("gpu throttled: power_cap:spl, thermal:temp_hotspot",)


def test_without_amdsmi_or_a_rocm_cupy_the_gpu_meter_is_nvml_or_a_reason() -> None:
    amd, reason = AmdSmiDevice.open(0)
    try:
        import amdsmi  # noqa: F401
    except ImportError:
        assert amd is None and reason is not None and "amdsmi is not installed" in reason
    # CuPy is not imported (or is the CUDA build): the NVIDIA path is chosen.
    _meter, _reason, name = open_gpu_meter(0)
    assert name == "nvml"
