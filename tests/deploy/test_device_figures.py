"""`scripts/device_figures.sh`'s own logic, with a stand-in for the interpreter (the benchmarks it calls run
for real in their own tests and on the lent host; no figure is made up here): the steps in their order with
the arguments the README quotes, each bounded by what is left of the budget, steps that would start with
under 20 s left listed as not run (not failed), and the exit status 1 when a step that ran failed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STEPS = [
    "engine vs torch, {n} threads",
    "job vs torch, {n} threads",
    "engine vs torch, 1 thread",
    "per layer, {n} threads",
    "one BLAS thread a product, {n} threads",
    "change-point runs, cpu",
    "change-point runs, gpu:0",
]
# Records each call's arguments; fails the call whose arguments contain $FAIL_ON (when set).
STAND_IN = """#!/usr/bin/env bash
echo "$*" >>"$CALLS"
if [ -n "${FAIL_ON:-}" ] && [[ "$*" == *"$FAIL_ON"* ]]; then echo "failing as asked" >&2; exit 3; fi
echo "figures of: $*"
"""


def _checkout(tmp_path: Path) -> Path:
    """The script in a folder of its own (no .whl/, so nothing is installed)."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "device_figures.sh").write_text((ROOT / "scripts" / "device_figures.sh").read_text())
    return root


def _run(tmp_path: Path, budget: int, fail_on: str = "") -> tuple[subprocess.CompletedProcess[str], Path]:
    root = _checkout(tmp_path)
    python = tmp_path / "python"
    python.write_text(STAND_IN)
    python.chmod(0o755)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHON": str(python),
        "OUT": str(out),
        "BUDGET_S": str(budget),
        "CALLS": str(tmp_path / "calls.txt"),
        "FAIL_ON": fail_on,
    }
    done = subprocess.run(
        ["bash", str(root / "scripts" / "device_figures.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done, out


def test_every_step_runs_in_order_with_the_quoted_arguments(tmp_path: Path) -> None:
    done, out = _run(tmp_path, budget=300)
    assert done.returncode == 0, done.stdout + done.stderr
    threads = os.cpu_count()
    names = [line.split("\t")[0] for line in (out / "figures_steps.txt").read_text().splitlines()]
    assert names == [step.format(n=threads) for step in STEPS]
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls[0] == (
        "benchmarks/bench_engine_vs_torch.py --configs textbook,large,convnet "
        f"--threads {threads} --repeats 5 --seconds 0.5 --gap 0.05"
    )
    assert calls[4].endswith("--work-per-thread 1099511627776")
    assert calls[5].endswith(f"--runs 40 --device cpu --series 0 --save-runs {out}/runs_cpu.json")
    assert calls[6].endswith(f"--runs 20 --device gpu:0 --series 0 --save-runs {out}/runs_gpu.json")
    assert "figures of: benchmarks/bench_loop_overhead.py" in (out / "loop_all.txt").read_text()
    assert "device_figures exit status: 0" in done.stdout


def test_a_failed_step_fails_the_run_and_the_rest_still_run(tmp_path: Path) -> None:
    done, out = _run(tmp_path, budget=300, fail_on="--device gpu:0")
    assert done.returncode == 1
    steps = (out / "figures_steps.txt").read_text().splitlines()
    assert steps[-1].startswith("change-point runs, gpu:0\texit 3\t") and len(steps) == len(STEPS)
    assert all("\texit 0\t" in line for line in steps[:-1])
    assert "failing as asked" in (out / "changepoints_gpu.txt").read_text()


def test_steps_with_under_20_s_of_budget_left_are_listed_not_run(tmp_path: Path) -> None:
    done, out = _run(tmp_path, budget=10)
    assert done.returncode == 0, done.stdout + done.stderr  # nothing ran, nothing failed
    steps = (out / "figures_steps.txt").read_text().splitlines()
    assert len(steps) == len(STEPS)
    assert all("not run" in line and "of the 10 s budget left" in line for line in steps)
    assert not (tmp_path / "calls.txt").exists()
