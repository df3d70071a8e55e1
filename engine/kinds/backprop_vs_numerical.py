"""`backprop_vs_numerical`: what a full gradient costs by backprop and by numerical differentiation."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.backend import as_numpy, draw_as
from engine.gradients import numerical_gradient
from engine.kinds.base import (
    DTYPE_BYTES,
    JobKind,
    MemoryEstimate,
    Reporter,
    build,
    calibrated_trial,
    device_of,
    estimate,
    repeat_trials,
)
from engine.networks import Network
from engine.spec import count_parameters
from engine.stats import summarize

BVN_INPUT, BVN_CLASSES, BVN_SAMPLES = 16, 4, 8  # small enough that numerical differentiation stays feasible
# Parameters, backprop's gradients, the numerical gradients and the copy compared against them.
BVN_PARAMETER_COPIES = 4


def paired_trials(
    first: Callable[[], float], second: Callable[[], float], timing: dict[str, Any]
) -> tuple[list[float], list[float], list[float], str]:
    """Trials of `first` and `second` back to back, and their ratios second/first, until the ratios settle.

    Back to back, so a burst of load on a shared machine slows both sides of a ratio alike.
    """
    firsts: list[float] = []
    seconds: list[float] = []

    def pair() -> float:
        firsts.append(first())
        seconds.append(second())
        return seconds[-1] / firsts[-1]

    ratios, reason = repeat_trials(pair, timing)
    return firsts[1:], seconds[1:], ratios, reason  # [1:]: the untimed warm-up pair


def count_passes(network: Network, fn: Callable[[], Any]) -> tuple[int, int]:
    """(forward passes, backward passes) that one call of `fn` makes through `network`, counted."""
    counts = [0, 0]
    forward, backward = network.forward, network.last_layer.backward

    def counted_forward(x: Any, train: bool = False) -> Any:
        counts[0] += 1
        return forward(x, train)

    def counted_backward(dout: float = 1.0) -> Any:
        counts[1] += 1
        return backward(dout)

    # Instance attributes shadow the methods for this one call; deleting them restores the originals.
    network.forward = counted_forward  # type: ignore[method-assign]
    network.last_layer.backward = counted_backward  # type: ignore[method-assign]
    try:
        fn()
    finally:
        del network.forward, network.last_layer.backward
    return counts[0], counts[1]


def _measure_width(
    spec: dict[str, Any], width: int, x: Any, t: Any, reporter: Reporter
) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[float]], str]:
    """One width: its row, its statistics, its trial series and why its repeats stopped."""
    device, dtype, seed = device_of(spec, in_place=True), spec["dtype"], int(spec["seed"])
    small = {**spec["model"], "name": "mlp", "layers": [BVN_INPUT, width, BVN_CLASSES], "dropout": 0.0}
    network = build(small, (BVN_INPUT,), BVN_CLASSES, dtype, device, seed)

    def loss(_: Any) -> float:
        return network.loss(x, t, train=True)

    def check_stop() -> None:
        reporter.check_stop(f"at width {width}")

    def numerical() -> dict[str, Any]:
        # One full numerical gradient of a wide layer takes seconds: the cancel check runs per element.
        return {name: numerical_gradient(loss, p, between=check_stop) for name, p in network.params.items()}

    def backprop() -> dict[str, Any]:
        return network.gradient(x, t)

    backprop_passes = count_passes(network, backprop)
    numerical_passes = count_passes(network, numerical)
    numerical_grads = numerical()
    bp_trials, num_trials, ratios, reason = paired_trials(
        calibrated_trial(backprop, device, reporter, f"at width {width}")[0],
        calibrated_trial(numerical, device, reporter, f"at width {width}")[0],
        spec["timing"],
    )
    backprop_grads = {name: as_numpy(g) for name, g in backprop().items()}
    a = np.concatenate([backprop_grads[name].ravel() for name in numerical_grads])
    b = np.concatenate([as_numpy(g).ravel() for g in numerical_grads.values()])
    # Whole-vector agreement ||a - b|| / (||a|| + ||b||): elements near a ReLU kink do not dominate.
    scale = float(np.linalg.norm(a) + np.linalg.norm(b))
    difference = float(np.linalg.norm(a - b)) / max(scale, 1e-30)
    bp, num, ratio = summarize(bp_trials), summarize(num_trials), summarize(ratios)
    row = {
        "width": width,
        "layers": [BVN_INPUT, width, BVN_CLASSES],
        "parameters": network.n_params,
        "backprop_s": bp["median"],
        "numerical_s": num["median"],
        "time_ratio": ratio["median"],
        "time_ratio_ci95": ratio["ci95"],
        "backprop_forward_evaluations": backprop_passes[0],
        "backprop_backward_passes": backprop_passes[1],
        "numerical_forward_evaluations": numerical_passes[0],
        "numerical_backward_passes": numerical_passes[1],
        "evaluation_ratio": numerical_passes[0] / backprop_passes[0],
        "relative_difference": difference,
    }
    statistics = {"backprop_s": bp, "numerical_s": num, "time_ratio": ratio}
    trials = {"backprop_s": bp_trials, "numerical_s": num_trials, "time_ratio": ratios}
    return row, statistics, trials, reason


def run(spec: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Run a `backprop_vs_numerical` job; the result body."""
    device, dtype = device_of(spec, in_place=True), spec["dtype"]
    widths = [int(w) for w in spec["bvn_widths"]]
    rng = np.random.default_rng(int(spec["seed"]))
    x = device.xp.asarray(draw_as(rng.random, (BVN_SAMPLES, BVN_INPUT), dtype))
    t = device.xp.asarray(rng.integers(0, BVN_CLASSES, BVN_SAMPLES))
    rows: list[dict[str, Any]] = []
    statistics: dict[str, Any] = {}
    trials: dict[str, list[float]] = {}
    reasons: dict[str, str] = {}
    for index, width in enumerate(sorted(widths)):
        reporter.report(index / len(widths), f"width {width}: timing", force=True)
        row, statistics[f"width_{width}"], series, reasons[f"width_{width}"] = _measure_width(
            spec, width, x, t, reporter
        )
        trials.update({f"width_{width}/{name}": values for name, values in series.items()})
        rows.append(row)
    return {
        "metrics": {
            "sizes": rows,
            "input_width": BVN_INPUT,
            "n_classes": BVN_CLASSES,
            "samples": BVN_SAMPLES,
            "ratio_grows_with_parameters": all(
                b["time_ratio"] > a["time_ratio"] for a, b in itertools.pairwise(rows)
            ),
        },
        "statistics": statistics,
        "trials": trials,
        "timing": {"stop_reasons": reasons},
    }


def estimate_memory(spec: dict[str, Any]) -> MemoryEstimate:
    """The widest of the small networks it builds, in copies (no data set: the inputs are random)."""
    n_params = count_parameters([BVN_INPUT, max(int(w) for w in spec["bvn_widths"]), BVN_CLASSES])
    return estimate({"networks": BVN_PARAMETER_COPIES * n_params * DTYPE_BYTES[spec["dtype"]]})


KIND = JobKind(
    name="backprop_vs_numerical",
    summary="times a full gradient by backprop and by numerical differentiation as the network grows",
    run=run,
    estimate_memory=estimate_memory,
)
