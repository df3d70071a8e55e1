"""The oneapi backend: dpnp and dpctl on Intel's OpenCL CPU runtime, run for real on this host's CPU.

What needs no library (the pip runtime's ICD fix, the selector's parts, the worker's pin) runs everywhere.
The rest runs on `oneapi:opencl:cpu:0`: a skip where the `oneapi` extra is not installed, a failure under
CI=true (CI installs it). Gradient parity on every preset in float64 and float32, the textbook recipe's
accuracy against NumPy's, the result document against `cpu`'s and `bpbench run` itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from engine.backend import (
    Device,
    DeviceError,
    as_numpy,
    fingerprint,
    get_array_module,
    resolve_device,
)
from engine.backends import backend_named
from engine.backends.oneapi import (
    ICD_VARIABLE,
    SELECTOR_VARIABLE,
    point_icd_loader_at_runtime,
    selector_parts,
)
from engine.jobs import run_job
from engine.kinds import estimate_memory
from engine.layers import maximum_in_place
from engine.spec import float64_refusal, hardware_kind, parse_device, resolve_spec
from harness.memory_peak import measure_peak
from tests.support.needs import missing, require_module

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "oneapi:opencl:cpu:0"
FAST = {"warmup": 1, "window": 5, "min_repeats": 3, "max_repeats": 5, "target_cv": 0.5}
# The textbook recipe (two_layer_net, mnist5k, batch 100, SGD lr 0.1) shortened from 10,000 steps to
# 1,000: dpnp on the OpenCL CPU runtime trains at about 13k samples/s here (NumPy: about 300k), so the full
# recipe would take 80 s of this file's budget; the same seed gives the same batches and weights on
# both stacks, so their accuracies agree at any step count (0.91 here at 1,000; 0.929 on both at 10,000).
RECIPE_STEPS = 1000


@pytest.fixture(scope="module")
def oneapi() -> Device:
    """The OpenCL CPU device through dpnp: a skip without the oneapi extra, a failure under CI=true."""
    try:
        return resolve_device(DEVICE)
    except DeviceError as exc:
        missing(f"the oneapi backend cannot run here: {exc}")


# --- without the library ---------------------------------------------------------------------------


def test_the_icd_fix_names_the_runtime_inside_the_environment(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libintelocl.so").write_bytes(b"")
    environ: dict[str, str] = {}
    assert point_icd_loader_at_runtime(environ, str(tmp_path)) == str(tmp_path / "lib" / "libintelocl.so")
    assert environ == {ICD_VARIABLE: str(tmp_path / "lib" / "libintelocl.so")}


def test_the_icd_fix_leaves_a_users_setting_alone(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libintelocl.so").write_bytes(b"")
    environ = {ICD_VARIABLE: "/opt/intel/oneapi/lib/libintelocl.so"}
    assert point_icd_loader_at_runtime(environ, str(tmp_path)) is None
    assert environ == {ICD_VARIABLE: "/opt/intel/oneapi/lib/libintelocl.so"}


def test_the_icd_fix_does_nothing_without_the_pip_runtime(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    assert point_icd_loader_at_runtime(environ, str(tmp_path)) is None
    assert environ == {}


@pytest.mark.parametrize(
    ("selector", "parts"),
    [
        ("opencl:cpu:0", ("opencl", "cpu", 0)),
        ("level_zero:gpu:1", ("level_zero", "gpu", 1)),
        ("gpu", (None, "gpu", None)),
        ("opencl:accelerator", ("opencl", "accelerator", None)),
    ],
)
def test_a_sycl_filter_splits_into_backend_type_and_number(
    selector: str, parts: tuple[str | None, str, int | None]
) -> None:
    assert selector_parts(selector) == parts


def test_a_spelling_says_its_hardware_and_float64_where_it_can() -> None:
    assert hardware_kind(parse_device(DEVICE)) == "cpu"
    assert hardware_kind(parse_device("oneapi:level_zero:gpu:0")) == "gpu"
    assert float64_refusal(DEVICE, "float64") is None
    # An Intel GPU may lack float64 (Arc has no unit): only the device can say, on the worker.
    assert backend_named("oneapi").float64_by_spelling(parse_device("oneapi:level_zero:gpu:0")) is None


def test_a_worker_of_one_device_sees_only_the_devices_of_its_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SELECTOR_VARIABLE, raising=False)
    oneapi = backend_named("oneapi")
    assert oneapi.pin(parse_device(DEVICE)) == ({SELECTOR_VARIABLE: "*:cpu"}, DEVICE)
    assert oneapi.pin(parse_device("oneapi:gpu")) == ({SELECTOR_VARIABLE: "*:gpu"}, "oneapi:gpu")


def test_an_operators_own_device_selector_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SELECTOR_VARIABLE, "level_zero:1")
    assert backend_named("oneapi").pin(parse_device("oneapi:level_zero:gpu:0")) == (
        {},
        "oneapi:level_zero:gpu:0",
    )


def test_a_pinned_process_still_finds_the_opencl_cpu_device(oneapi: Device) -> None:
    env = {k: v for k, v in os.environ.items() if k != ICD_VARIABLE}
    env[SELECTOR_VARIABLE] = "*:cpu"  # what `pin` sets for this device
    code = "from engine.backend import resolve_device\nprint(resolve_device('oneapi:opencl:cpu:0').name)\n"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == DEVICE


def test_a_process_that_ran_opencl_work_refuses_the_oneapi_device_in_one_line(oneapi: Device) -> None:
    """After pocl ran kernels through PyOpenCL, Intel's runtime failed to allocate (USMAllocationError) or
    crashed in the same process: refused up front, naming what to do."""
    require_module("pyopencl", "pip install 'bpbench[opencl]' (needs libclblast-dev)")
    code = (
        "from engine.backend import DeviceError, resolve_device\n"
        "from engine.jobs import run_job\n"
        "run_job({'kind': 'train', 'steps': 5, 'dataset': 'synthetic', 'device': 'opencl:0:0'})\n"
        "try:\n"
        f"    resolve_device({DEVICE!r})\n"
        "except DeviceError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=300
    )
    assert done.stdout.strip() == (
        f"device {DEVICE!r} cannot run in a process that has run OpenCL work through PyOpenCL (on "
        "opencl:0:0): Intel's OpenCL runtime then fails to allocate; run oneapi jobs in a process of their "
        "own (a worker per device, or `bpbench run`, is one)"
    )


def test_a_oneapi_jobs_estimate_adds_the_runtime_its_library_holds() -> None:
    spec = {"kind": "parity", "dtype": "float32"}
    on_numpy = estimate_memory(resolve_spec({**spec, "device": "cpu"}))
    on_oneapi = estimate_memory(resolve_spec({**spec, "device": DEVICE}))
    assert "backend_runtime" not in on_numpy.parts
    assert on_oneapi.parts == {**on_numpy.parts, "backend_runtime": 640 * 2**20}
    assert on_oneapi.total_bytes == on_numpy.total_bytes + int(640 * 2**20 * 1.5)


def test_numpy_arrays_never_import_dpnp() -> None:
    code = (
        "import sys, numpy as np\n"
        "from engine.backend import get_array_module, as_numpy\n"
        "assert get_array_module(np.ones(2)) is np and as_numpy(np.ones(2)).shape == (2,)\n"
        "assert 'dpnp' not in sys.modules and 'dpctl' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- on dpnp ---------------------------------------------------------------------------------------


def test_a_fresh_process_finds_the_opencl_cpu_device_without_a_manual_step(oneapi: Device) -> None:
    env = {k: v for k, v in os.environ.items() if k != ICD_VARIABLE}
    code = (
        "from engine.backends import backend_named\n"
        "print([d.spelling for d in backend_named('oneapi').devices()])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert DEVICE in done.stdout


def test_dpnp_imported_before_the_backend_is_refused_with_the_variable_to_set(
    oneapi: Device, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (ICD_VARIABLE, "ONEAPI_DEVICE_SELECTOR")}
    # No system-wide OpenCL runtime either (a host with pocl's ICD would offer its device instead).
    env["OCL_ICD_VENDORS"] = str(tmp_path)
    code = f"import dpnp\nfrom engine.backend import resolve_device\nresolve_device({DEVICE!r})\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    runtime = Path(sys.prefix) / "lib" / "libintelocl.so"
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith(f"dpctl was imported before bpbench's oneapi backend: set {ICD_VARIABLE}={runtime}")
    )


def test_the_device_lists_this_cpu_with_float64_and_its_vendor(oneapi: Device) -> None:
    devices = {d.spelling: d for d in backend_named("oneapi").devices()}
    assert devices[DEVICE].float64 is True
    # The runtime calls itself Intel on any x86 CPU; the vendor is the CPU's, as the numpy backend says.
    assert devices[DEVICE].vendor == backend_named("numpy").vendor(Device())
    assert (oneapi.name, oneapi.kind, oneapi.selector) == (DEVICE, "cpu", "opencl:cpu:0")
    assert resolve_device("oneapi:cpu") == oneapi  # a short filter resolves to the device's full one


def test_only_devices_dpnp_can_allocate_on_are_listed_and_the_others_refused(oneapi: Device) -> None:
    """The SYCL runtime also lists other OpenCL platforms' devices (pocl's, where CI installs it); dpnp
    cannot allocate on them, and a worker for one failed to start under `bpbench up --stack all`."""
    import dpctl

    listed = {d.spelling for d in backend_named("oneapi").devices()}
    seen = {f"oneapi:{d.filter_string}": d for d in dpctl.get_devices()}
    assert listed == {name for name, d in seen.items() if d.has_aspect_usm_device_allocations}
    assert DEVICE in listed
    for name, device in seen.items():
        if name not in listed:
            refusal = (
                f"device {name!r} is {device.name} on {device.sycl_platform.name}, where dpnp cannot "
                f"allocate (no USM device allocations); available: {', '.join(sorted(listed))}"
            )
            with pytest.raises(DeviceError) as refused:
                resolve_device(name)
            assert str(refused.value) == refusal


def test_an_absent_device_is_refused_with_what_is_available(oneapi: Device) -> None:
    with pytest.raises(DeviceError, match=f"has no such device; available: {DEVICE}"):
        resolve_device("oneapi:opencl:cpu:7")


def test_dpnp_arrays_are_recognised_and_copied_to_numpy(oneapi: Device) -> None:
    x = oneapi.xp.asarray(np.arange(6.0))
    assert get_array_module(x) is oneapi.xp and get_array_module(np.ones(1), x) is oneapi.xp
    assert isinstance(as_numpy(x), np.ndarray) and as_numpy(x).tolist() == [0, 1, 2, 3, 4, 5]


def test_the_in_place_maximum_dpnp_lacks_gives_numpys_numbers(oneapi: Device) -> None:
    a, b = np.array([1.0, -2.0, np.nan, 4.0]), np.array([0.5, 3.0, 1.0, np.nan])
    on_device = oneapi.xp.asarray(a)
    assert maximum_in_place(oneapi.xp, on_device, oneapi.xp.asarray(b)) is on_device
    np.testing.assert_array_equal(as_numpy(on_device), np.maximum(a, b))


def test_the_fingerprint_names_the_stack_beside_the_hardware(oneapi: Device) -> None:
    doc = fingerprint(oneapi)
    stack = doc["backend"]
    assert (doc["device"], stack["name"], stack["library"], stack["float64"]) == (
        DEVICE,
        "oneapi",
        "dpnp",
        True,
    )
    assert stack["library_version"] and stack["driver_version"] and stack["runtime_version"]
    # The same hardware as `cpu`'s, by name and vendor: what lists one CPU through both stacks side by side.
    numpy_stack = fingerprint(Device())["backend"]
    assert (stack["hardware"], stack["vendor"]) == (numpy_stack["hardware"], numpy_stack["vendor"])
    details = stack["oneapi"]
    assert (details["sycl_backend"], details["device_type"], details["filter_string"]) == (
        "opencl",
        "cpu",
        "opencl:cpu:0",
    )
    assert details["dpctl_version"] and details["opencl_runtime_version"] and details["onemkl_version"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_presets_gradients_match_the_numpy_float64_reference(oneapi: Device, dtype: str) -> None:
    metrics = run_job({"kind": "parity", "device": DEVICE, "dtype": dtype})["metrics"]
    errors = {name: p["max_relative_error"] for name, p in metrics["presets"].items()}
    assert metrics["passed"] is True, errors
    assert len(errors) == 7 and all(p["passed"] for p in metrics["presets"].values())
    assert max(errors.values()) > 0  # oneMKL sums in its own order: not NumPy's numbers bit for bit


@pytest.fixture(scope="module")
def recipe(oneapi: Device) -> dict[str, dict[str, Any]]:
    """The textbook recipe, shortened (RECIPE_STEPS), on both stacks with the same seed."""
    spec = {"kind": "train", "model": {"name": "two_layer_net"}, "dataset": "mnist5k", "steps": RECIPE_STEPS,
            "batch_size": 100, "optimizer": {"name": "sgd", "lr": 0.1}, "timing": FAST}  # fmt: skip
    return {device: run_job({**spec, "device": device}) for device in ("cpu", DEVICE)}


@pytest.mark.slow
def test_the_textbook_recipe_reaches_numpys_test_accuracy(recipe: dict[str, dict[str, Any]]) -> None:
    numpy_accuracy = recipe["cpu"]["metrics"]["test_accuracy"]
    assert numpy_accuracy >= 0.85
    assert recipe[DEVICE]["metrics"]["test_accuracy"] == pytest.approx(numpy_accuracy, abs=0.01)
    assert recipe[DEVICE]["metrics"]["final_loss"] == pytest.approx(
        recipe["cpu"]["metrics"]["final_loss"], abs=0.02
    )


@pytest.mark.slow
def test_the_result_document_is_cpus_with_the_stack_named(recipe: dict[str, dict[str, Any]]) -> None:
    cpu, oneapi = recipe["cpu"], recipe[DEVICE]
    assert set(oneapi) == set(cpu) and set(oneapi["metrics"]) == set(cpu["metrics"])
    assert set(oneapi["timing"]) == set(cpu["timing"]) and set(oneapi["fingerprint"]) >= set(
        cpu["fingerprint"]
    )
    assert (oneapi["spec"]["device"], oneapi["fingerprint"]["backend"]["name"]) == (DEVICE, "oneapi")
    assert {k: v for k, v in oneapi["spec"].items() if k != "device"} == {
        k: v for k, v in cpu["spec"].items() if k != "device"
    }
    json.dumps(oneapi, allow_nan=False)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["train", "parity"])
def test_the_estimate_bounds_the_peak_of_a_real_oneapi_run(oneapi: Device, kind: str) -> None:
    spec = resolve_spec({"kind": kind, "device": DEVICE, "steps": 100, "timing": FAST})
    peak = measure_peak(spec)  # a fresh interpreter, as a worker's pool process
    estimate = estimate_memory(spec)
    assert peak.peak_bytes <= estimate.total_bytes <= 3 * peak.peak_bytes + 64 * 2**20, estimate.describe()


def test_bpbench_run_takes_the_oneapi_device(oneapi: Device) -> None:
    result = CliRunner().invoke(app, ["run", "--device", DEVICE, "--kind", "parity", "--dtype", "float32"])
    assert result.exit_code == 0, result.stderr
    assert f"bpbench parity on {DEVICE}" in result.stdout and "simple_convnet" in result.stdout
    assert result.stdout.count("│ pass") == 7 and "FAIL" not in result.stdout  # one row per preset
