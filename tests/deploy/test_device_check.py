"""The accelerator check's wiring, checked on a machine without a GPU (no GPU figures are made up here).

`scripts/device_check.sh` is meant for a GPU host. Here it must still parse, run the GPU tests (every one of
them collected and skipped, none failing), write its files into `$OUT`, and then fail at the benchmark with
the reason (no CuPy), exit status 1: a GPU check that passed without a GPU would be a bug. When the GPU tests
run past their time, it must also end what they started in sessions of their own (a test's GPU worker), or
that process keeps the GPU. The scripts run from a copy of the checkout made of links, without `.whl/`, so
they install nothing. `scripts/device_wheels.sh` runs with a stand-in for pip (no index is asked).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
BENCH = ROOT / "benchmarks" / "bench_gpu.py"
PINS_FILE = SCRIPTS / "device-wheels.txt"
# What the check needs of the checkout (everything but .whl/, whose wheels it would install).
CHECKOUT_PARTS = (
    "tests",
    "benchmarks",
    "engine",
    "services",
    "workers",
    "cli",
    "migrations",
    "harness",
    "pyproject.toml",
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("cupy") is not None,
    reason="CuPy is installed: run scripts/device_check.sh itself on this host",
)

HANGING_GPU_TEST = """
import os, subprocess, time
from pathlib import Path

import pytest


@pytest.mark.gpu
def test_holds_the_gpu_in_a_session_of_its_own_and_hangs() -> None:
    worker = subprocess.Popen(["sleep", "600"], start_new_session=True)  # as a test's `bpbench worker`
    (Path(__file__).parent / "worker.pid").write_text(str(worker.pid))
    time.sleep(600)
"""

# Stands in for `python3 -m pip download ... -d DEST NAME==VERSION...`: one empty wheel per pin.
PIP_DOWNLOAD_STAND_IN = """#!/usr/bin/env bash
dest=""; pins=()
while [ $# -gt 0 ]; do case "$1" in -d) dest=$2; shift 2;; *==*) pins+=("$1"); shift;; *) shift;; esac; done
for pin in "${pins[@]}"; do name=${pin%%==*}; touch "$dest/${name//-/_}-${pin##*==}-py3-none-any.whl"; done
"""


def checkout_of_links(tmp_path: Path, *, tests: Path | None = None) -> Path:
    """A checkout whose parts are links to this one (its scripts copied), optionally with other tests."""
    checkout = tmp_path / "checkout"
    shutil.copytree(SCRIPTS, checkout / "scripts")
    for part in CHECKOUT_PARTS:
        if part == "tests" and tests is not None:
            (checkout / part).symlink_to(tests)
        else:
            (checkout / part).symlink_to(ROOT / part)
    return checkout


def run_check(
    checkout: Path, out: Path, script: str = "device_check.sh", **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(checkout / "scripts" / script)],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env},
    )


def gpu_test_ids() -> list[str]:
    """The GPU tests as this environment collects them."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return [line for line in done.stdout.splitlines() if "::" in line]


def ended(pid: int) -> bool:
    """Whether the process is gone (a zombie no one has reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize("script", ["device_check.sh", "device_wheels.sh", "gpu_check.sh"])
def test_the_check_scripts_parse_as_bash(script: str) -> None:
    check = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True, timeout=30)
    assert (check.returncode, check.stderr) == (0, "")


def test_gpu_benchmark_explains_its_options() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for option in ("--configs", "--repeats", "--seconds", "--no-torch", "--json"):
        assert option in done.stdout
    assert "textbook,dezero_mlp,large" in done.stdout  # DeZero's MLP(1000, 10) and the large MLP among them


def test_the_check_without_a_gpu_skips_every_gpu_test_and_fails_at_the_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "out"

    done = run_check(checkout_of_links(tmp_path), out)

    assert done.returncode == 1, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "bench_gpu.txt",
        "environment.txt",
        "pytest_gpu.txt",
        "pytest_gpu.xml",
    ]  # no bench_gpu.json: there are no GPU figures to write
    suite = ET.parse(out / "pytest_gpu.xml").getroot().find("testsuite")
    assert suite is not None
    counts = {key: int(suite.get(key, "-1")) for key in ("tests", "skipped", "failures", "errors")}
    expected = gpu_test_ids()
    assert counts == {"tests": len(expected), "skipped": len(expected), "failures": 0, "errors": 0}
    ran = {case.get("name") for case in suite.iter("testcase")}
    assert ran == {test_id.rsplit("::", 1)[1] for test_id in expected}
    # `-m gpu` picked exactly the GPU tests out of the whole suite, and skipped every one of them.
    assert f"{counts['skipped']} skipped, " in (out / "pytest_gpu.txt").read_text()
    assert " deselected" in (out / "pytest_gpu.txt").read_text()
    assert "CuPy is not installed" in (out / "bench_gpu.txt").read_text()
    assert (out / "environment.txt").read_text().rstrip().endswith("device_check exit status: 1")


def test_gpu_tests_past_their_time_are_stopped_with_what_they_left_in_other_sessions(tmp_path: Path) -> None:
    tests = tmp_path / "hanging_tests"
    tests.mkdir()
    (tests / "test_hang.py").write_text(HANGING_GPU_TEST)
    out = tmp_path / "out"

    done = run_check(checkout_of_links(tmp_path, tests=tests), out, PYTEST_TIMEOUT_S="15")

    worker_pid = int((tests / "worker.pid").read_text())
    assert ended(worker_pid), f"the test's worker {worker_pid} outlived the check"
    log = (out / "pytest_gpu.txt").read_text()
    assert "pytest -m gpu ran past 15 s and was stopped" in log
    assert f"ending what the GPU tests left running (SIGTERM): {worker_pid}" in log
    assert done.returncode == 1


def test_the_old_name_runs_the_device_check_with_its_arguments(tmp_path: Path) -> None:
    checkout = checkout_of_links(tmp_path)
    (checkout / "scripts" / "device_check.sh").write_text('#!/usr/bin/env bash\necho "device_check $*"\n')

    done = subprocess.run(
        ["bash", str(checkout / "scripts" / "gpu_check.sh"), "--flag"],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert (done.returncode, done.stdout) == (0, "device_check --flag\n")


def test_fetching_the_wheels_twice_leaves_exactly_one_wheel_per_pin(tmp_path: Path) -> None:
    pip = tmp_path / "python3"
    pip.write_text(PIP_DOWNLOAD_STAND_IN)
    pip.chmod(0o755)
    wheels = tmp_path / "whl"
    wheels.mkdir()
    (wheels / "fastapi-0.110.0-py3-none-any.whl").touch()  # an earlier run's, of another version
    env = {**os.environ, "PYTHON": str(pip), "WHEEL_DIR": str(wheels)}
    pins = [line for line in PINS_FILE.read_text().splitlines() if line and not line.startswith("#")]

    runs = [
        subprocess.run(
            ["bash", str(SCRIPTS / "device_wheels.sh")], capture_output=True, text=True, env=env, timeout=60
        )
        for _ in range(2)
    ]

    assert [run.returncode for run in runs] == [0, 0], runs[0].stderr + runs[1].stderr
    assert "removing fastapi-0.110.0-py3-none-any.whl" in runs[0].stdout
    names = sorted(p.name for p in wheels.iterdir())
    expected = [
        f"{pin.split('==')[0].replace('-', '_')}-{pin.split('==')[1]}-py3-none-any.whl" for pin in pins
    ]
    assert names == sorted(expected)
