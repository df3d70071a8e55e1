"""The engine on OpenCL (the `opencl` backend), run here on pocl's CPU device: the same layer classes over
`engine.backends.opencl_numpy` (GEMM by CLBlast), against the NumPy float64 reference.

Bounds: the parity kind's (`engine.kinds.parity.PARITY_BOUNDS`): float64 within 1e-7 (measured ~1e-13),
float32 within its rounding bound.

Skipped without PyOpenCL, pyclblast or an OpenCL device, a failure under CI=true (CI installs pocl,
CLBlast and the `opencl` extra).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest

from engine.backend import Device, resolve_device
from engine.backends import backend_named
from engine.backends.base import DeviceError
from engine.jobs import run_job
from engine.kinds import parity
from tests.support.needs import missing

DEVICE = "opencl:0:0"


@pytest.fixture(scope="module")
def opencl() -> Device:
    """pocl's CPU device (the first of the first platform); a skip without it, a failure under CI=true."""
    try:
        importlib.import_module("pyopencl")
        importlib.import_module("pyclblast")
        return resolve_device(DEVICE)
    except (ImportError, DeviceError) as exc:
        message = (
            "PyOpenCL, pyclblast and an OpenCL device are needed for the opencl backend's tests "
            f"(apt-get install pocl-opencl-icd libclblast-dev; pip install 'bpbench[opencl]'): {exc}"
        )
        missing(message)


@pytest.mark.parametrize("preset", list(parity.PARITY_PRESETS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_preset_backprops_within_the_parity_bound_of_the_numpy_float64_reference(
    opencl: Device, preset: str, dtype: str
) -> None:
    model, shape = parity.PARITY_PRESETS[preset]
    errors = parity.compare_preset(model, shape, dtype, opencl, seed=5)
    assert errors["max_relative_error"] <= parity.PARITY_BOUNDS[dtype]
    if dtype == "float64":
        assert errors["max_relative_error"] < 1e-10  # summation order only


def test_the_parity_job_passes_on_the_device_in_float64(opencl: Device) -> None:
    result = run_job({"kind": "parity", "dtype": "float64", "device": DEVICE})
    assert result["metrics"]["passed"] is True
    assert result["fingerprint"]["backend"]["name"] == "opencl"


def test_a_short_train_reaches_the_numpy_backends_accuracy(opencl: Device) -> None:
    spec = {"kind": "train", "steps": 300, "dataset": "mnist5k", "seed": 0}
    on_cpu = run_job({**spec, "device": "cpu"})
    on_opencl = run_job({**spec, "device": DEVICE})
    assert abs(on_opencl["metrics"]["test_accuracy"] - on_cpu["metrics"]["test_accuracy"]) <= 0.01
    assert on_opencl["metrics"]["test_accuracy"] > 0.8
    assert on_opencl["metrics"]["samples_per_s"]["median"] > 0


def test_the_result_document_has_the_cpus_keys_and_an_opencl_fingerprint(opencl: Device) -> None:
    spec = {"kind": "train", "steps": 60, "dataset": "mnist5k", "seed": 1}
    on_cpu = run_job({**spec, "device": "cpu"})
    on_opencl = run_job({**spec, "device": DEVICE})
    assert set(on_opencl) == set(on_cpu)
    assert set(on_opencl["metrics"]) == set(on_cpu["metrics"])
    stack = on_opencl["fingerprint"]["backend"]
    assert stack["name"] == "opencl" and stack["library"] == "pyopencl"
    assert stack["vendor"] == on_cpu["fingerprint"]["backend"]["vendor"]  # pocl on a CPU: the host's CPU
    assert stack["opencl"]["platform_name"] and stack["driver_version"]
    assert stack["opencl"]["pyclblast_version"]


def test_float64_is_the_devices_own_answer(opencl: Device) -> None:
    backend = backend_named("opencl")
    found = backend.cl_device(opencl)  # type: ignore[attr-defined]
    assert backend.supports_float64(opencl) is bool(found.double_fp_config)


def test_a_device_this_host_lacks_is_refused_with_what_is_available(opencl: Device) -> None:
    with pytest.raises(DeviceError, match=r"available: opencl:0:0"):
        resolve_device("opencl:9:9")


def test_list_devices_names_the_exact_spelling(opencl: Device) -> None:
    spellings = [info.spelling for info in backend_named("opencl").devices()]
    assert DEVICE in spellings


def test_matmul_takes_transposed_operands_without_a_copy_and_matches_numpy(opencl: Device) -> None:
    xp: Any = opencl.xp
    rng = np.random.default_rng(0)
    a, b = rng.random((7, 5)), rng.random((7, 3))
    da, db = xp.asarray(a), xp.asarray(b)
    out = xp.empty((5, 3), dtype=np.float64)
    result = xp.matmul(da.T, db, out=out)
    assert result is out
    np.testing.assert_allclose(np.asarray(result), a.T @ b, rtol=1e-12)


def test_axis_reductions_and_broadcasting_match_numpy(opencl: Device) -> None:
    xp: Any = opencl.xp
    host = np.random.default_rng(1).random((6, 4))
    x = xp.asarray(host)
    np.testing.assert_allclose(np.asarray(x.sum(axis=0)), host.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(x.T.max(axis=0)), host.T.max(axis=0))
    np.testing.assert_allclose(np.asarray(x - x.mean(axis=0)), host - host.mean(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(x.argmax(axis=1)), host.argmax(axis=1))
