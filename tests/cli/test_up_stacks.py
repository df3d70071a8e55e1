"""`bpbench up --stack`: a worker per device of each installed stack beside the CPU worker, and a
one-line refusal for a stack that is not one, or not installed.

Real `bpbench up` processes (embedded broker, SQLite) on data directories of their own.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from sqlalchemy.orm import Session

from cli.stack import stack_workers
from services.core.db import make_engine
from services.devices.models import Device
from tests.cli.test_up_faults import run_up
from tests.support.needs import require_module


def test_a_stack_that_is_not_registered_is_refused_in_one_line_with_the_accepted_names(tmp_path) -> None:
    result = run_up(tmp_path / "data", "--stack", "metal")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --stack 'metal' is not a stack; accepted: all, ")
    assert "rocm" in line and "xla" in line
    assert not (tmp_path / "data").exists()  # refused before anything was started or written


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_a_stack_whose_library_is_missing_names_the_extra_to_install(tmp_path) -> None:
    result = run_up(tmp_path / "data", "--stack", "rocm")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line == "error: --stack rocm: cupy is not installed (pip install 'bpbench[rocm]')"


def test_the_stacks_up_always_starts_are_not_started_twice() -> None:
    assert stack_workers(["numpy", "cuda"]) == []


def test_up_with_the_xla_stack_registers_this_cpu_through_numpy_and_through_xla(tmp_path) -> None:
    require_module("jax", "the xla extra: pip install 'bpbench[xla]'")
    data_dir = tmp_path / "data"
    result = run_up(data_dir, "--stack", "xla", timeout_s=180)
    assert result.returncode == 0, result.stdout + result.stderr
    engine = make_engine(f"sqlite:///{data_dir / 'bpbench.db'}")
    with Session(engine) as session:
        devices = session.query(Device).all()
    engine.dispose()
    assert sorted(d.fingerprint["backend"]["name"] for d in devices) == ["numpy", "xla"]
    # One CPU, two stacks: the same hardware name and vendor on both rows.
    assert len({(d.name, d.vendor) for d in devices}) == 1


def test_every_oneapi_worker_up_would_start_can_serve_its_device() -> None:
    """The SYCL runtime also lists pocl's CPU device where it is installed (CI installs it); dpnp cannot
    allocate there, and `bpbench up --stack all` failed starting a worker for it. Each device is resolved
    in a fresh process, as its worker would."""
    require_module("dpnp", "the oneapi extra: pip install 'bpbench[oneapi]'")
    code = (
        "from cli.stack import stack_workers\n"
        "from engine.backend import resolve_device\n"
        "devices = stack_workers(['oneapi'])\n"
        "print(' '.join(resolve_device(d).name for d in devices))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    served = done.stdout.split()
    assert "oneapi:opencl:cpu:0" in served
    assert all(name.startswith("oneapi:") for name in served)
