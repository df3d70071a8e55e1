"""The engine's training step on one device for a few models: samples/s, medians of interleaved trials.

Run (the device's extra installed; see benchmarks/README.md, "Stacks"):

    .venv/bin/python benchmarks/bench_models_on_device.py --device opencl:0:0 --models textbook,convnet,large

Models (bench_engine_vs_torch.py's configurations, float32, SGD lr 0.01, 8 cycled batches of random
inputs and labels): `textbook` two_layer_net 784-50-10 at batch 100, `convnet` simple_convnet (1x28x28,
30 5x5 filters, 2x2 max pool, 100 hidden) at batch 100, `large` mlp 784-1024-1024-10 at batch 1024. Each
trial runs `--seconds` of steps (at least one) and ends synchronised with the device, after one untimed
step per model (kernels compiled, buffers made); the models take turns, in a rotating order.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine_vs_torch import CONFIGS, CONVNET, LR, POOL

from engine.backend import resolve_device, synchronize
from engine.networks import mlp, simple_convnet, two_layer_net
from engine.optimizers import SGD


def runner(config: str, device_name: str) -> tuple[Callable[[int], None], int]:
    """(run `steps` steps ending synchronised, the batch size) for a configuration on the device."""
    widths, batch = CONFIGS[config]
    device = resolve_device(device_name)
    if config == CONVNET:
        net = simple_convnet(hidden_size=widths[1], output_size=widths[-1], seed=0, device=device)
    elif widths == [784, 50, 10]:
        net = two_layer_net(seed=0, device=device)
    else:
        net = mlp(widths, init="he", seed=0, device=device)
    rng = np.random.default_rng(0)
    xp = device.xp
    pool = [
        (xp.asarray(rng.random((batch, 784), dtype=np.float32)), xp.asarray(rng.integers(0, 10, batch)))
        for _ in range(POOL)
    ]
    optimizer = SGD(LR)

    def run(steps: int) -> None:
        for i in range(steps):
            net.train_step(*pool[i % POOL], optimizer)
        synchronize(device)

    return run, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="opencl:0:0")
    parser.add_argument(
        "--models", default="textbook,convnet,large", help=f"comma list of: {', '.join(CONFIGS)}"
    )
    parser.add_argument("--rounds", type=int, default=5, help="trials per model")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of a trial")
    args = parser.parse_args()
    runs = {config: runner(config, args.device) for config in args.models.split(",")}
    steps = {}
    for config, (run, _) in runs.items():
        started = time.perf_counter()
        run(1)  # compiles the kernels, makes the buffers
        elapsed = time.perf_counter() - started
        run(1)
        started = time.perf_counter()
        run(1)
        steps[config] = max(1, int(args.seconds / max(time.perf_counter() - started, 1e-6)))
        print(f"  {config}: first step {elapsed:.2f} s; {steps[config]} steps a trial", flush=True)
    rates: dict[str, list[float]] = {config: [] for config in runs}
    names = list(runs)
    for r in range(args.rounds):
        for config in names[r % len(names) :] + names[: r % len(names)]:
            run, batch = runs[config]
            started = time.perf_counter()
            run(steps[config])
            rates[config].append(steps[config] * batch / (time.perf_counter() - started))
    print(f"{args.device}, float32, medians of {args.rounds} trials of ~{args.seconds} s")
    for config, values in rates.items():
        print(
            f"  {config:9s} {statistics.median(values):12,.0f} samples/s   "
            f"(trials {min(values):,.0f} - {max(values):,.0f})"
        )


if __name__ == "__main__":
    main()
