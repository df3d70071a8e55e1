"""`gemm`: the device's square matrix-multiply rate (the yardstick of every efficiency figure)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.backend import Device, Stopwatch, draw_as
from engine.kinds.base import (
    DTYPE_BYTES,
    JobKind,
    MemoryEstimate,
    Reporter,
    calibrated_trial,
    device_of,
    estimate,
    repeat_trials,
)
from engine.stats import headline, summarize

# One matmul of 8192x8192 float64 takes tens of seconds on a CPU: a longer one is computed in row blocks
# of about this many seconds each, with a cancel check between blocks. Shorter ones stay one call.
BLOCK_S = 0.1
PROBE_N = 512  # the square matmul timed to estimate the device's rate, which sizes the first blocks
PANEL_ROWS = 64  # blocks of whole 64-row panels keep the BLAS kernels efficient


def estimated_flops_per_s(xp: Any, dtype: str, device: Device) -> float:
    """The device's rate on a small square matmul: a first guess of its rate on large ones."""
    a = xp.asarray(draw_as(np.random.default_rng(0).random, (PROBE_N, PROBE_N), dtype))
    c = xp.empty((PROBE_N, PROBE_N), dtype=dtype)
    xp.matmul(a, a, out=c)  # first call: allocation and library start-up
    stopwatch = Stopwatch(device)
    stopwatch.start()
    xp.matmul(a, a, out=c)
    return 2.0 * PROBE_N**3 / max(stopwatch.stop(), 1e-9)


def block_rows(n: int, flops_per_s: float) -> int:
    """Rows of the product computed per call so one call lasts about `BLOCK_S` (all `n` when it is short)."""
    rows = int(BLOCK_S * flops_per_s / (2.0 * n * n))
    if rows >= n:
        return n
    return max(1, rows // PANEL_ROWS * PANEL_ROWS or rows)


class BlockedMatmul:
    """`c = a @ b` in row blocks of about `BLOCK_S` each, with `check()` between blocks.

    The block height starts from the probe's rate and follows the measured time of each block (a shared
    machine's rate moves), growing at most twofold per block.
    """

    def __init__(self, xp: Any, a: Any, b: Any, c: Any, rows: int, check: Callable[[], None]) -> None:
        self.xp, self.a, self.b, self.c, self.rows, self.check = xp, a, b, c, rows, check
        self.n = a.shape[0]

    def __call__(self) -> None:
        start = 0
        while start < self.n:
            stop = min(start + self.rows, self.n)
            began = time.perf_counter()
            self.xp.matmul(self.a[start:stop], self.b, out=self.c[start:stop])
            elapsed = time.perf_counter() - began
            wanted = int(self.rows * BLOCK_S / max(elapsed, 1e-6))
            self.rows = min(self.n, max(1, min(wanted, 2 * self.rows)))
            start = stop
            if start < self.n:
                self.check()


def run(spec: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Run a `gemm` job; the result body."""
    device = device_of(spec, in_place=True)
    dtype = spec["dtype"]
    xp = device.xp
    rng = np.random.default_rng(int(spec["seed"]))
    sizes = [int(n) for n in spec["gemm_sizes"]]
    rows: list[dict[str, Any]] = []
    statistics: dict[str, Any] = {}
    trials: dict[str, list[float]] = {}
    reasons: dict[str, str] = {}
    rate = estimated_flops_per_s(xp, dtype, device)
    for index, n in enumerate(sizes):
        reporter.report(index / len(sizes), f"gemm {n}x{n}", force=True)
        # Drawn in float64 and rounded block by block (draw_as): no float64 copy of a matrix.
        a = xp.asarray(draw_as(rng.random, (n, n), dtype))
        b = xp.asarray(draw_as(rng.random, (n, n), dtype))
        c = xp.empty((n, n), dtype=dtype)
        reporter.check_stop(f"at gemm {n}")  # drawing two large matrices takes a while too

        check = functools.partial(reporter.check_stop, f"at gemm {n}")
        matmul = BlockedMatmul(xp, a, b, c, block_rows(n, rate), check)
        trial, inner = calibrated_trial(matmul, device, reporter, f"at gemm {n}")
        seconds, reason = repeat_trials(trial, spec["timing"])
        rates = [2.0 * n**3 / s for s in seconds]
        summary = summarize(rates)
        statistics[str(n)] = {"flops_per_s": summary, "seconds": summarize(seconds)}
        trials[str(n)] = rates
        reasons[str(n)] = reason
        rows.append(
            {
                "n": n,
                "flops": 2 * n**3,
                "flops_per_s": headline(summary),
                "seconds_per_matmul": float(np.median(seconds)),
                "matmuls_per_trial": inner,
                "rows_per_call": matmul.rows,
            }
        )
        del a, b, c, matmul
    best = max(rows, key=lambda row: row["flops_per_s"]["median"])
    return {
        "metrics": {
            "peak_flops_per_s": best["flops_per_s"]["median"],
            "peak_size": best["n"],
            "dtype": dtype,
            "sizes": rows,
        },
        "statistics": statistics,
        "trials": trials,
        "timing": {"stop_reasons": reasons},
    }


def estimate_memory(spec: dict[str, Any]) -> MemoryEstimate:
    """The three largest matrices (a, b and the product); no model, no data set."""
    n = max(int(n) for n in spec["gemm_sizes"])
    return estimate({"matrices": 3 * n * n * DTYPE_BYTES[spec["dtype"]]})


def result_columns(spec: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """No model, data set or batch: the peak FLOP rate is the result's column."""
    return {
        "model_name": None,
        "dataset": None,
        "batch_size": None,
        "peak_flops_per_s": metrics.get("peak_flops_per_s"),
    }


KIND = JobKind(
    name="gemm",
    summary="measures the device's square matrix-multiply rate (its FLOP/s peak)",
    run=run,
    estimate_memory=estimate_memory,
    result_columns=result_columns,
)
