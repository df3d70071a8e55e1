"""How long each job kind runs past `should_stop()` turning true (cancel and soft time limit latency).

Run:

    .venv/bin/python benchmarks/bench_cancel_latency.py --runs 3

Each kind runs through `engine.jobs.run_job` (the code a worker runs) with a spec whose longest unit of work
lasts seconds here; `should_stop()` turns true `--after` seconds after the engine first asks it, so the stop
lands mid-way through that work. Prints, per kind, every run's seconds past the stop and the maximum.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.jobs import run_job
from engine.kinds.base import JobCancelled

KINDS: dict[str, dict[str, Any]] = {
    "train (defaults)": {"kind": "train", "device": "cpu"},
    "gemm 3072 float64": {"kind": "gemm", "device": "cpu", "dtype": "float64", "gemm_sizes": [3072]},
    "gemm 8192 float64": {"kind": "gemm", "device": "cpu", "dtype": "float64", "gemm_sizes": [8192]},
    "backprop_vs_numerical 4096 float64": {
        "kind": "backprop_vs_numerical",
        "device": "cpu",
        "dtype": "float64",
        "bvn_widths": [4096, 4095],
    },
    "gradcheck (defaults) float64": {"kind": "gradcheck", "device": "cpu", "dtype": "float64"},
}


def seconds_past_the_stop(spec: dict[str, Any], after_s: float) -> float:
    """Run `spec` with a stop that turns true `after_s` after the first check; seconds it ran past that."""
    first_check: list[float] = []

    def should_stop() -> bool:
        now = time.perf_counter()
        if not first_check:
            first_check.append(now)
        return now >= first_check[0] + after_s

    try:
        run_job(spec, should_stop=should_stop)
    except JobCancelled:
        return time.perf_counter() - (first_check[0] + after_s)
    raise RuntimeError(f"{spec['kind']} finished before the stop: make its work longer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--after", type=float, default=1.0, help="seconds after the first stop check")
    args = parser.parse_args()
    figures = {}
    for name, spec in KINDS.items():
        runs = [seconds_past_the_stop(spec, args.after) for _ in range(args.runs)]
        figures[name] = runs
        print(f"{name}: max {max(runs):.3f} s past the stop ({', '.join(f'{r:.3f}' for r in runs)})")
    print(json.dumps({"seconds_past_the_stop": figures}))


if __name__ == "__main__":
    main()
