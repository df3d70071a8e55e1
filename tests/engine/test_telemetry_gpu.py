"""NVML telemetry on a real NVIDIA GPU (`pytest -m gpu`): energy, power, clocks and throttle reasons around
a window of real work, and a training job's energy figures."""

from __future__ import annotations

from typing import Any

import pytest

from engine.backend import Device, synchronize
from engine.jobs import run_job
from engine.spec import resolve_spec
from engine.telemetry import NvmlDevice, TelemetrySource

pytestmark = pytest.mark.gpu


def _nvml() -> NvmlDevice:
    device, reason = NvmlDevice.open(0)
    if device is None:
        pytest.skip(f"no NVML: {reason}")
    return device


def test_a_window_of_matrix_products_reads_energy_and_clocks(gpu: Device) -> None:
    _nvml()
    xp = gpu.xp
    a = xp.random.standard_normal((4096, 4096), dtype=xp.float32)
    source = TelemetrySource(gpu.index or 0)
    synchronize(gpu)
    source.begin()
    for _ in range(200):
        a = a @ a
        a /= xp.abs(a).max()
    synchronize(gpu)
    reading = source.end()
    assert reading.energy_source == "nvml" and reading.energy_reason is None
    assert reading.energy_j is not None and reading.energy_j > 0
    assert reading.mean_power_w is not None and 10 < reading.mean_power_w < 2000
    sample: dict[str, Any] = reading.gpu
    assert sample["sm_clock_mhz"] > 0 and sample["memory_clock_mhz"] > 0
    assert isinstance(sample["throttle_reasons"], list)


def test_a_training_job_on_the_gpu_reports_samples_per_joule(gpu: Device) -> None:
    _nvml()
    spec = resolve_spec(
        {
            "kind": "train",
            "device": "gpu",
            "model": {"name": "mlp", "layers": [784, 1024, 1024, 10]},
            "dataset": "synthetic",
            "synthetic_samples": 8192,
            "steps": 300,
            "batch_size": 1024,
            "timing": {"warmup": 20, "window": 40, "min_repeats": 3, "max_repeats": 5},
        }
    )
    energy = run_job(spec)["metrics"]["energy"]
    assert energy["source"] == "nvml" and energy["reason"] is None
    assert energy["samples_per_j"] > 0 and energy["mean_power_w"] > 0
