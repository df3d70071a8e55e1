"""The accelerator check's wiring, checked on a machine without a GPU (no GPU figures are made up here).

`scripts/device_check.sh` is meant for an accelerator host. Here it must still parse, run the GPU tests (every
one of them collected and skipped, none failing), skip the GPU parity and the benchmark with the reason (no
CuPy), say in one line that JAX has no accelerator (not a failure), time every step, write its files into
`$OUT`, and exit 1: a check that passed without an accelerator would be a bug. When the GPU tests run past
their time, it must also end what they started in sessions of their own (a test's GPU worker), or that
process keeps the GPU. Its XLA step runs for real on JAX's CPU platform when told to look there.

What the script does depends on what the host's Python can import (`scripts/device_probe.py` asks): a
folder put first on PYTHONPATH stands in for CuPy's ROCm or CUDA build (its runtime's answers, no GPU
code) or hides JAX, and the script runs with a budget too small for any GPU work, so it only detects and
reports. The scripts run from a copy of the checkout made of links, without `.whl/`, so they install
nothing. `scripts/device_wheels.sh` runs with a stand-in for pip (no index is asked).
"""

from __future__ import annotations

import importlib.util
import json
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
PROBE = SCRIPTS / "device_probe.py"
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
HAS_JAX = importlib.util.find_spec("jax") is not None
NO_CUPY = "CuPy is not importable (ModuleNotFoundError: No module named 'cupy')"
STEPS = [
    "pytest -m gpu",
    "parity on the GPU",
    "XLA (JAX) on its accelerator",
    "training benchmark: engine on GPU vs engine on CPU vs PyTorch on GPU",
]

# Stands in for CuPy as the probe sees it: the build (`is_hip`), one GPU and its name; no GPU code.
CUPY_STAND_IN = """
import types

__version__ = "14.2.0"


class _Runtime:
    is_hip = {is_hip}

    @staticmethod
    def getDeviceCount():
        return 1

    @staticmethod
    def runtimeGetVersion():
        return {version}

    @staticmethod
    def getDeviceProperties(index):
        return {{"name": b"{name}"}}


cuda = types.SimpleNamespace(runtime=_Runtime)
"""
ROCM = {"is_hip": True, "version": 70051831, "name": "AMD Instinct MI300X"}  # HIP 7.0.51831
CUDA = {"is_hip": False, "version": 13000, "name": "NVIDIA H200"}
HIDDEN_JAX = 'raise ModuleNotFoundError("No module named \'jax\'", name="jax")\n'

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

TELLS_ITS_GPU = """
import os
from pathlib import Path

import pytest


@pytest.mark.gpu
def test_writes_the_gpu_it_is_told_to_use() -> None:
    (Path(__file__).parent / "told.txt").write_text(os.environ.get("BPBENCH_TEST_GPU", "(unset)"))
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


def stand_ins(tmp_path: Path, *, cupy: dict | None = None, hide_jax: bool = False) -> dict[str, str]:
    """PYTHONPATH with a folder first that holds a stand-in CuPy and/or a JAX that cannot be imported."""
    folder = tmp_path / "stand_ins"
    if cupy is not None:
        (folder / "cupy").mkdir(parents=True)
        (folder / "cupy" / "__init__.py").write_text(CUPY_STAND_IN.format(**cupy))
    if hide_jax:
        (folder / "jax").mkdir(parents=True)
        (folder / "jax" / "__init__.py").write_text(HIDDEN_JAX)
    return {"PYTHONPATH": f"{folder}{os.pathsep}{ROOT}"}


def probe(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PROBE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


def steps_of(out: Path) -> dict[str, str]:
    """$OUT/steps.txt: each step's result by its name (every row also has its seconds)."""
    rows = [line.split("\t") for line in (out / "steps.txt").read_text().splitlines()]
    assert all(len(row) == 3 and row[2].isdigit() for row in rows), rows
    return {name: result for name, result, _ in rows}


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


