"""The job's reported samples/s against the bare training step and PyTorch, interleaved in one run.

Run (unsets the OpenBLAS overrides for this command only; see benchmarks/README.md):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_job_loop.py --threads 1

Each round runs, in rotating order: the train job exactly as `bpbench run --json` runs it
(`engine.jobs.run_job` on `JobSpec(...).engine_dict()`; its figure is `metrics.samples_per_s.median`,
what users see); the bare step (`Network.train_step` on batches gathered beforehand, the same network,
data and batch size); the bare step gathering its batch by fancy indexing each step, as the job's loop
does, and gathering a whole 10-step window at once; and PyTorch's step on the same architecture and
batches (as in bench_engine_vs_torch.py). The job's loop overhead is 1 - job / bare. `--profile` adds a
cProfile of one job, sorted by own time, to show where the overhead goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine_vs_torch import torch_runner

from engine.datasets import load_dataset
from engine.jobs import run_job
from engine.networks import build_network
from engine.optimizers import SGD
from services.jobs.spec import JobSpec


def job_spec(steps: int) -> dict[str, Any]:
    spec = JobSpec.model_validate(
        {
            "kind": "train",
            "model": {"name": "two_layer_net"},
            "dataset": "mnist5k",
            "steps": steps,
            "batch_size": 100,
            "optimizer": {"name": "sgd", "lr": 0.1},
        }
    )
    return spec.engine_dict()


def bare_step_rate(spec: dict[str, Any], seconds: float, gather: str = "none") -> float:
    """Samples/s of `train_step` alone on the job's data and network.

    `gather`: "none" steps on batches gathered beforehand; "step" gathers each step's batch with
    fancy indexing as the job's loop does (`x_train[indices[i]]`); "window" gathers the 10 batches
    of a timing window with one fancy index and steps on contiguous slices of it.
    """
    data = load_dataset(spec["dataset"], dtype=spec["dtype"])
    net = build_network(spec["model"], data.input_shape, data.n_classes, spec["dtype"], seed=0)
    opt = SGD(spec["optimizer"]["lr"])
    rng = np.random.default_rng(0)
    batch = spec["batch_size"]
    x_train, t_train = data.x_train, data.t_train
    xs = [x_train[rng.integers(0, data.n_train, batch)] for _ in range(8)]
    ts = [t_train[rng.integers(0, data.n_train, batch)] for _ in range(8)]

    def window() -> None:
        indices = rng.integers(0, data.n_train, size=(10, batch))
        if gather == "none":
            for i in range(10):
                net.train_step(xs[i % 8], ts[i % 8], opt)
        elif gather == "step":
            for i in range(10):
                net.train_step(x_train[indices[i]], t_train[indices[i]], opt)
        else:
            x_window, t_window = x_train[indices], t_train[indices]
            for i in range(10):
                net.train_step(x_window[i], t_window[i], opt)

    for _ in range(2):
        window()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        window()
        steps += 10
    return steps * batch / (time.perf_counter() - t0)


def torch_rate(spec: dict[str, Any], seconds: float) -> float:
    data = load_dataset(spec["dataset"], dtype="float32")
    rng = np.random.default_rng(0)
    batch = spec["batch_size"]
    xs = [np.ascontiguousarray(data.x_train[rng.integers(0, data.n_train, batch)]) for _ in range(8)]
    ts = [data.t_train[rng.integers(0, data.n_train, batch)] for _ in range(8)]
    run = torch_runner(spec["model"]["layers"], batch, xs, ts)
    run(20)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run(50)
        steps += 50
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=None, help="BLAS and torch threads (default: BLAS's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3000, help="steps of each job")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of a bare/torch repetition")
    parser.add_argument("--gap", type=float, default=0.3, help="idle seconds before each contestant")
    parser.add_argument("--profile", action="store_true", help="cProfile one job after the rounds")
    args = parser.parse_args()

    import torch

    if args.threads:
        threadpool_limits(args.threads, user_api="blas")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    spec = job_spec(args.steps)
    contestants = {
        "job": lambda: float(run_job(spec)["metrics"]["samples_per_s"]["median"]),
        "bare": lambda: bare_step_rate(spec, args.seconds),
        "gather_per_step": lambda: bare_step_rate(spec, args.seconds, "step"),
        "gather_per_window": lambda: bare_step_rate(spec, args.seconds, "window"),
        "torch": lambda: torch_rate(spec, args.seconds),
    }
    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {key: [] for key in contestants}
    order = list(contestants)
    for r in range(args.rounds):
        for key in order[r % len(order) :] + order[: r % len(order)]:
            time.sleep(args.gap)
            rates[key].append(contestants[key]())
    load_after = os.getloadavg()
    med = {key: statistics.median(v) for key, v in rates.items()}
    paired_job_torch = statistics.median(j / t for j, t in zip(rates["job"], rates["torch"], strict=True))
    paired_job_bare = statistics.median(j / b for j, b in zip(rates["job"], rates["bare"], strict=True))
    print(f"threads {args.threads or 'BLAS default'}; torch {torch.get_num_threads()}; {args.rounds} rounds")
    print(f"load average before {load_before}, after {load_after}")
    for key, value in med.items():
        print(f"  {key:17} median {value:10.0f} samples/s  rounds {[round(v) for v in rates[key]]}")
    print(f"job / torch {med['job'] / med['torch']:.2f} (paired {paired_job_torch:.2f})")
    print(f"job / bare step {med['job'] / med['bare']:.3f} (paired {paired_job_bare:.3f}): loop overhead")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run_job(spec)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
        print(out.getvalue())


if __name__ == "__main__":
    main()
