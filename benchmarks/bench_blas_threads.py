"""Which matrix products gain from more BLAS threads, and what changing the thread count costs.

Run (unsets the OpenBLAS overrides for this command only; see benchmarks/README.md):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_blas_threads.py

For each float32 product shape (the benchmark networks' own), the time of one `np.matmul(out=)` on 1
thread and on all threads, interleaved round by round (best of each round's repetitions, median over
rounds), and their ratio. Then the cost of one call of each way to change the count: threadpoolctl's
`threadpool_limits` context manager, its controller's `set_num_threads`, and the OpenBLAS function
that `engine.blas_threads` calls directly. `engine.blas_threads.WORK_PER_THREAD` is chosen from this.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.blas_threads import POOL, WORK_PER_THREAD
from engine.openblas import OPENBLAS

SHAPES = [  # (m, k, n): textbook 784-50-10 at batch 100, the convnet's Affine, the large MLP at 1024
    (100, 100, 50),  # 0.5M, 1M, 1.6M, 2M: around WORK_PER_THREAD
    (100, 200, 50),
    (64, 784, 32),
    (100, 400, 50),
    (100, 784, 50),
    (784, 100, 50),
    (100, 50, 10),
    (100, 4320, 100),
    (4320, 100, 100),
    (100, 100, 4320),
    (128, 784, 128),
    (256, 256, 256),
    (1024, 1024, 10),
    (1024, 10, 1024),
    (512, 512, 512),
    (1024, 784, 1024),
    (1024, 1024, 1024),
]


def best_time(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def per_call_us(fn: Callable[[], object], calls: int = 20000) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return 1e6 * (time.perf_counter() - t0) / calls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per shape")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the 'all threads' count")
    args = parser.parse_args()
    lib = ThreadpoolController().select(internal_api="openblas").lib_controllers[0]
    print(f"OpenBLAS {lib.version}, kernel {lib.architecture}; load average {os.getloadavg()}")
    print(f"{'m x k x n':>16} {'multiply-adds':>14} {'1 thread us':>12} {args.threads} threads us  ratio")
    for m, k, n in SHAPES:
        a = np.random.rand(m, k).astype(np.float32)
        b = np.random.rand(k, n).astype(np.float32)
        c = np.empty((m, n), np.float32)
        repeats = max(3, min(200, int(2e8 / (m * k * n))))
        product = lambda a=a, b=b, c=c: np.matmul(a, b, out=c)  # noqa: E731
        times: dict[int, list[float]] = {1: [], args.threads: []}
        for r in range(args.rounds):
            for threads in (1, args.threads) if r % 2 == 0 else (args.threads, 1):
                lib.set_num_threads(threads)
                time.sleep(0.02)  # let the other OpenBLAS threads stop spinning
                times[threads].append(best_time(product, repeats))
        one, many = statistics.median(times[1]), statistics.median(times[args.threads])
        print(f"{f'{m}x{k}x{n}':>16} {m * k * n:14,d} {1e6 * one:12.1f} {1e6 * many:14.1f}  {many / one:.2f}")
    lib.set_num_threads(args.threads)

    def with_limits() -> None:
        with threadpool_limits(1, user_api="blas"):
            pass

    POOL.begin()
    setter = OPENBLAS.setters[0]
    print(f"\nper call (us): threadpool_limits context manager {per_call_us(with_limits, 300):.1f}; ")
    print(f"  controller set_num_threads {per_call_us(lambda: lib.set_num_threads(args.threads)):.2f}; ")
    print(f"  openblas_set_num_threads (engine.blas_threads) {per_call_us(lambda: setter(args.threads)):.2f}")
    print(f"  BlasPool.fit, unchanged {per_call_us(lambda: POOL.fit(WORK_PER_THREAD * 64)):.2f}")
    POOL.end()
    print(f"  begin + end of a step {per_call_us(lambda: (POOL.begin(), POOL.fit(1), POOL.end())):.2f}")
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
