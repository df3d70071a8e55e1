"""False-alarm and detection rates of the change-point detector on histories made of real measured runs.

Run:

    .venv/bin/python benchmarks/bench_changepoints.py --runs 40 --series 1000

1. Measure: `--runs` real training jobs of one spec (the textbook net, 784-50-10, batch 100, one BLAS
   thread) through `engine.jobs.run_job`, the code a worker runs; each gives its reported median samples/s,
   which is what one point of a device's history is.
2. Resample: `--series` histories of `--length` points, each point a run drawn at random (with
   replacement) from those measured runs. Without a change, every history is flagged or not; with a
   planted step, the points from a random index on (at least `--min-side` from either end, default 5:
   three results after a change are too few for any test at 1% over a 20-point series) are multiplied
   by `1 + step` for each `--step`, and the step counts as found when a change point of the right sign
   lies within `--tolerance` results of it (default 1).
3. Print the rates, the runs' own spread (CV of the run medians), the load average before and after, and
   a JSON line.

`--device gpu:0` measures the same job on a GPU. `--save-runs FILE --series 0` only measures, and writes the
runs (with the machine, device, time and load) to FILE; `--runs-from FILE` resamples such a file instead of
measuring, so runs taken on a borrowed quiet host (`scripts/device_figures.sh`) are resampled anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.jobs import run_job
from services.jobs.spec import JobSpec
from services.results.changepoints import ALPHA, MIN_SEGMENT, detect_change_points


def measured_runs(runs: int, steps: int, device: str = "cpu") -> list[float]:
    """The median samples/s of `runs` real jobs of the textbook spec on `device`, run one after another."""
    spec = JobSpec.model_validate(
        {
            "kind": "train",
            "device": device,
            "model": {"name": "two_layer_net", "layers": [784, 50, 10]},
            "dataset": "mnist5k",
            "steps": steps,
            "batch_size": 100,
        }
    ).engine_dict()
    medians = []
    with threadpool_limits(limits=1, user_api="blas"):
        for index in range(runs):
            result = run_job(spec)
            medians.append(float(result["metrics"]["samples_per_s"]["median"]))
            print(f"run {index + 1}/{runs}: {medians[-1]:,.0f} samples/s", file=sys.stderr)
    return medians


def measure(runs: int, steps: int, device: str) -> dict[str, Any]:
    """`runs` real jobs on `device`, with the machine they ran on and the load before and after."""
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    medians = measured_runs(runs, steps, device)
    return {
        "run_medians": medians,
        "device": device,
        "steps": steps,
        "machine": f"{_cpu_name()}, {os.cpu_count()} CPUs, {_gpu_name(device)}",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "measured_s": time.monotonic() - started,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def _cpu_name() -> str:
    """The CPU's model name as Linux reports it, or the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_name(device: str) -> str:
    """The GPU's name where the jobs ran on one ("no GPU" on the CPU)."""
    if device.split(":")[0] == "cpu":
        return "no GPU"
    import cupy

    properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    return str(properties["name"].decode())


def rates(
    pool: list[float],
    series: int,
    length: int,
    step: float,
    seed: int,
    min_side: int = MIN_SEGMENT,
    tolerance: int = 1,
) -> dict[str, Any]:
    """The share of no-change histories flagged, and of planted steps found, over `series` each."""
    rng = np.random.default_rng(seed)
    values = np.asarray(pool)
    false_alarms = found = 0
    for index in range(series):
        history = rng.choice(values, size=length, replace=True)
        if detect_change_points(history, seed=index):
            false_alarms += 1
        at = int(rng.integers(min_side, length - min_side + 1))
        stepped = rng.choice(values, size=length, replace=True)
        stepped[at:] *= 1 + step
        points = detect_change_points(stepped, seed=series + index)
        if any(abs(p.index - at) <= tolerance and np.sign(p.change) == np.sign(step) for p in points):
            found += 1
    return {
        "false_alarm_rate": false_alarms / series,
        "detection_rate": found / series,
        "series": series,
        "length": length,
        "step": step,
        "min_side": min_side,
        "tolerance": tolerance,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=40, help="real jobs measured (default 40)")
    parser.add_argument("--steps", type=int, default=1500, help="training steps per job (default 1500)")
    parser.add_argument("--series", type=int, default=1000, help="histories per case (default 1000)")
    parser.add_argument(
        "--length", type=int, nargs="+", default=[20], help="results per history (default 20)"
    )
    parser.add_argument(
        "--step", type=float, nargs="+", default=[-0.05], help="planted relative steps (default -0.05)"
    )
    parser.add_argument(
        "--min-side", type=int, default=5, help="fewest results either side of a planted step (default 5)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tolerance",
        type=int,
        default=1,
        help="a step is found when a change point of its sign lies this many results from it (default 1)",
    )
    parser.add_argument(
        "--device", default="cpu", help="the device the jobs run on, as a job spec names it (default cpu)"
    )
    parser.add_argument(
        "--save-runs", type=Path, help="write the measured runs (medians, machine, load) to this JSON file"
    )
    parser.add_argument(
        "--runs-from",
        type=Path,
        help="resample the runs a --save-runs file holds (measured elsewhere) instead of measuring here",
    )
    args = parser.parse_args()

    if args.runs_from:
        measured = json.loads(args.runs_from.read_text())
        print(f"runs measured on {measured['machine']}, device {measured['device']}, {measured['when']}")
    else:
        measured = measure(args.runs, args.steps, args.device)
        if args.save_runs:
            args.save_runs.write_text(json.dumps(measured, indent=1) + "\n")
    pool = measured["run_medians"]
    load_before, load_after = measured["load_before"], measured["load_after"]
    cv = statistics.stdev(pool) / statistics.mean(pool)
    print(f"machine: {measured['machine']}; device {measured['device']}")
    print(
        f"measured {len(pool)} runs in {measured['measured_s']:.0f} s: median {statistics.median(pool):,.0f} "
        f"samples/s, CV of run medians {cv:.2%}; load average before {load_before:.2f}, "
        f"after {load_after:.2f}"
    )
    if args.series == 0:
        return
    print(f"| results per history | planted step | false alarms (no change) | step found | alpha {ALPHA} |")
    print("|---|---|---|---|---|")
    table = []
    for length in args.length:
        for step in args.step:
            figures = rates(pool, args.series, length, step, args.seed, args.min_side, args.tolerance)
            table.append(figures)
            print(
                f"| {length} | {step:+.0%} | {figures['false_alarm_rate']:.1%} | "
                f"{figures['detection_rate']:.1%} | {args.series} histories |"
            )
    print(
        json.dumps(
            {
                "rates": table,
                "runs": len(pool),
                "run_medians": pool,
                "run_cv": cv,
                "machine": measured["machine"],
                "device": measured["device"],
                "load_before": load_before,
                "load_after": load_after,
            }
        )
    )


if __name__ == "__main__":
    main()