@pytest.mark.slow
def test_the_check_without_an_accelerator_skips_every_gpu_step_with_its_reason_and_fails(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"

    done = run_check(checkout_of_links(tmp_path), out)

    assert done.returncode == 1, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "bench_gpu.txt",
        "environment.txt",
        "parity_gpu.txt",
        "pytest_gpu.txt",
        "pytest_gpu.xml",
        "steps.txt",
        "xla.txt",
    ]  # no parity or benchmark JSON: there are no GPU figures to write
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
    assert (out / "parity_gpu.txt").read_text() == f"skipped: {NO_CUPY}\n"
    assert (out / "bench_gpu.txt").read_text() == f"skipped: {NO_CUPY}\n"
    xla = (out / "xla.txt").read_text()
    assert xla.startswith("skipped, not a failure: JAX ") and xla.count("\n") == 1, xla
    assert steps_of(out) == dict(zip(STEPS, ["passed", "skipped", "skipped", "skipped"], strict=True))
    environment = (out / "environment.txt").read_text()
    assert f"gpu: none: {NO_CUPY}" in environment.splitlines()
    assert f"no accelerator to check: {NO_CUPY}; JAX " in environment
    assert environment.splitlines()[-1].startswith("device_check exit status: 1 (")
    assert "-- pytest -m gpu: passed in " in done.stdout  # each step's time, in the output too


@pytest.mark.slow
@pytest.mark.skipif(not HAS_JAX, reason="JAX is not installed (the xla extra)")
def test_the_xla_step_runs_parity_and_training_on_the_platform_it_looks_for(tmp_path: Path) -> None:
    out = tmp_path / "out"

    done = run_check(checkout_of_links(tmp_path), out, XLA_PLATFORMS="cpu")

    lines = (out / "xla.txt").read_text().splitlines()
    summaries = [line for line in lines if line.startswith(("parity ", "training "))]
    assert [line.split(":")[0] for line in summaries] == [
        "parity float32 on xla",
        "parity float64 on xla",
        "training on xla",
    ], lines
    assert all(line.endswith(": passed") for line in summaries[:2]), summaries
    assert "7/7 presets within 2e-03" in summaries[0] and "7/7 presets within 1e-07" in summaries[1]
    for dtype in ("float32", "float64"):
        result = json.loads((out / f"parity_xla_cpu_{dtype}.json").read_text())
        assert (result["metrics"]["dtype"], result["metrics"]["passed"]) == (dtype, True)
        assert result["fingerprint"]["device"] == "xla:cpu:0"
    training = json.loads((out / "train_xla_cpu.json").read_text())
    assert training["metrics"]["test_accuracy"] > 0.8  # 500 steps of the textbook net on mnist5k
    assert steps_of(out)["XLA (JAX) on its accelerator"] == "passed"
    # JAX's CPU is no accelerator: with no GPU either, the check still fails.
    assert "JAX's CPU platform is no accelerator" in (out / "environment.txt").read_text()
    assert done.returncode == 1


def test_a_host_without_jax_says_so_in_one_line_and_the_xla_step_is_no_failure(tmp_path: Path) -> None:
    out = tmp_path / "out"

    done = run_check(checkout_of_links(tmp_path), out, BUDGET_S="1", **stand_ins(tmp_path, hide_jax=True))

    no_jax = "JAX is not importable (ModuleNotFoundError: No module named 'jax')"
    assert (out / "xla.txt").read_text() == f"skipped, not a failure: {no_jax}\n"
    assert f"xla: none: {no_jax}" in (out / "environment.txt").read_text().splitlines()
    assert steps_of(out)["XLA (JAX) on its accelerator"] == "skipped"
    assert steps_of(out)["pytest -m gpu"] == "not run"  # the budget of 1 s: nothing that needs time ran
    assert done.returncode == 1


def test_a_step_left_without_time_in_the_budget_is_not_run_and_fails_the_check(tmp_path: Path) -> None:
    out = tmp_path / "out"

    done = run_check(checkout_of_links(tmp_path), out, BUDGET_S="1")

    assert (out / "pytest_gpu.txt").read_text() == "not run: under 10 s of the 1 s budget left\n"
    assert not (out / "pytest_gpu.xml").exists()
    assert steps_of(out)["pytest -m gpu"] == "not run"
    assert done.returncode == 1


