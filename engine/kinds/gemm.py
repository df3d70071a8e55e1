"""`gemm`: the device's square matrix-multiply rate (the yardstick of every efficiency figure)."""

from __future__ import annotations

from typing import Any

import numpy as np

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


def run(spec: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Run a `gemm` job; the result body."""
    device = device_of(spec)
    dtype = spec["dtype"]
    xp = device.xp
    rng = np.random.default_rng(int(spec["seed"]))
    sizes = [int(n) for n in spec["gemm_sizes"]]
    rows: list[dict[str, Any]] = []
    statistics: dict[str, Any] = {}
    trials: dict[str, list[float]] = {}
    reasons: dict[str, str] = {}
    for index, n in enumerate(sizes):
        reporter.report(index / len(sizes), f"gemm {n}x{n}", force=True)
        a = xp.asarray(rng.random((n, n)).astype(dtype))
        b = xp.asarray(rng.random((n, n)).astype(dtype))
        c = xp.empty((n, n), dtype=dtype)

        def matmul(a: Any = a, b: Any = b, c: Any = c) -> None:
            xp.matmul(a, b, out=c)

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
            }
        )
        del a, b, c
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
