"""Shared fixtures of the engine tests: seeded data, a GPU device that skips where there is none, and
PyTorch as the reference the optimizers and BatchNorm are compared with."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from engine.backend import Device, DeviceError, resolve_device
from tests.support.needs import require_module


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


# The spelling the GPU tests resolve: scripts/device_check.sh names the stack it found (`rocm:0` under
# CuPy's ROCm build); `gpu` is whichever GPU CuPy has.
GPU_SPELLING = os.environ.get("BPBENCH_TEST_GPU", "gpu")


@pytest.fixture
def gpu() -> Device:
    """The GPU `BPBENCH_TEST_GPU` names (default `gpu`), or a skip where CuPy or a GPU is missing."""
    try:
        return resolve_device(GPU_SPELLING)
    except DeviceError as exc:
        pytest.skip(f"no GPU: {exc}")


@pytest.fixture(scope="session")
def torch() -> Any:
    """The `torch` module (pinned in the dev extra): the reference implementation."""
    return require_module("torch", "the dev extra: pip install -e '.[dev]'")


def randomize_params(network: Any, rng: np.random.Generator) -> None:
    """Nonzero biases and non-unit BatchNorm scales, so no unit sits exactly on a ReLU kink."""
    for name, value in network.params.items():
        shape = value.shape
        if name.startswith("b") and not name.startswith("beta"):
            network.load_params({name: rng.normal(0.0, 0.1, shape)})
        elif name.startswith("gamma"):
            network.load_params({name: 1.0 + rng.normal(0.0, 0.2, shape)})
        elif name.startswith("beta"):
            network.load_params({name: rng.normal(0.0, 0.2, shape)})


@pytest.fixture(autouse=True)
def quiet_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's tests see a host with no load: whether this machine is busy (CI runs many processes)
    must not decide how many timing windows a test's job keeps. tests/engine/test_train_conditions.py
    tests the load marks themselves, with loads it scripts."""
    from engine import telemetry
    from engine.kinds import train

    class QuietHost(telemetry.TelemetrySource):
        def __init__(self, gpu_index: int | None = None, **kwargs: Any) -> None:
            kwargs.setdefault("loadavg", lambda: (0.0, 0.0, 0.0))
            super().__init__(gpu_index, **kwargs)

    monkeypatch.setattr(train, "TelemetrySource", QuietHost)
