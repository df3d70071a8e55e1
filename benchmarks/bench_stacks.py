"""The textbook net's training step through each stack installed here, side by side in one run.

Run (the oneapi and xla extras installed; a stack that is not installed is left out; see
benchmarks/README.md, "Stacks"):

    .venv/bin/python benchmarks/bench_stacks.py

Contestants, each training two_layer_net (784-50-10, ReLU, float32, batch 100, plain SGD lr 0.1) on the
same cycled batches of mnist5k:

- `engine numpy`: the engine (`Network.train_step` + `SGD`) on `cpu`: NumPy and its BLAS.
- `engine oneapi`: the same engine code on `oneapi:opencl:cpu:0`: dpnp arrays on Intel's OpenCL CPU
  runtime, products by oneMKL.
- `dpnp by hand`: the same model written directly in dpnp's own idiom (plain expressions, no layer
  objects, no `out=` buffers): what the library gives a user who writes the step themselves.
- `engine xla`: the same engine code on `xla:cpu:0`, the whole step compiled by `jax.jit`
  (`Network.stepper`, as the train job runs it; bench_xla.py's runner).
- `jax by hand`: the same model in JAX's idiom (`value_and_grad`, `tree.map`, one `jax.jit`; bench_xla.py's).
- `engine opencl`: the same engine code on `opencl:0:0` (pocl's CPU device here): PyOpenCL, products by
  CLBlast, the engine's own elementwise and reduction kernels.

Each contestant runs `--steps` steps per trial, after one untimed trial; a dpnp trial ends with a wait on
the device's queue, so the clock covers the work and not only its submission. Trials are interleaved,
the order rotating every round, so machine noise hits all of them alike; medians are reported, and the
engine-against-by-hand ratio of each stack (the issue asks at least 0.9x).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine.backend import resolve_device, synchronize
from engine.datasets import load_dataset
from engine.networks import two_layer_net
from engine.optimizers import SGD

BATCH, LR, POOL = 100, 0.1, 8  # POOL: distinct batches cycled through
ONEAPI = "oneapi:opencl:cpu:0"


def batches(xp: Any) -> list[tuple[Any, Any]]:
    """POOL batches of mnist5k (float32 inputs, integer labels) as arrays of `xp`."""
    data = load_dataset("mnist5k", dtype="float32")
    rng = np.random.default_rng(0)
    picks = [rng.integers(0, len(data.x_train), BATCH) for _ in range(POOL)]
    return [(xp.asarray(data.x_train[i]), xp.asarray(data.t_train[i])) for i in picks]


def engine_step(device_name: str) -> Callable[[int], None]:
    """`steps` training steps of the engine on the device, ending synchronised."""
    device = resolve_device(device_name)
    net = two_layer_net(dtype="float32", device=device, seed=0)
    optimizer = SGD(LR)
    pool = batches(device.xp)

    def run(steps: int) -> None:
        for i in range(steps):
            x, t = pool[i % POOL]
            net.train_step(x, t, optimizer)
        synchronize(device)

    return run


def dpnp_by_hand() -> Callable[[int], None]:
    """The same model and update written in dpnp directly: expressions, no buffers, no layers."""
    device = resolve_device(ONEAPI)
    dpnp = device.xp
    rng = np.random.default_rng(0)
    w1 = dpnp.asarray((0.01 * rng.standard_normal((784, 50))).astype(np.float32))
    b1 = dpnp.zeros(50, dtype=dpnp.float32)
    w2 = dpnp.asarray((0.01 * rng.standard_normal((50, 10))).astype(np.float32))
    b2 = dpnp.zeros(10, dtype=dpnp.float32)
    pool = batches(dpnp)
    rows = dpnp.arange(BATCH)

    def step(x: Any, t: Any) -> None:
        nonlocal w1, b1, w2, b2  # updated in place: `-=` on the arrays
        h = x @ w1 + b1
        a = dpnp.maximum(h, 0)
        s = a @ w2 + b2
        e = dpnp.exp(s - s.max(axis=1, keepdims=True))
        dy = e / e.sum(axis=1, keepdims=True)
        dy[rows, t] -= 1
        dy /= BATCH
        dw2, db2 = a.T @ dy, dy.sum(axis=0)
        da = (dy @ w2.T) * (h > 0)
        dw1, db1 = x.T @ da, da.sum(axis=0)
        w1 -= LR * dw1
        b1 -= LR * db1
        w2 -= LR * dw2
        b2 -= LR * db2

    def run(steps: int) -> None:
        for i in range(steps):
            step(*pool[i % POOL])
        synchronize(device)

    return run


def measure(contestants: dict[str, Callable[[int], None]], steps: int, rounds: int) -> dict[str, list[float]]:
    """Samples/s of each trial, interleaved with a rotating order, after one untimed trial each."""
    for run in contestants.values():
        run(steps)
    rates: dict[str, list[float]] = {name: [] for name in contestants}
    names = list(contestants)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            started = time.perf_counter()
            contestants[name](steps)
            rates[name].append(steps * BATCH / (time.perf_counter() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per trial")
    parser.add_argument("--rounds", type=int, default=7, help="trials per contestant")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    contestants: dict[str, Callable[[int], Any]] = {"engine numpy": engine_step("cpu")}
    versions = [f"numpy {np.__version__}"]
    if importlib.util.find_spec("dpnp") is not None:
        # The backend imports dpnp itself, after pointing the OpenCL loader at the pip runtime.
        contestants |= {"engine oneapi": engine_step(ONEAPI), "dpnp by hand": dpnp_by_hand()}
        versions.append(f"dpnp {sys.modules['dpnp'].__version__}")
    if importlib.util.find_spec("jax") is not None:
        import jax
        from bench_xla import engine_xla_runner, jax_runner

        data = batches(np)
        xs, ts = [x for x, _ in data], [t for _, t in data]
        widths = [784, 50, 10]
        contestants |= {
            "engine xla": engine_xla_runner(widths, xs, ts),
            "jax by hand": jax_runner(widths, xs, ts),
        }
        versions.append(f"jax {jax.__version__}")
    if importlib.util.find_spec("pyopencl") is not None:
        contestants["engine opencl"] = engine_step("opencl:0:0")  # no hand-written OpenCL step to pair
        versions.append(f"pyopencl {sys.modules['pyopencl'].VERSION_TEXT}")
    rates = measure(contestants, args.steps, args.rounds)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{platform.processor() or platform.machine()}, {', '.join(versions)}")
    print(f"two_layer_net 784-50-10, float32, batch {BATCH}, {args.steps} steps x {args.rounds} rounds")
    for name, median in medians.items():
        spread = f"{min(rates[name]):,.0f} - {max(rates[name]):,.0f}"
        ratio_numpy = median / medians["engine numpy"]
        print(f"  {name:14s} {median:12,.0f} samples/s   (trials {spread}; {ratio_numpy:.3f}x engine numpy)")
    ratios = {
        stack: medians[f"engine {stack}"] / medians[f"{hand} by hand"]
        for stack, hand in (("oneapi", "dpnp"), ("xla", "jax"))
        if f"engine {stack}" in medians
    }
    for stack, ratio in ratios.items():
        print(f"  engine {stack} / by hand: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"rates": rates, "medians": medians, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