def test_on_a_rocm_build_of_cupy_the_check_uses_rocm_0_and_describes_rocm(tmp_path: Path) -> None:
    out = tmp_path / "out"

    done = run_check(checkout_of_links(tmp_path), out, BUDGET_S="1", **stand_ins(tmp_path, cupy=ROCM))

    environment = (out / "environment.txt").read_text().splitlines()
    assert "gpu: ROCm, rocm:0: AMD Instinct MI300X, 1 GPU(s), CuPy 14.2.0 (ROCm build)" in environment
    assert "rocm: HIP 7.0.51831 (70051831), GPU 0 AMD Instinct MI300X" in environment
    assert any(line.startswith("amdsmi: ") for line in environment), environment
    assert not any("nvidia" in line.lower() or "cuda driver" in line for line in environment), environment
    # The parity runs are aimed at rocm:0; the budget of 1 s leaves them unrun (and the check failed).
    assert (out / "parity_gpu.txt").read_text().splitlines() == [
        "parity float32 on rocm:0: not run, no time left",
        "parity float64 on rocm:0: not run, no time left",
    ]
    assert steps_of(out)["parity on the GPU"] == "failed"
    assert "no accelerator to check" not in "\n".join(environment)
    assert done.returncode == 1


def test_on_a_rocm_build_the_gpu_tests_are_told_rocm_0_and_a_parity_run_that_fails_fails_the_check(
    tmp_path: Path,
) -> None:
    tests = tmp_path / "tells_its_gpu"
    tests.mkdir()
    (tests / "test_tell.py").write_text(TELLS_ITS_GPU)
    out = tmp_path / "out"
    env = stand_ins(tmp_path, cupy=ROCM)

    done = run_check(checkout_of_links(tmp_path, tests=tests), out, PARITY_TIMEOUT_S="60", **env)

    assert (tests / "told.txt").read_text() == "rocm:0"
    # The stand-in has no GPU code: each parity run ends without a result, and says so in its line.
    summaries = [
        line for line in (out / "parity_gpu.txt").read_text().splitlines() if line.startswith("parity")
    ]
    assert [line.split(" (")[0] for line in summaries] == [
        "parity on rocm:0: no result document in parity_gpu_float32.json",
        "parity on rocm:0: no result document in parity_gpu_float64.json",
    ], summaries
    assert steps_of(out)["pytest -m gpu"] == "passed"
    assert steps_of(out)["parity on the GPU"] == "failed"
    assert done.returncode == 1


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (ROCM, "rocm rocm:0 AMD Instinct MI300X, 1 GPU(s), CuPy 14.2.0 (ROCm build)"),
        (CUDA, "cuda gpu:0 NVIDIA H200, 1 GPU(s), CuPy 14.2.0 (CUDA build)"),
    ],
    ids=["rocm", "cuda"],
)
def test_the_gpu_probe_names_the_stack_and_the_device_to_run_on(
    tmp_path: Path, build: dict, expected: str
) -> None:
    done = probe("gpu", **stand_ins(tmp_path, cupy=build))

    assert (done.returncode, done.stdout) == (0, expected + "\n"), done.stderr


def test_the_gpu_probe_without_cupy_says_why_in_one_line() -> None:
    done = probe("gpu")

    assert (done.returncode, done.stdout) == (0, f"none - {NO_CUPY}\n")


@pytest.fixture(scope="module")
def parity_on_the_cpu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real parity result document, float32 on the CPU."""
    path = tmp_path_factory.mktemp("parity") / "parity_cpu_float32.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "run",
            "--kind",
            "parity",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return path


def test_a_parity_run_within_its_bounds_is_summed_up_in_one_passing_line(parity_on_the_cpu: Path) -> None:
    done = probe("parity", str(parity_on_the_cpu), "cpu")

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(
        "parity float32 on cpu (numpy): 7/7 presets within 2e-03, worst relative error "
    )
    assert done.stdout.endswith(": passed\n") and done.stdout.count("\n") == 1


def test_a_preset_beyond_its_bound_fails_the_parity_summary_by_name(
    parity_on_the_cpu: Path, tmp_path: Path
) -> None:
    result = json.loads(parity_on_the_cpu.read_text())
    result["metrics"]["presets"]["mlp tanh"]["passed"] = False
    failed = tmp_path / "failed.json"
    failed.write_text(json.dumps(result))

    done = probe("parity", str(failed), "cpu")

    assert done.returncode == 1
    assert "6/7 presets within 2e-03" in done.stdout and done.stdout.endswith(": FAILED (mlp tanh)\n")


def test_a_missing_parity_document_fails_the_summary(tmp_path: Path) -> None:
    done = probe("parity", str(tmp_path / "parity_gpu_float32.json"), "gpu:0")

    assert done.returncode == 1
    assert done.stdout.startswith(
        "parity on gpu:0: no result document in parity_gpu_float32.json (FileNotFoundError: "
    )


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
