"""Training-step throughput of the engine against PyTorch on the CPU, side by side in one run.

Run (unsets the OpenBLAS overrides for this command only; see benchmarks/README.md):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_engine_vs_torch.py

For each configuration the same architecture is trained in float32 with plain SGD on the same
batches by: the engine (`Network.train_step` + `SGD`), PyTorch (`nn.Sequential` + `optim.SGD` +
`CrossEntropyLoss`, `torch.set_num_threads` = the BLAS thread count), and a hand-written NumPy step
with `out=` buffers and no layer objects (the arithmetic alone). Repetitions are interleaved, the
order rotating every round, so machine noise hits all of them alike; medians are reported.

The GEMM-bound limit is the step's matrix products alone: the very same `np.matmul` calls the step
makes (same shapes, same transposed operands, `out=` buffers), timed back to back in the same run.
limit samples/s = batch / (their time); the step's FLOPs over that time is the matmul rate.
PyTorch's own limit is measured the same way with `torch.mm` on its layout (weights out x in), so
the table shows how much of any gap is the BLAS library (OpenBLAS for NumPy, MKL for PyTorch).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.layers import Affine
from engine.networks import Network, mlp, simple_convnet, training_flops, two_layer_net
from engine.optimizers import SGD

CONFIGS: dict[str, tuple[list[int], int]] = {
    "textbook": ([784, 50, 10], 100),
    "large": ([784, 1024, 1024, 10], 1024),
    "wide": ([784, 1024, 10], 1024),
    "convnet": ([784, 100, 10], 100),  # simple_convnet: 1x28x28, 30 5x5 filters, 2x2 max pool, 100 hidden
}
CONVNET = "convnet"
MLP_ONLY = ("numpy", "gemm", "torch_gemm")  # contestants written for fully connected nets only
LR = 0.01
POOL = 8  # distinct batches cycled through, so no framework trains on one cached batch


def blas_threads() -> tuple[int, dict[str, Any]]:
    """The BLAS pool's thread count and a short description of it (kernel, version)."""
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    if not pools:
        return os.cpu_count() or 1, {}
    pool = pools[0]
    keys = ("internal_api", "version", "architecture", "num_threads", "threading_layer", "filepath")
    return int(pool["num_threads"]), {k: pool.get(k) for k in keys}


# --- the three contestants ------------------------------------------------------------------------


Batches = list[np.ndarray]
Runner = Callable[[int], None]


def engine_network(widths: list[int], config: str = "") -> Network:
    """two_layer_net for 784-50-10, simple_convnet for the convnet, otherwise an mlp with He init."""
    if config == CONVNET:
        return simple_convnet(hidden_size=widths[1], output_size=widths[-1], seed=0)
    if widths == [784, 50, 10]:
        return two_layer_net(seed=0)
    return mlp(widths, init="he", seed=0)


def engine_runner(widths: list[int], batch: int, xs: Batches, ts: Batches, config: str = "") -> Runner:
    net = engine_network(widths, config)
    opt = SGD(LR)

    def run(steps: int) -> None:
        for i in range(steps):
            net.train_step(xs[i % POOL], ts[i % POOL], opt)

    return run


def torch_modules(widths: list[int], config: str = "") -> Any:
    """The same architecture in PyTorch: Linear/ReLU layers, or SimpleConvNet's conv-relu-pool-affine."""
    from torch import nn

    modules: list[nn.Module] = []
    if config == CONVNET:
        modules += [nn.Unflatten(1, (1, 28, 28)), nn.Conv2d(1, 30, 5), nn.ReLU(), nn.MaxPool2d(2, 2)]
        modules += [nn.Flatten(), nn.Linear(30 * 12 * 12, widths[1]), nn.ReLU(), nn.Linear(*widths[1:])]
        return nn.Sequential(*modules)
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        modules.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def torch_runner(widths: list[int], batch: int, xs: Batches, ts: Batches, config: str = "") -> Runner:
    import torch
    from torch import nn

    model = torch_modules(widths, config)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    txs = [torch.from_numpy(x) for x in xs]
    tts = [torch.from_numpy(t.astype(np.int64)) for t in ts]

    def run(steps: int) -> None:
        for i in range(steps):
            opt.zero_grad()
            loss = loss_fn(model(txs[i % POOL]), tts[i % POOL])
            loss.backward()
            opt.step()

    return run


