"""`gradcheck`: backprop against central differences on a small version of the model."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from engine.backend import Device, draw_as, seed_everything
from engine.gradients import gradient_check
from engine.kinds.base import (
    DTYPE_BYTES,
    JobKind,
    MemoryEstimate,
    Reporter,
    build,
    device_of,
    estimate,
    network_bytes,
)
from engine.networks import Network
from engine.spec import count_parameters

GRADCHECK_SAMPLES = 3  # as the textbook
# Central-difference steps tried; each parameter reports the better (1e-5 when 1e-4 straddles a ReLU kink).
GRADCHECK_STEPS: dict[str, tuple[float, ...]] = {"float64": (1e-4, 1e-5), "float32": (1e-2, 1e-3)}
GRADCHECK_MAX_ELEMENTS = 1000  # elements checked per parameter (a seeded random subset of larger ones)
GRADCHECK_MAX_PARAMETERS = 50_000  # above this, gradcheck shrinks the hidden widths
GRADCHECK_CONV_INPUT = (1, 8, 8)  # simple_convnet on an 8x8 image: 5x5 conv -> 4x4 -> pool -> 2x2
# Pass/fail only in float64: float32 central differences are rounding-bound (relative errors of 1e-2..0.5).
GRADCHECK_THRESHOLDS: dict[str, float | None] = {"float64": 1e-7, "float32": None}


def checked_model(spec: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, ...], int]:
    """The small model checked (the spec's if small, else narrower hidden layers), its input and classes."""
    model = dict(spec["model"])
    layers = [int(w) for w in model["layers"]]
    n_classes = layers[-1]
    if model["name"] == "simple_convnet":
        model["layers"] = [layers[0], min(layers[1], 32) if len(layers) >= 3 else 32, n_classes]
        return model, GRADCHECK_CONV_INPUT, n_classes
    if count_parameters(layers) > GRADCHECK_MAX_PARAMETERS:
        layers = [min(layers[0], 64), *(min(w, 16) for w in layers[1:-1]), n_classes]
    model["layers"] = layers
    return model, (layers[0],), n_classes


def checked_network(spec: dict[str, Any], dtype: str, device: Device) -> tuple[Network, tuple[int, ...], int]:
    """The network `checked_model` describes, built."""
    model, shape, n_classes = checked_model(spec)
    return build(model, shape, n_classes, dtype, device, int(spec["seed"])), shape, n_classes


def run(spec: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Run a `gradcheck` job; the result body."""
    device = device_of(spec, in_place=True)
    dtype = spec["dtype"]
    seed = int(spec["seed"])
    seed_everything(seed, device)
    network, shape, n_classes = checked_network(spec, dtype, device)
    rng = np.random.default_rng(seed)
    # Random inputs: the check is about the derivative, not the data; a few samples keep it cheap.
    x = device.xp.asarray(draw_as(rng.random, (GRADCHECK_SAMPLES, *shape), dtype))
    t = device.xp.asarray(rng.integers(0, n_classes, GRADCHECK_SAMPLES))
    t0 = time.perf_counter()
    checks = []
    steps = GRADCHECK_STEPS[dtype]
    for index, h in enumerate(steps):
        reporter.report(index / len(steps), f"gradcheck: {network.n_params} parameters, h={h:g}", force=True)
        reporter.check_stop("during the gradient check")
        checks.append(
            gradient_check(
                network,
                x,
                t,
                h,
                max_elements=GRADCHECK_MAX_ELEMENTS,
                seed=seed,
                richardson=True,
                between=lambda: reporter.check_stop("during the gradient check"),
            )
        )
    seconds = time.perf_counter() - t0
    threshold = GRADCHECK_THRESHOLDS[dtype]
    # A wrong backward is wrong at every step; the best step only drops the approximation's own error
    # (a large step may straddle a ReLU kink, a small one loses digits to rounding).
    parameters: dict[str, dict[str, Any]] = {}
    for name in checks[0]["parameters"]:
        best = min(checks, key=lambda check: check["parameters"][name]["max_rel"])
        errors = best["parameters"][name]
        passed = None if threshold is None else errors["max_rel"] <= threshold
        parameters[name] = {**errors, "h": best["h"], "passed": passed}
    max_rel = max((p["max_rel"] for p in parameters.values()), default=0.0)
    return {
        "metrics": {
            "max_relative_error": max_rel,
            "max_abs_error": max((p["max_abs"] for p in parameters.values()), default=0.0),
            "parameters": parameters,
            "threshold": threshold,
            "passed": None if threshold is None else max_rel <= threshold,
            "dtype": dtype,
            "method": "central differences, Richardson-extrapolated; per parameter the better of the steps",
            "steps_tried": list(steps),
            "floor": checks[0]["floor"],
            "network": repr(network),
            "n_parameters": network.n_params,
            "input_shape": list(shape),
            "samples": GRADCHECK_SAMPLES,
            "check_time_s": seconds,
        },
        "trials": [],
    }


def estimate_memory(spec: dict[str, Any]) -> MemoryEstimate:
    """The checked network on its few random samples; the numerical gradient is one more parameter copy.

    No data set is loaded: the check runs on random inputs.
    """
    model, shape, _ = checked_model(spec)
    return estimate(network_bytes(model, shape, DTYPE_BYTES[spec["dtype"]], GRADCHECK_SAMPLES, 1))


KIND = JobKind(
    name="gradcheck",
    summary="checks backprop against central differences on a small version of the model",
    run=run,
    estimate_memory=estimate_memory,
)
