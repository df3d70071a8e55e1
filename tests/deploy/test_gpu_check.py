"""The GPU check's wiring, checked on a machine without a GPU (no GPU figures are made up here).

`scripts/gpu_check.sh` is meant for a GPU host. Here it must still parse, run the GPU tests (every one of
them collected and skipped, none failing), write its files into `$OUT`, and then fail at the benchmark with
the reason (no CuPy), exit status 1: a GPU check that passed without a GPU would be a bug. The script runs
from a copy of the checkout made of links, without the `.whl/` folder, so it installs nothing.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
BENCH = ROOT / "benchmarks" / "bench_gpu.py"
GPU_TESTS = ROOT / "tests" / "test_gpu.py"
# What the script needs of the checkout (everything but .whl/, whose wheels it would install).
CHECKOUT_PARTS = ("tests", "benchmarks", "engine", "services", "workers", "migrations", "pyproject.toml")

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("cupy") is not None,
    reason="CuPy is installed: run scripts/gpu_check.sh itself on this host",
)


def names_of_tests(path: Path) -> set[str]:
    """The names of the test functions defined in a test module."""
    tree = ast.parse(path.read_text())
    return {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


def test_gpu_check_script_parses_as_bash() -> None:
    check = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert (check.returncode, check.stderr) == (0, "")


def test_gpu_benchmark_explains_its_options() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for option in ("--configs", "--repeats", "--seconds", "--no-torch", "--json"):
        assert option in done.stdout
    assert "textbook,dezero_mlp,large" in done.stdout  # the three configurations of the issue


def test_gpu_check_without_a_gpu_skips_the_gpu_tests_and_fails_at_the_benchmark(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy2(SCRIPT, checkout / "scripts" / SCRIPT.name)
    for part in CHECKOUT_PARTS:
        (checkout / part).symlink_to(ROOT / part)
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}

    done = subprocess.run(
        ["bash", str(checkout / "scripts" / SCRIPT.name)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )

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
    assert counts["tests"] == counts["skipped"] >= len(names_of_tests(GPU_TESTS))
    assert (counts["failures"], counts["errors"]) == (0, 0)
    ran = {case.get("name") for case in suite.iter("testcase")}
    assert names_of_tests(GPU_TESTS) <= ran
    # `-m gpu` picked exactly the GPU tests out of the whole suite, and skipped every one of them.
    assert f"{counts['skipped']} skipped, " in (out / "pytest_gpu.txt").read_text()
    assert " deselected" in (out / "pytest_gpu.txt").read_text()
    assert "CuPy is not installed" in (out / "bench_gpu.txt").read_text()
    assert (out / "environment.txt").read_text().rstrip().endswith("gpu_check exit status: 1")
