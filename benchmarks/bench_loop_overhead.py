"""The train job's reported samples/s against its bare step and PyTorch's, interleaved in one run.

Run (unsets the OpenBLAS overrides for this command only; see benchmarks/README.md):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
        .venv/bin/python benchmarks/bench_loop_overhead.py --threads 1

Each round runs, in rotating order: the train job as `bpbench run --json` runs it (`engine.jobs.run_job` on
`JobSpec(two_layer_net, mnist5k, batch 100, sgd 0.1).engine_dict()`; its figure is
`metrics.samples_per_s.median`, what users see), the bare step (`Network.train_step` with the optimizer on
batches gathered beforehand: the same network, data and batch size) and PyTorch's step on the same
architecture and batches (`bench_engine_vs_torch.torch_runner`). The loop's overhead is 1 - job / bare,
as a share of a step; ratios are medians of the per-round ratios. The load average is printed around it.

Two throughputs measured minutes apart on a shared guest differ by more than 5% on their own, so the loop's
own cost is also measured directly, in the same rounds: the job's `TrainingLoop.train_chunk` (its stopwatch,
cancel check, loss bookkeeping: everything inside a timed window but the step) driving a step that does
nothing, in microseconds per step, against the bare step's microseconds. That share does not depend on two
noisy rates agreeing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine_vs_torch import POOL, torch_runner

from engine.datasets import load_dataset
from engine.jobs import _Progress, run_job
from engine.kinds.train import TrainingLoop
from engine.networks import build_network
from engine.optimizers import SGD
from engine.spec import resolve_spec
from services.jobs.spec import JobSpec


def job_spec(steps: int) -> dict[str, Any]:
    """The textbook net's train job, fully resolved as the worker runs it."""
    fields = {"kind": "train", "model": {"name": "two_layer_net"}, "dataset": "mnist5k", "steps": steps}
    fields |= {"batch_size": 100, "optimizer": {"name": "sgd", "lr": 0.1}}
    return JobSpec.model_validate(fields).engine_dict()


def pooled_batches(spec: dict[str, Any]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """POOL batches of the job's data, gathered once (so the bare contestants time steps only)."""
    data = load_dataset(spec["dataset"], dtype=spec["dtype"])
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, data.n_train, spec["batch_size"]) for _ in range(POOL)]
    return [data.x_train[r] for r in rows], [data.t_train[r] for r in rows]


def rate(run: Callable[[int], None], batch: int, seconds: float) -> float:
    """Samples/s of `run(10)` repeated for about `seconds`, after a warm-up."""
    run(20)
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run(10)
        steps += 10
    return steps * batch / (time.perf_counter() - started)


def bare_runner(spec: dict[str, Any], xs: list[np.ndarray], ts: list[np.ndarray]) -> Callable[[int], None]:
    """`train_step` alone on the job's network (built as the job builds it) and optimizer."""
    data = load_dataset(spec["dataset"], dtype=spec["dtype"])
    net = build_network(spec["model"], data.input_shape, data.n_classes, spec["dtype"], seed=0)
    opt = SGD(spec["optimizer"]["lr"])

    def run(steps: int) -> None:
        for i in range(steps):
            net.train_step(xs[i % POOL], ts[i % POOL], opt)

    return run


def loop_alone_us(spec: dict[str, Any], windows: int) -> float:
    """Microseconds per step of the job's timed window around a step that does nothing: the median over
    `windows` windows of `TrainingLoop.train_chunk`, with a cancel check and progress callback installed as
    a worker installs them (both answer at once)."""
    loop = TrainingLoop(resolve_spec(spec), _Progress(lambda fraction, message: None, lambda: False))

    def noop(x: Any, t: Any) -> Callable[[], float]:
        return lambda: 0.0

    loop.step = noop
    per_step = [loop.train_chunk(loop.window)[0] / loop.window for _ in range(windows)]
    return statistics.median(per_step) * 1e6


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--threads", type=int, default=None, help="BLAS and torch threads (default: all)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3000, help="steps of each job")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of a bare or torch repetition")
    parser.add_argument("--gap", type=float, default=0.2, help="idle seconds before each contestant")
    args = parser.parse_args()

    import torch

    threads = args.threads or os.cpu_count() or 1
    threadpool_limits(threads, user_api="blas")
    torch.set_num_threads(threads)
    spec = job_spec(args.steps)
    xs, ts = pooled_batches(spec)
    batch = spec["batch_size"]
    contestants: dict[str, Callable[[], float]] = {
        "job": lambda: float(run_job(spec)["metrics"]["samples_per_s"]["median"]),
        "bare": lambda: rate(bare_runner(spec, xs, ts), batch, args.seconds),
        "torch": lambda: rate(torch_runner(spec["model"]["layers"], batch, xs, ts), batch, args.seconds),
    }
    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {name: [] for name in contestants}
    loops: list[float] = []
    order = list(contestants)
    for r in range(args.rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            time.sleep(args.gap)
            rates[name].append(contestants[name]())
        loops.append(loop_alone_us(spec, windows=200))
    load_after = os.getloadavg()

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    engine_dir = Path(sys.modules["engine"].__file__ or "").parent
    print(f"threads {threads} (BLAS and torch); {args.rounds} rounds; engine from {engine_dir}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    for name, values in rates.items():
        print(f"  {name:6} median {statistics.median(values):10.0f} samples/s  {[round(v) for v in values]}")
    job_bare = paired("job", "bare")
    print(f"job / bare {job_bare:.3f} (loop overhead {1 - job_bare:.1%} of a step)")
    loop_us = statistics.median(loops)
    step_us = batch / statistics.median(rates["bare"]) * 1e6
    print(
        f"the loop alone: {loop_us:.2f} us per step (rounds {[round(v, 2) for v in loops]}), the bare step "
        f"{step_us:.1f} us: the loop's own share of a step {loop_us / (loop_us + step_us):.2%}"
    )
    print(f"job / torch {paired('job', 'torch'):.2f}; bare / torch {paired('bare', 'torch'):.2f}")


if __name__ == "__main__":
    main()