def numpy_runner(widths: list[int], batch: int, xs: Batches, ts: Batches, config: str = "") -> Runner:
    """Hand-written float32 MLP step (ReLU, softmax cross-entropy, SGD) with out= buffers, no objects."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    Ws = [(rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(f32) for a, b in itertools.pairwise(widths)]
    bs = [np.zeros(b, f32) for b in widths[1:]]
    dWs, dbs = [np.empty_like(W) for W in Ws], [np.empty_like(b) for b in bs]
    acts = [np.empty((batch, w), f32) for w in widths[1:]]
    masks = [np.empty((batch, w), bool) for w in widths[1:-1]]
    douts = [np.empty((batch, w), f32) for w in widths[1:]]
    tmp = [np.empty_like(W) for W in Ws]
    rows = np.arange(batch)
    n_layers = len(Ws)

    def step(x: np.ndarray, t: np.ndarray) -> None:
        h = x
        ins = []
        for i in range(n_layers):
            ins.append(h)
            np.matmul(h, Ws[i], out=acts[i])
            acts[i] += bs[i]
            if i < n_layers - 1:
                np.greater(acts[i], 0, out=masks[i])
                np.maximum(acts[i], 0, out=acts[i])
            h = acts[i]
        y = acts[-1]
        y -= y.max(axis=1, keepdims=True)
        np.exp(y, out=y)
        y /= y.sum(axis=1, keepdims=True)
        d = douts[-1]
        np.multiply(y, 1.0 / batch, out=d)
        d[rows, t] -= 1.0 / batch
        for i in reversed(range(n_layers)):
            np.matmul(ins[i].T, d, out=dWs[i])
            np.sum(d, axis=0, out=dbs[i])
            if i > 0:
                nd = douts[i - 1]
                np.matmul(d, Ws[i].T, out=nd)
                np.multiply(nd, masks[i - 1], out=nd)
                d = nd
        for W, dW, b, db, tm in zip(Ws, dWs, bs, dbs, tmp, strict=True):
            np.multiply(dW, LR, out=tm)
            W -= tm
            b -= LR * db

    def run(steps: int) -> None:
        for i in range(steps):
            step(xs[i % POOL], ts[i % POOL])

    return run


def gemm_runner(widths: list[int], batch: int, xs: Batches, ts: Batches, config: str = "") -> Runner:
    """Only the step's matrix products, exactly as the engine's Affine layers issue them."""
    net = mlp(widths, init="he", seed=0)
    affines = [layer for layer in net.layers.values() if isinstance(layer, Affine)]
    rng = np.random.default_rng(1)
    calls = []
    for layer in affines:
        d, h = layer.W.shape
        x = rng.standard_normal((batch, d)).astype(np.float32)
        dout = rng.standard_normal((batch, h)).astype(np.float32)
        out, dx = np.empty((batch, h), np.float32), np.empty((batch, d), np.float32)
        calls.append((x, layer.W, out))  # forward x W
        calls.append((x.T, dout, layer.dW))  # backward x^T dout
        if layer.need_dx:
            calls.append((dout, layer.W.T, dx))  # backward dout W^T

    def run(steps: int) -> None:
        for _ in range(steps):
            for a, b, out in calls:
                np.matmul(a, b, out=out)

    return run


def torch_gemm_runner(widths: list[int], batch: int, xs: Batches, ts: Batches, config: str = "") -> Runner:
    """Only the matrix products of PyTorch's step, as nn.Linear issues them (weight stored out x in)."""
    import torch

    gen = torch.Generator().manual_seed(1)
    calls = []
    for i, (d, h) in enumerate(itertools.pairwise(widths)):
        x, dout = torch.rand(batch, d, generator=gen), torch.rand(batch, h, generator=gen)
        weight = torch.rand(h, d, generator=gen)
        calls.append((x, weight.T, torch.empty(batch, h)))  # forward x W^T
        calls.append((dout.T, x, torch.empty(h, d)))  # backward dW = dout^T x
        if i > 0:
            calls.append((dout, weight, torch.empty(batch, d)))  # backward dx = dout W

    def run(steps: int) -> None:
        for _ in range(steps):
            for a, b, out in calls:
                torch.mm(a, b, out=out)

    return run


RUNNERS: dict[str, Callable[[list[int], int, Batches, Batches, str], Runner]] = {
    "engine": engine_runner,
    "torch": torch_runner,
    "numpy": numpy_runner,
    "gemm": gemm_runner,
    "torch_gemm": torch_gemm_runner,
}


def make_batches(widths: list[int], batch: int) -> tuple[Batches, Batches]:
    data = np.random.default_rng(42)
    xs = [data.random((batch, widths[0]), dtype=np.float32) for _ in range(POOL)]
    ts = [data.integers(0, widths[-1], batch) for _ in range(POOL)]
    return xs, ts


