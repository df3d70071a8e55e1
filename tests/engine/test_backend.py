"""The array backend: device strings, clocks, fingerprints and seeds."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import threadpoolctl
from threadpoolctl import threadpool_info, threadpool_limits

import engine.backend
from engine.backend import (
    CPU,
    Device,
    DeviceError,
    Stopwatch,
    as_numpy,
    fingerprint,
    get_array_module,
    parse_driver_release,
    random_generator,
    resolve_device,
    resolve_dtype,
    seed_everything,
    synchronize,
)
from engine.networks import mlp
from engine.optimizers import SGD

HAS_CUPY = importlib.util.find_spec("cupy") is not None


def test_cpu_device() -> None:
    device = resolve_device("cpu")
    assert device == CPU == Device("cpu", None)
    assert (device.kind, device.name, device.xp) == ("cpu", "cpu", np)


@pytest.mark.parametrize("spec", ["tpu", "gpu:", "cpu:0", "gpu:-1", ""])
def test_unknown_device_strings_are_refused_with_the_accepted_ones(spec: str) -> None:
    with pytest.raises(DeviceError, match=r"accepted: cpu, gpu, gpu:N|the CPU takes no index"):
        resolve_device(spec)


@pytest.mark.skipif(HAS_CUPY, reason="CuPy is installed here")
def test_gpu_without_cupy_says_what_was_asked_and_what_is_available() -> None:
    with pytest.raises(
        DeviceError, match=r"device 'gpu:1' was asked for, but CuPy is not installed.*available: cpu"
    ):
        resolve_device("gpu:1")


def test_dtype_is_float32_by_default_and_float64_on_request() -> None:
    assert resolve_dtype(None) == np.float32
    assert resolve_dtype("float64") == np.float64
    with pytest.raises(ValueError, match="dtype must be one of float32, float64, got 'int8'"):
        resolve_dtype("int8")


def test_array_helpers_on_the_cpu() -> None:
    x = np.arange(3.0)
    assert get_array_module(x) is np
    assert as_numpy(x) is x
    np.testing.assert_array_equal(as_numpy([1, 2]), [1, 2])


def test_stopwatch_measures_elapsed_seconds() -> None:
    synchronize(CPU)
    with Stopwatch(CPU) as sw:
        sum(range(20000))
    assert 0.0 < sw.seconds < 60.0


def test_fingerprint_is_json_and_names_the_blas() -> None:
    doc = json.loads(json.dumps(fingerprint(CPU)))
    assert doc["device"] == "cpu"
    assert doc["numpy_version"] == np.__version__
    assert doc["logical_cores"] >= 1 and doc["cpu_model"]
    assert doc["python_version"].count(".") == 2 and doc["hostname"]
    blas = [pool for pool in doc["blas"] if pool["user_api"] == "blas"]
    assert blas and blas[0]["num_threads"] >= 1 and blas[0]["internal_api"]
    assert "gpu" not in doc


def _blas_threads(pools: list[dict[str, Any]]) -> list[int]:
    return [pool["num_threads"] for pool in pools if pool["user_api"] == "blas"]


def test_the_fingerprint_reports_the_blas_threads_of_the_moment_though_its_scan_is_kept() -> None:
    with threadpool_limits(limits=2, user_api="blas"):
        if set(_blas_threads(threadpool_info())) != {2}:
            pytest.skip("this BLAS does not run 2 threads on this machine")
        fingerprint(CPU)  # scans the libraries (or finds them scanned already)
        assert set(_blas_threads(fingerprint(CPU)["blas"])) == {2}
        with threadpool_limits(limits=1, user_api="blas"):
            assert set(_blas_threads(fingerprint(CPU)["blas"])) == {1}
        assert set(_blas_threads(fingerprint(CPU)["blas"])) == {2}


def test_the_fingerprint_names_numpy_s_blas_only_when_numba_has_loaded_scipy_s() -> None:
    # Numba (engine.kernels, on large arrays) imports SciPy, whose wheel loads a second OpenBLAS; listing it
    # would give the same CPU another device id from the first large job of a worker process on.
    probe = (
        "import json, numpy as np\n"
        "from threadpoolctl import threadpool_info\n"
        "from engine.backend import CPU, fingerprint\n"
        "from engine import kernels\n"
        "before = fingerprint(CPU)['blas']\n"
        "x = np.ones(kernels.MIN_VALUES, np.float32)\n"
        "assert kernels.relu_forward(x, np.empty(x.size, bool), x)\n"
        "loaded = [i['filepath'] for i in threadpool_info() if i['internal_api'] == 'openblas']\n"
        "print(json.dumps([before, fingerprint(CPU)['blas'], loaded]))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    if "numba" in run.stderr and "ModuleNotFoundError" in run.stderr:
        pytest.skip("Numba is not installed")
    assert run.returncode == 0, run.stderr
    before, after, loaded = json.loads(run.stdout)
    if len(loaded) < 2:
        pytest.skip(f"Numba loaded no second OpenBLAS here: {loaded}")
    assert [pool["prefix"] for pool in after] == [pool["prefix"] for pool in before]
    assert after == before


def test_the_library_scan_is_done_once_and_again_after_an_import(monkeypatch: pytest.MonkeyPatch) -> None:
    scans: list[int] = []

    class CountingController(threadpoolctl.ThreadpoolController):
        def __init__(self) -> None:
            scans.append(1)
            super().__init__()

    monkeypatch.setattr(threadpoolctl, "ThreadpoolController", CountingController)
    monkeypatch.setattr(engine.backend, "_pools", None)
    first = fingerprint(CPU)
    scans.clear()

    again = [fingerprint(CPU) for _ in range(3)]
    assert scans == []
    monkeypatch.setitem(sys.modules, "bpbench_test_late_import", types.ModuleType("bpbench_test_late_import"))
    after_import = fingerprint(CPU)

    assert scans == [1]
    assert all(doc == first for doc in again) and after_import == first


def test_random_generators_of_one_seed_draw_the_same_numbers() -> None:
    a = random_generator(42).standard_normal(5)
    b = random_generator(42, CPU).standard_normal(5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, random_generator(43).standard_normal(5))


def test_seed_everything_seeds_numpys_global_generator_and_builds_no_generator() -> None:
    assert seed_everything(7) is None
    first = np.random.random(3)
    seed_everything(7)
    np.testing.assert_array_equal(np.random.random(3), first)


@pytest.mark.parametrize(
    ("answer", "release"),
    [
        (b"580.159.03", "580.159.03"),  # nvidia-ml-py before 11.515 answers bytes
        ("580.159.03", "580.159.03"),
        ("550.54", "550.54"),
        (
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.03  Release Build  "
            "(dvs-builder@U22-I3-AE18-23-3)  Mon Sep 29 2025\nGCC version:  gcc version 12.3.0",
            "580.159.03",
        ),
        (
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023",
            "535.104.05",
        ),
        ("no release here", None),
        (None, None),
    ],
)
def test_the_driver_release_is_read_from_nvml_or_the_kernel_modules_text(
    answer: bytes | str | None, release: str | None
) -> None:
    assert parse_driver_release(answer) == release


def test_the_driver_release_comes_from_nvml_when_it_answers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[str] = []
    nvml = types.SimpleNamespace(
        nvmlInit=lambda: calls.append("init"),
        nvmlSystemGetDriverVersion=lambda: b"580.159.03",
        nvmlShutdown=lambda: calls.append("shutdown"),
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(engine.backend, "NVIDIA_PROC_VERSION", tmp_path / "absent")
    engine.backend.driver_release.cache_clear()
    try:
        assert engine.backend.driver_release() == "580.159.03"
    finally:
        engine.backend.driver_release.cache_clear()
    assert calls == ["init", "shutdown"]


def test_without_nvml_the_driver_release_comes_from_the_kernel_module(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    proc_version = tmp_path / "version"
    proc_version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 2023\n")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    monkeypatch.setattr(engine.backend, "NVIDIA_PROC_VERSION", proc_version)
    engine.backend.driver_release.cache_clear()
    try:
        found = engine.backend.driver_release()
        proc_version.unlink()
        engine.backend.driver_release.cache_clear()
        missing = engine.backend.driver_release()
    finally:
        engine.backend.driver_release.cache_clear()
    assert (found, missing) == ("535.104.05", None)


def test_seeded_training_runs_are_identical() -> None:
    def run() -> tuple[dict[str, np.ndarray], list[float]]:
        net = mlp([6, 8, 3], dropout=0.2, batchnorm=True, seed=11)
        data = np.random.default_rng(0)
        x, t = data.standard_normal((16, 6)), data.integers(0, 3, 16)
        opt, losses = SGD(0.1), []
        for _ in range(5):
            net.train_step(x, t, opt)
            losses.append(net.last_loss)
        return {k: v.copy() for k, v in net.params.items()}, losses

    (params_a, losses_a), (params_b, losses_b) = run(), run()
    assert losses_a == losses_b
    assert losses_a[-1] < losses_a[0]
    for key, value in params_a.items():
        np.testing.assert_array_equal(value, params_b[key])


def test_the_cpu_path_never_imports_cupy_or_jax() -> None:
    code = (
        "import sys, numpy as np\n"
        "from engine.backend import resolve_device, fingerprint\n"
        "from engine.networks import build_network\n"
        "from engine.optimizers import make_optimizer\n"
        "net = build_network({'name': 'mlp', 'layers': [4, 5, 3], 'dropout': 0.1}, (4,), 3, 'float32',"
        " resolve_device('cpu'), 0)\n"
        "net.train_step(np.ones((2, 4)), np.array([0, 1]), make_optimizer({'name': 'adam'}))\n"
        "fingerprint(resolve_device('cpu'))\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
        "assert 'jax' not in sys.modules, 'jax was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


@pytest.mark.gpu
def test_gpu_device_fingerprint_and_clock(gpu: Device) -> None:
    doc = json.loads(json.dumps(fingerprint(gpu)))
    assert doc["gpu"]["name"] and doc["gpu"]["total_memory_bytes"] > 0
    assert doc["gpu"]["compute_capability"].count(".") == 1
    # The driver's release ("580.159.03"), and apart from it the CUDA version that driver supports (13000).
    assert re.fullmatch(r"\d{2,4}\.\d+(\.\d+)?", doc["gpu"]["driver_version"]), doc["gpu"]
    # CUDA's minor-version compatibility: a runtime newer than the driver within one major release runs (seen
    # on the H200 host, 4 Dec 2026: runtime 13020 on a driver supporting 13000), so only the majors compare.
    driver, runtime = doc["gpu"]["cuda_driver_version"], doc["gpu"]["cuda_runtime_version"]
    assert driver // 1000 >= runtime // 1000 and runtime >= 11000, doc["gpu"]
    x = gpu.xp.ones((256, 256), dtype=np.float32)
    with Stopwatch(gpu) as sw:
        x @ x
    assert sw.seconds > 0.0
    assert get_array_module(x) is gpu.xp
    np.testing.assert_array_equal(as_numpy(x)[0, :2], [1.0, 1.0])
