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
- `opencl by hand`: the same model in PyOpenCL's idiom: buffers made once, CLBlast's GEMM with transposes as
  flags, and five small kernels of its own (bias and ReLU, the softmax gradient per row, column sums, ReLU's
  backward, the SGD update).

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
from types import SimpleNamespace
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


OPENCL_KERNELS = """
__kernel void bias_relu(__global float *h, __global float *a, __global const float *b, int n) {
    int i = get_global_id(0);
    float v = h[i] + b[i % n];
    h[i] = v;
    a[i] = v > 0.0f ? v : 0.0f;
}
__kernel void softmax_grad(__global float *s, __global const float *b, __global const int *t, int k,
                           float scale) {
    int r = get_global_id(0);
    __global float *row = s + r * k;
    float m = -INFINITY, sum = 0.0f;
    for (int j = 0; j < k; j++) { row[j] += b[j]; m = fmax(m, row[j]); }
    for (int j = 0; j < k; j++) { row[j] = exp(row[j] - m); sum += row[j]; }
    for (int j = 0; j < k; j++) row[j] = (row[j] / sum - (j == t[r] ? 1.0f : 0.0f)) * scale;
}
__kernel void column_sums(__global const float *x, __global float *out, int rows, int cols) {
    int j = get_global_id(0);
    float acc = 0.0f;
    for (int i = 0; i < rows; i++) acc += x[i * cols + j];
    out[j] = acc;
}
__kernel void relu_back(__global float *d, __global const float *h) {
    int i = get_global_id(0);
    if (h[i] <= 0.0f) d[i] = 0.0f;
}
__kernel void sgd(__global float *w, __global const float *g, float lr) {
    int i = get_global_id(0);
    w[i] -= lr * g[i];
}
"""


def opencl_by_hand() -> Callable[[int], None]:
    """The same model in PyOpenCL's own idiom: `pyopencl.array` buffers made once, CLBlast's GEMM for the
    products (transposes as flags), and the five small kernels an OpenCL programmer writes for the rest."""
    import pyclblast
    import pyopencl as cl
    import pyopencl.array as cla

    context = cl.Context([cl.get_platforms()[0].get_devices()[0]])
    queue = cl.CommandQueue(context)
    program = cl.Program(context, OPENCL_KERNELS).build()
    # Each kernel retrieved once: `program.name` makes a new kernel object on every access.
    names = ("bias_relu", "softmax_grad", "column_sums", "relu_back", "sgd")
    kernels = SimpleNamespace(**{name: cl.Kernel(program, name) for name in names})
    rng = np.random.default_rng(0)
    f32 = np.float32
    w1 = cla.to_device(queue, (0.01 * rng.standard_normal((784, 50))).astype(f32))
    w2 = cla.to_device(queue, (0.01 * rng.standard_normal((50, 10))).astype(f32))
    b1, b2 = cla.zeros(queue, 50, f32), cla.zeros(queue, 10, f32)
    h, a, da = (cla.empty(queue, (BATCH, 50), f32) for _ in range(3))
    s = cla.empty(queue, (BATCH, 10), f32)
    dw1, dw2 = cla.empty(queue, (784, 50), f32), cla.empty(queue, (50, 10), f32)
    db1, db2 = cla.empty(queue, 50, f32), cla.empty(queue, 10, f32)
    pool = [(cla.to_device(queue, x), cla.to_device(queue, t.astype(np.int32))) for x, t in batches(np)]

    def run_kernel(kernel: Any, size: int, *args: Any) -> None:
        kernel.set_args(*args)
        cl.enqueue_nd_range_kernel(queue, kernel, (size,), None)

    def step(x: Any, t: Any) -> None:
        pyclblast.gemm(queue, BATCH, 50, 784, x, w1, h, a_ld=784, b_ld=50, c_ld=50)
        run_kernel(kernels.bias_relu, BATCH * 50, h.data, a.data, b1.data, np.int32(50))
        pyclblast.gemm(queue, BATCH, 10, 50, a, w2, s, a_ld=50, b_ld=10, c_ld=10)
        run_kernel(kernels.softmax_grad, BATCH, s.data, b2.data, t.data, np.int32(10), f32(1 / BATCH))
        pyclblast.gemm(queue, 50, 10, BATCH, a, s, dw2, a_ld=50, b_ld=10, c_ld=10, a_transp=True)
        run_kernel(kernels.column_sums, 10, s.data, db2.data, np.int32(BATCH), np.int32(10))
        pyclblast.gemm(queue, BATCH, 50, 10, s, w2, da, a_ld=10, b_ld=10, c_ld=50, b_transp=True)
        run_kernel(kernels.relu_back, BATCH * 50, da.data, h.data)
        pyclblast.gemm(queue, 784, 50, BATCH, x, da, dw1, a_ld=784, b_ld=50, c_ld=50, a_transp=True)
        run_kernel(kernels.column_sums, 50, da.data, db1.data, np.int32(BATCH), np.int32(50))
        for w, g in ((w1, dw1), (b1, db1), (w2, dw2), (b2, db2)):
            run_kernel(kernels.sgd, w.size, w.data, g.data, f32(LR))

    def run(steps: int) -> None:
        for i in range(steps):
            step(*pool[i % POOL])
        queue.finish()

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
        contestants["engine opencl"] = engine_step("opencl:0:0")
        contestants["opencl by hand"] = opencl_by_hand()
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
        for stack, hand in (("oneapi", "dpnp"), ("xla", "jax"), ("opencl", "opencl"))
        if f"engine {stack}" in medians
    }
    for stack, ratio in ratios.items():
        print(f"  engine {stack} / by hand: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"rates": rates, "medians": medians, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