def measure(
    name: str, widths: list[int], batch: int, repeats: int, seconds: float, gap: float
) -> dict[str, Any]:
    """Interleaved repetitions of every runner, the order rotating each round; samples/s per repetition.

    A pause of `gap` seconds precedes every repetition: OpenBLAS worker threads keep spinning for a
    while after a call (and OpenMP's after a parallel region), which would steal one of the two
    cores from whichever contestant runs next.
    """
    xs, ts = make_batches(widths, batch)
    makers = {k: m for k, m in RUNNERS.items() if not (name == CONVNET and k in MLP_ONLY)}
    runners = {key: make(widths, batch, xs, ts, name) for key, make in makers.items()}
    steps: dict[str, int] = {}
    for key, run in runners.items():  # warm up, then size a repetition to about `seconds`
        run(3)
        t0 = time.perf_counter()
        run(3)
        per_step = (time.perf_counter() - t0) / 3
        steps[key] = max(3, int(seconds / max(per_step, 1e-7)))
    trials: dict[str, list[float]] = {key: [] for key in runners}
    cpu_trials: dict[str, list[float]] = {key: [] for key in runners}
    order = list(runners)
    for r in range(repeats):
        for key in order[r % len(order) :] + order[: r % len(order)]:
            time.sleep(gap)
            c0, t0 = time.process_time(), time.perf_counter()
            runners[key](steps[key])
            t1, c1 = time.perf_counter(), time.process_time()
            trials[key].append(steps[key] * batch / (t1 - t0))
            cpu_trials[key].append(steps[key] * batch / max(c1 - c0, 1e-9))
    med = {key: statistics.median(v) for key, v in trials.items()}
    cpu_med = {key: statistics.median(v) for key, v in cpu_trials.items()}
    # Ratios within a round (same few seconds of machine state), then their median.
    paired = [e / t for e, t in zip(trials["engine"], trials["torch"], strict=True)]
    flops = training_flops(engine_network(widths, name), batch)
    for key in MLP_ONLY:  # not run for the convnet: NaN in the table
        med.setdefault(key, float("nan"))
        cpu_med.setdefault(key, float("nan"))
    return {
        "config": name,
        "widths": widths,
        "batch": batch,
        "steps_per_repetition": steps,
        "flops_per_step": flops,
        "samples_per_s": med,
        "trials": trials,
        # Samples per CPU-second of this process: with one thread, a load-robust cross-check
        # (another process's load delays the wall clock but not this process's CPU time).
        "samples_per_cpu_s": cpu_med,
        "cpu_trials": cpu_trials,
        "engine_vs_torch_cpu": cpu_med["engine"] / cpu_med["torch"],
        "engine_vs_torch": med["engine"] / med["torch"],
        "engine_vs_torch_paired": statistics.median(paired),
        "numpy_vs_torch": med["numpy"] / med["torch"],
        "engine_vs_numpy": med["engine"] / med["numpy"],
        "gemm_limit_samples_per_s": med["gemm"],
        "gemm_gflops": flops * med["gemm"] / batch / 1e9,
        "engine_gflops": flops * med["engine"] / batch / 1e9,
        "engine_of_gemm_limit": med["engine"] / med["gemm"],
        "engine_of_gemm_limit_paired": (
            statistics.median(e / g for e, g in zip(trials["engine"], trials["gemm"], strict=True))
            if "gemm" in trials
            else float("nan")
        ),
        "torch_gemm_gflops": flops * med["torch_gemm"] / batch / 1e9,
        "torch_of_gemm_limit": med["torch"] / med["torch_gemm"],
    }


def profile_engine(name: str, steps: int) -> str:
    """cProfile of the engine's training steps for one configuration: where the time goes."""
    widths, batch = CONFIGS[name]
    xs, ts = make_batches(widths, batch)
    run = engine_runner(widths, batch, xs, ts, name)
    run(3)
    profiler = cProfile.Profile()
    profiler.enable()
    run(steps)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(14)
    return out.getvalue()


