"""`bpbench worker --list-devices` and the one-line refusals of `run`/`submit`, through the real console
entry point in a subprocess."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest

from engine.backend import CPU
from engine.backends import BACKENDS
from engine.backends.numpy_backend import cpu_model
from harness.processes import bpbench_command

ROOT = Path(__file__).resolve().parents[2]


def _bpbench(*args: str) -> subprocess.CompletedProcess[str]:
    # An API nobody serves: a refusal must come before any request.
    env = {**os.environ, "BPBENCH_API_URL": "http://127.0.0.1:1"}
    return subprocess.run(
        [*bpbench_command(), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_list_devices_names_every_backend_and_this_cpus_exact_device() -> None:
    done = _bpbench("worker", "--list-devices")

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    backend_lines = [line for line in lines if not line.startswith(" ")]
    assert [line.split()[0] for line in backend_lines] == [b.name for b in BACKENDS]
    assert lines[1].split() == [
        "--device",
        "cpu",
        *cpu_model().split(),
        "vendor",
        BACKENDS[0].vendor(CPU),
        "float64",
        "yes",
    ]
    for backend, line in zip(BACKENDS, backend_lines, strict=True):
        if importlib.util.find_spec(backend.library) is None:
            # Not installed here: the line says what to install.
            assert f"not installed: pip install 'bpbench[{backend.extra}]'" in line, line
        else:
            assert re.search(rf"installed \({re.escape(backend.library)} [^)]+\)", line), line


def test_list_devices_serves_nothing_and_needs_no_database() -> None:
    # No database or broker is reachable at this address: listing must not try either.
    done = subprocess.run(
        [*bpbench_command(), "worker", "--list-devices"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "BPBENCH_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
    )
    assert (done.returncode, done.stderr) == (0, "")


def test_a_float64_run_on_a_tpu_is_refused_in_one_line_before_anything_starts() -> None:
    for command in (["run"], ["submit"]):
        done = _bpbench(*command, "--device", "xla:tpu:0", "--dtype", "float64", "--steps", "5")
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert done.stderr.strip().splitlines() == [
            "error: --dtype \"float64\": float64 cannot run on device 'xla:tpu:0' (xla has no float64 on "
            "tpu); accepted: float32 on it, or float64 on a device that has it (e.g. cpu)"
        ], command


def test_a_worker_of_a_backend_not_installed_says_which_extra_to_install() -> None:
    if importlib.util.find_spec("jax") is None:
        done = _bpbench("worker", "--device", "xla:cpu:0")
        assert done.returncode == 2
        assert done.stderr.strip() == (
            "error: --device xla:cpu:0 cannot be served: device 'xla:cpu:0' was asked for, but the xla "
            "backend needs jax, which is not installed (install the xla extra: pip install 'bpbench[xla]')"
        )
        return
    # CI installs the xla extra: a CuPy backend is the one missing there.
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("this host has both JAX and CuPy: no backend here is missing its library")
    done = _bpbench("worker", "--device", "rocm:0")
    assert done.returncode == 2
    assert done.stderr.strip().endswith(
        "device 'rocm:0' was asked for, but CuPy is not installed, so no GPU device can be used; available: "
        "cpu (install the rocm extra: pip install 'bpbench[rocm]')"
    )
