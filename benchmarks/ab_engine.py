"""A/B: this checkout's engine against the engine of another commit, interleaved in one process.

Run (unsets the OpenBLAS overrides for this command only; see benchmarks/README.md):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/ab_engine.py --threads 1

The other commit's `engine/` is extracted with `git archive` into a temporary folder and imported as
`engine_before` (its `engine.` imports rewritten), so both engines train the same configuration of
bench_engine_vs_torch.py on the same batches, round by round in rotating order, with the GEMM-bound limit
(the step's matrix products alone) in the same rounds for the fully connected nets. Reported per
contestant: median samples/s of the wall clock and of this process's CPU time (load-robust at 1 thread),
and for each ratio also its paired form: the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine_vs_torch import CONFIGS, CONVNET, LR, POOL, engine_runner, gemm_runner, make_batches

ROOT = Path(__file__).resolve().parents[1]


def extract_engine(rev: str, into: Path) -> None:
    """`git archive REV engine` into `into/engine_before`, imports renamed."""
    archive = subprocess.run(["git", "archive", rev, "engine"], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    (into / "engine").rename(into / "engine_before")
    for path in (into / "engine_before").rglob("*.py"):
        text = re.sub(r"\bfrom engine(\.| import)", r"from engine_before\1", path.read_text())
        path.write_text(re.sub(r"\bimport engine\.", "import engine_before.", text))


def before_runner(widths: list[int], batch: int, xs: Any, ts: Any, config: str) -> Any:
    networks = importlib.import_module("engine_before.networks")
    optimizers = importlib.import_module("engine_before.optimizers")
    if config == CONVNET:
        net = networks.simple_convnet(hidden_size=widths[1], output_size=widths[-1], seed=0)
    elif widths == [784, 50, 10]:
        net = networks.two_layer_net(seed=0)
    else:
        net = networks.mlp(widths, init="he", seed=0)
    opt = optimizers.SGD(LR)

    def run(steps: int) -> None:
        for i in range(steps):
            net.train_step(xs[i % POOL], ts[i % POOL], opt)

    return run


def paired(wall: dict[str, list[float]], a: str, b: str) -> float:
    """The median over rounds of a's rate over b's in the same round (each round's noise cancels)."""
    return statistics.median(x / y for x, y in zip(wall[a], wall[b], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", default="main", help="the commit whose engine is B")
    parser.add_argument("--configs", default="large,convnet", help=f"comma list of: {', '.join(CONFIGS)}")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: BLAS's)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=0.4)
    parser.add_argument("--gap", type=float, default=0.1)
    parser.add_argument(
        "--grain",
        type=int,
        nargs=2,
        metavar=("A", "B"),
        default=None,
        help="WORK_PER_THREAD of A and of B (e.g. `--before HEAD --grain 4194304 16777216`: the grain alone)",
    )
    parser.add_argument(
        "--b-without-kernels",
        action="store_true",
        help="B runs NumPy's chains instead of engine.kernels (`--before HEAD --b-without-kernels`: the "
        "compiled ReLU alone). An engine before them picked SciPy's OpenBLAS once Numba loaded it (three "
        "times slower), so compare those with bench_engine_vs_torch.py runs, not in one process",
    )
    args = parser.parse_args()
    if args.threads:
        threadpool_limits(args.threads, user_api="blas")
    tmp = Path(tempfile.mkdtemp(prefix="ab-engine-"))
    extract_engine(args.before, tmp)
    sys.path.insert(0, str(tmp))
    if args.grain:
        importlib.import_module("engine.blas_threads").WORK_PER_THREAD = args.grain[0]
        importlib.import_module("engine_before.blas_threads").WORK_PER_THREAD = args.grain[1]
    if args.b_without_kernels:
        importlib.import_module("engine_before.kernels")._compiled = {}
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.before], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    print(f"B = engine of {args.before} ({rev}); A = this checkout; threads {args.threads or 'BLAS default'}")
    if args.grain:
        print(f"WORK_PER_THREAD: A {args.grain[0]}, B {args.grain[1]}")
    if args.b_without_kernels:
        print("B without engine.kernels (NumPy's chains)")
    print(f"load average before {os.getloadavg()}")
    for config in args.configs.split(","):
        widths, batch = CONFIGS[config]
        xs, ts = make_batches(widths, batch)
        runners = {
            "A (this)": engine_runner(widths, batch, xs, ts, config),
            "B (before)": before_runner(widths, batch, xs, ts, config),
        }
        if config != CONVNET:
            runners["gemm limit"] = gemm_runner(widths, batch, xs, ts, config)
        steps = {}
        for key, run in runners.items():
            run(3)
            t0 = time.perf_counter()
            run(3)
            steps[key] = max(3, int(args.seconds / ((time.perf_counter() - t0) / 3)))
        wall: dict[str, list[float]] = {k: [] for k in runners}
        cpu: dict[str, list[float]] = {k: [] for k in runners}
        order = list(runners)
        for r in range(args.repeats):
            for key in order[r % len(order) :] + order[: r % len(order)]:
                time.sleep(args.gap)
                c0, t0 = time.process_time(), time.perf_counter()
                runners[key](steps[key])
                t1, c1 = time.perf_counter(), time.process_time()
                wall[key].append(steps[key] * batch / (t1 - t0))
                cpu[key].append(steps[key] * batch / max(c1 - c0, 1e-9))
        w = {k: statistics.median(v) for k, v in wall.items()}
        c = {k: statistics.median(v) for k, v in cpu.items()}
        print(f"\n{config} (batch {batch}, {args.repeats} rounds): samples/s wall / per CPU-second")
        for key in runners:
            print(f"  {key:11} {w[key]:10.0f} {c[key]:10.0f}")
        print(
            f"  A / B: wall {w['A (this)'] / w['B (before)']:.3f}, "
            f"CPU {c['A (this)'] / c['B (before)']:.3f}, "
            f"paired {paired(wall, 'A (this)', 'B (before)'):.3f}"
        )
        if "gemm limit" in runners:
            for key in ("A (this)", "B (before)"):
                print(
                    f"  {key} / GEMM limit: wall {w[key] / w['gemm limit']:.3f}, "
                    f"CPU {c[key] / c['gemm limit']:.3f}, paired {paired(wall, key, 'gemm limit'):.3f}"
                )
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