def layer_times(name: str, steps: int) -> dict[str, float]:
    """Median milliseconds per engine step spent in each layer's forward and backward (perf_counter)."""
    widths, batch = CONFIGS[name]
    xs, ts = make_batches(widths, batch)
    net = engine_network(widths, name)
    opt = SGD(LR)
    parts: dict[str, list[float]] = {}

    def timed(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            parts.setdefault(key, []).append(time.perf_counter() - t0)
            return result

        return call

    for label, layer in [*net.layers.items(), ("SoftmaxWithLoss", net.last_layer)]:
        layer.forward = timed(f"{label} forward", layer.forward)  # type: ignore[method-assign]
        layer.backward = timed(f"{label} backward", layer.backward)  # type: ignore[method-assign]
    opt.update = timed("SGD update", opt.update)  # type: ignore[method-assign]
    step = timed("whole step", net.train_step)
    for i in range(steps + 3):
        step(xs[i % POOL], ts[i % POOL], opt)
    return {key: 1e3 * statistics.median(v[3:]) for key, v in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs", default="textbook,large,wide", help=f"comma list of: {', '.join(CONFIGS)}"
    )
    parser.add_argument("--repeats", type=int, default=15, help="interleaved repetitions per runner")
    parser.add_argument("--seconds", type=float, default=0.4, help="target length of one repetition")
    parser.add_argument("--gap", type=float, default=0.3, help="idle seconds before each repetition")
    parser.add_argument("--threads", type=int, default=None, help="BLAS and torch threads (default: BLAS's)")
    parser.add_argument(
        "--profile", type=int, default=0, help="also cProfile this many engine steps per config"
    )
    parser.add_argument(
        "--layers", type=int, default=0, help="also time each engine layer over this many steps per config"
    )
    parser.add_argument(
        "--work-per-thread",
        type=int,
        default=None,
        help="override engine.blas_threads.WORK_PER_THREAD (1: every product on all threads)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the full results here")
    args = parser.parse_args()

    import psutil
    import torch

    if args.threads:
        threadpool_limits(args.threads, user_api="blas")
    if args.work_per_thread is not None:
        import engine.blas_threads

        engine.blas_threads.WORK_PER_THREAD = args.work_per_thread
    threads, blas = blas_threads()
    torch.set_num_threads(threads)
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS")}
    busy_before = psutil.cpu_percent(interval=2.0)  # what others use of the machine, before we start
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    results = []
    for c in args.configs.split(","):
        results.append(measure(c, *CONFIGS[c], args.repeats, args.seconds, args.gap))
        r = results[-1]  # a progress line per configuration (stderr), the table follows at the end
        print(f"measured {c}: engine/torch {r['engine_vs_torch']:.2f}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    print(f"{started}; python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}")
    print(
        f"BLAS: {blas.get('internal_api')} {blas.get('version')}, "
        f"kernel {blas.get('architecture')}, {threads} threads"
    )
    print(f"torch threads: {torch.get_num_threads()}; env: {env}")
    print(f"CPU busy before start: {busy_before:.0f}%; load average before {load_before}, after {load_after}")
    print(
        f"{'config':9} {'batch':>5} {'engine':>9} {'torch':>9} {'numpy':>9} {'eng/torch':>9} {'paired':>6} "
        f"{'np/torch':>8} {'eng/np':>6} {'GEMM GF/s':>9} {'eng/limit':>9} {'paired':>6} "
        f"{'torch GF/s':>10} {'torch/limit':>11}"
    )
    for r in results:
        s = r["samples_per_s"]
        print(
            f"{r['config']:9} {r['batch']:5d} {s['engine']:9.0f} {s['torch']:9.0f} {s['numpy']:9.0f} "
            f"{r['engine_vs_torch']:9.2f} {r['engine_vs_torch_paired']:6.2f} {r['numpy_vs_torch']:8.2f} "
            f"{r['engine_vs_numpy']:6.2f} {r['gemm_gflops']:9.1f} {r['engine_of_gemm_limit']:9.2f} "
            f"{r['engine_of_gemm_limit_paired']:6.2f} "
            f"{r['torch_gemm_gflops']:10.1f} {r['torch_of_gemm_limit']:11.2f}"
        )
    print("samples per CPU-second of this process (engine / torch / numpy; engine/torch):")
    for r in results:
        c = r["samples_per_cpu_s"]
        print(
            f"  {r['config']:9} {c['engine']:9.0f} {c['torch']:9.0f} {c['numpy']:9.0f}  "
            f"{r['engine_vs_torch_cpu']:.2f}"
        )
    profiles = {}
    if args.profile:
        for c in args.configs.split(","):
            profiles[c] = profile_engine(c, args.profile)
            print(f"\n--- cProfile of {args.profile} engine steps, {c} ---\n{profiles[c]}")
    layers = {}
    if args.layers:
        for c in args.configs.split(","):
            layers[c] = layer_times(c, args.layers)
            print(f"\n--- engine layers, median ms per step over {args.layers} steps, {c} ---")
            for key, ms in layers[c].items():
                print(f"  {key:28} {ms:8.3f}")
    if args.json:
        doc = {
            "layers": layers,
            "started": started,
            "blas": blas,
            "threads": threads,
            "env": env,
            "cpu_busy_before_percent": busy_before,
            "load_before": load_before,
            "load_after": load_after,
            "numpy": np.__version__,
            "torch": torch.__version__,
            "results": results,
            "profiles": profiles,
        }
        args.json.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
