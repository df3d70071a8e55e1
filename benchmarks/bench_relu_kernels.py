"""ReLU in one compiled pass (engine.kernels, Numba) against NumPy's chain, by size and right after a product.

Run (unsets the OpenBLAS overrides for this command only; see benchmarks/README.md):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_relu_kernels.py

For float32 arrays of 2^10 to 2^20 values, median microseconds of a ReLU's forward and backward, in place
as `Network` runs them: NumPy's chain (`greater` into the mask, `multiply` by it; `multiply` by the mask
backward) against `kernels.relu_forward`/`relu_backward`, alternating call by call. The kernels are timed
below `kernels.MIN_VALUES` too, which is how that threshold was chosen. Then "after a product": each
form right after the 1024 x 1024 x 1024 matrix product whose output it reads (the large MLP's hidden
layer, on the BLAS threads), the product's own time subtracted, as a training step meets it.

`--memory`: what the kernels add to a fresh process's peak resident set (VmHWM), the number behind
`kernels.KERNELS_RUNTIME_BYTES`: a process that runs a ReLU of `MIN_VALUES` values through NumPy's chain,
one that runs the kernels loaded from Numba's cache, and one that compiles them for both dtypes (an
empty cache folder).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import kernels


def chain(x: np.ndarray, mask: np.ndarray, dout: np.ndarray) -> None:
    np.greater(x, 0, out=mask)
    np.multiply(x, mask, out=x)
    np.multiply(dout, mask, out=dout)


def compiled(x: np.ndarray, mask: np.ndarray, dout: np.ndarray) -> None:
    assert kernels._run("relu_forward", x, mask, x) and kernels._run("relu_backward", dout, mask, dout)


def both_forms(x: np.ndarray, mask: np.ndarray, dout: np.ndarray) -> dict[str, Callable[[], object]]:
    return {"chain": lambda: chain(x, mask, dout), "kernels": lambda: compiled(x, mask, dout)}


PEAK_PROBE = """
import sys, numpy as np
from engine import kernels
from engine.layers import Relu
if sys.argv[1] == "chain":
    kernels._compiled = {}  # as without Numba
for dtype in sys.argv[2:]:
    layer = Relu()
    layer.in_place = True  # as Network runs it after an Affine layer
    layer.backward(layer.forward(np.linspace(-1, 1, kernels.MIN_VALUES, dtype=dtype)).copy())
assert ("numba" in sys.modules) == (sys.argv[1] == "kernels")
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


def peak_kib(mode: str, dtypes: list[str], cache_dir: str | None = None) -> int:
    """VmHWM (KiB) of a fresh process running a ReLU layer of each dtype, by the kernels or NumPy's chain."""
    env = {**os.environ, **({"NUMBA_CACHE_DIR": cache_dir} if cache_dir else {})}
    out = subprocess.run(
        [sys.executable, "-c", PEAK_PROBE, mode, *dtypes],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[-1])


def memory() -> None:
    both = ["float32", "float64"]
    chain = peak_kib("chain", both)
    peak_kib("kernels", both)  # compiled into Numba's cache, if not there yet
    cached = peak_kib("kernels", both)
    with tempfile.TemporaryDirectory() as empty:
        compiled = peak_kib("kernels", both, cache_dir=empty)
    print(
        f"peak resident set (VmHWM) of a fresh process running a float32 and a float64 ReLU layer of "
        f"{kernels.MIN_VALUES} values, forward and backward:"
    )
    print(f"  NumPy's chain: {chain / 1024:.1f} MiB")
    print(f"  kernels from Numba's cache: {cached / 1024:.1f} MiB (+{(cached - chain) / 1024:.1f})")
    print(f"  kernels compiled, both dtypes: {compiled / 1024:.1f} MiB (+{(compiled - chain) / 1024:.1f})")
    print(f"  kernels.KERNELS_RUNTIME_BYTES: {kernels.KERNELS_RUNTIME_BYTES / 2**20:.1f} MiB")


def timed(fns: dict[str, Callable[[], object]], calls: int) -> dict[str, float]:
    """Median microseconds per call of each function, called in turn `calls` times."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(calls):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - start) * 1e6)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=400, help="calls of each form per size")
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads of the product")
    parser.add_argument("--memory", action="store_true", help="the peak memory the kernels add, only")
    args = parser.parse_args()
    if not kernels.available():
        sys.exit("Numba is not installed: nothing to compare")
    if args.memory:
        memory()
        return
    threadpool_limits(args.threads, user_api="blas")
    minimum, kernels.MIN_VALUES = kernels.MIN_VALUES, 0  # time the kernels below their threshold too
    rng = np.random.default_rng(0)
    print(f"numpy {np.__version__}, numba {__import__('numba').__version__}, MIN_VALUES = {minimum}")
    print(f"{'values':>8} {'chain us':>9} {'kernels us':>10} {'kernels/chain':>13}")
    for power in range(10, 21, 2):
        x = rng.standard_normal(1 << power).astype(np.float32)
        dout, mask = x.copy(), np.empty(x.size, bool)
        compiled(x, mask, dout)  # compiled or loaded from the cache before timing
        med = timed(both_forms(x, mask, dout), args.calls)
        ratio = med["kernels"] / med["chain"]
        print(f"{'2^' + str(power):>8} {med['chain']:9.1f} {med['kernels']:10.1f} {ratio:13.2f}")

    a = rng.standard_normal((1024, 1024)).astype(np.float32)
    w = rng.standard_normal((1024, 1024)).astype(np.float32)
    y, mask, dout = np.empty((1024, 1024), np.float32), np.empty((1024, 1024), bool), a.copy()

    def product() -> None:
        np.matmul(a, w, out=y)

    med = timed(
        {
            "product": product,
            "chain": lambda: (product(), chain(y, mask, dout)),
            "kernels": lambda: (product(), compiled(y, mask, dout)),
        },
        max(20, args.calls // 8),
    )
    chain_us, kernel_us = med["chain"] - med["product"], med["kernels"] - med["product"]
    print(
        f"after a 1024^3 product ({med['product']:.0f} us, {args.threads} BLAS threads): "
        f"chain {chain_us:.1f} us, kernels {kernel_us:.1f} us, kernels/chain {kernel_us / chain_us:.2f}"
    )


if __name__ == "__main__":
    main()
