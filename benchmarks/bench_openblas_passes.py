"""The CPU step's passes outside the products: NumPy's expressions against engine.openblas's BLAS calls.

Run (unsets the OpenBLAS overrides for this command only; see benchmarks/README.md):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_openblas_passes.py

For float32 arrays of several sizes (the textbook net's, one at `engine.openblas.MIN_VALUES`, the large
MLP's 1024 x 1024), median microseconds of:
- the SGD update: `p -= np.multiply(g, lr, out=tmp)` (the engine's plain form) against `openblas.axpy`;
- the bias gradient: `np.sum(a, axis=0)` against `openblas.gemv_into` with a vector of ones;
- y = x W + b: `np.matmul` then `y += b` against `openblas.gemm_add(bias=b)` (the product included);
each "hot" (the arrays just used, in cache) and "cold" (a 64 MiB buffer written between calls, as the
large products in between do in a training step), alternating call by call. The private routines are
timed below MIN_VALUES too, which is how that threshold was chosen.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import openblas
from engine.openblas import MIN_VALUES, OPENBLAS

FLUSH = np.ones(64 << 20, np.uint8)


def timed(fns: dict[str, Callable[[], object]], cold: bool, calls: int) -> dict[str, float]:
    """Median microseconds per call of each function, called in turn `calls` times."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(calls):
        for key, fn in fns.items():
            if cold:
                np.add(FLUSH, 1, out=FLUSH)
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: 1e6 * statistics.median(v) for k, v in times.items()}


def cases(rng: np.random.Generator, rows: int, cols: int) -> dict[str, tuple[Callable[[], object], ...]]:
    """Each pass as (NumPy's form, the BLAS routine) on float32 arrays of rows x cols."""
    p, g = (rng.standard_normal((rows, cols)).astype(np.float32) for _ in range(2))
    tmp, ones, column = np.empty_like(p), np.ones(rows, np.float32), np.empty(cols, np.float32)
    x = rng.standard_normal((rows, 784)).astype(np.float32)
    w = rng.standard_normal((784, cols)).astype(np.float32)
    b = rng.standard_normal(cols).astype(np.float32)
    y = np.empty((rows, cols), np.float32)

    def numpy_affine() -> None:
        np.matmul(x, w, out=y)
        y.__iadd__(b)

    return {
        "SGD update": (
            lambda: p.__isub__(np.multiply(g, 1e-4, out=tmp)),
            lambda: openblas._axpy(-1e-4, g, p),
        ),
        "bias gradient": (
            lambda: np.sum(g, axis=0, out=column),
            lambda: openblas._gemv_into(ones, g, column),
        ),
        "x W + b, k 784": (numpy_affine, lambda: openblas._gemm_add(x, w, y, b)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=60, help="calls of each, alternating")
    args = parser.parse_args()
    if not OPENBLAS.usable():
        sys.exit("NumPy's BLAS is not an OpenBLAS engine.openblas can call")
    threads = int(OPENBLAS.getter()) if OPENBLAS.getter else 0
    print(f"OpenBLAS pool {threads} threads; MIN_VALUES {MIN_VALUES}; load average {os.getloadavg()}")
    rng = np.random.default_rng(0)
    print(f"{'pass':>15} {'shape':>10} {'':>4} {'numpy us':>9} {'blas us':>8} {'blas/numpy':>10}")
    for rows, cols in ((100, 50), (784, 50), (256, 256), (1024, 1024)):
        for name, (plain, blas) in cases(rng, rows, cols).items():
            for cold in (False, True):
                t = timed({"numpy": plain, "blas": blas}, cold, args.calls)
                print(
                    f"{name:>15} {f'{rows}x{cols}':>10} {'cold' if cold else 'hot':>4} {t['numpy']:9.1f} "
                    f"{t['blas']:8.1f} {t['blas'] / t['numpy']:10.2f}"
                )
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
