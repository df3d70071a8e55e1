"""Numerical differentiation and the gradient check (backprop against central differences).

Relative error of one element, with a the backprop value and b the numerical one:

    rel = |a - b| / max(|a| + |b|, floor),   floor = 1e-3 * (largest |a| over the whole network)

Central differences carry an absolute rounding error of about eps * |loss| / h whatever the size
of the element, so an element far below the network's gradient scale (or an exactly zero one, such
as the bias of an Affine followed by BatchNorm) is judged against that scale instead of against
its own noise-sized magnitude. `max_rel` is the largest value over the checked elements of a
parameter; `max_relative_error` is the largest over all parameters. The step h defaults to the
textbook's 1e-4 in float64 (1e-2 in float32); a smooth, deep or batch-normalised network may prefer
1e-5 (smaller truncation error), a network on wide inputs 1e-4 (smaller rounding error).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from engine.backend import as_numpy
from engine.layers import Array, BatchNorm

FLOOR_FRACTION = 1e-3
TINY = 1e-30


def default_step(dtype: Any) -> float:
    """Default central-difference step: the textbook's 1e-4 for float64, 1e-2 for float32."""
    return 1e-4 if np.dtype(dtype) == np.float64 else 1e-2


def numerical_gradient(
    f: Callable[[Array], float],
    x: Array,
    h: float | None = None,
    indices: Iterable[tuple[int, ...]] | None = None,
    between: Callable[[], None] | None = None,
) -> Array:
    """Central difference (f(x + h e_i) - f(x - h e_i)) / 2h for each element i of x.

    `x` is perturbed in place, one element at a time, and restored exactly; `f` is called with
    `x` and must read it (e.g. `lambda _: net.loss(xb, tb)` when x is one of the net's parameters).
    `indices` limits the work to those elements; the others are left zero in the result.
    `between()` is called after each element (x restored): a cancel check may raise there.
    """
    h = default_step(x.dtype) if h is None else h
    grad = x * 0
    if indices is None:
        indices = np.ndindex(*x.shape)
    for idx in indices:
        original = x[idx].copy()
        x[idx] = original + h
        f_plus = f(x)
        x[idx] = original - h
        f_minus = f(x)
        grad[idx] = (f_plus - f_minus) / (2 * h)
        x[idx] = original  # restore the exact old value, not (x + h) - h
        if between is not None:
            between()
    return grad


def relative_error(a: np.ndarray, b: np.ndarray, floor: float | None = None) -> np.ndarray:
    """|a - b| / max(|a| + |b|, floor), elementwise, with a the backprop and b the numerical values.

    `floor` defaults to 1e-3 times the largest |a| in these arrays (a network-wide check passes
    the network's scale instead; see the module docstring).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if floor is None:
        floor = FLOOR_FRACTION * float(np.abs(a).max(initial=0.0))
    return np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), max(floor, TINY))


def compare_gradients(backprop: dict[str, Any], numerical: dict[str, Any]) -> dict[str, Any]:
    """Per-parameter {"max_abs", "max_rel"} and the overall maxima, with the network-wide floor."""
    a_all = {name: as_numpy(g).astype(np.float64) for name, g in backprop.items()}
    scale = max((float(np.abs(g).max(initial=0.0)) for g in a_all.values()), default=0.0)
    floor = max(FLOOR_FRACTION * scale, TINY)
    parameters = {}
    for name, a in a_all.items():
        b = as_numpy(numerical[name]).astype(np.float64)
        parameters[name] = {
            "max_abs": float(np.abs(a - b).max(initial=0.0)),
            "max_rel": float(relative_error(a, b, floor).max(initial=0.0)),
        }
    return {
        "parameters": parameters,
        "max_relative_error": max((p["max_rel"] for p in parameters.values()), default=0.0),
        "max_abs_error": max((p["max_abs"] for p in parameters.values()), default=0.0),
        "floor": floor,
    }


def _sample_indices(
    shape: tuple[int, ...], limit: int | None, rng: np.random.Generator
) -> list[tuple[int, ...]]:
    size = int(np.prod(shape))
    flat = (
        np.arange(size) if limit is None or limit >= size else np.sort(rng.choice(size, limit, replace=False))
    )
    return [tuple(int(i) for i in np.unravel_index(k, shape)) for k in flat]


def gradient_check(
    network: Any,
    x: Any,
    t: Any,
    h: float | None = None,
    max_elements: int | None = None,
    seed: int = 0,
    richardson: bool = False,
    between: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Compare backprop gradients with numerical ones for every parameter of `network`.

    With `richardson=True` the numerical side is (4 D(h) - D(2h)) / 3 instead of the central difference
    D(h): D(h) errs by order h^2, the extrapolation by order h^4, so a step large enough to keep rounding
    small (1e-4) no longer pays in truncation error. It costs twice the loss evaluations.

    The loss is evaluated in training mode (batch statistics for BatchNorm) with every Dropout
    mask held at the one drawn by the backprop pass, so both sides differentiate the same function;
    BatchNorm running statistics are restored afterwards. `max_elements` checks a seeded random
    subset of that many elements per parameter (all of them when None). `between()` is called after each
    element's loss evaluations (see `numerical_gradient`).

    Returns {"parameters": {name: {"max_abs", "max_rel", "checked"}}, "max_relative_error",
    "max_abs_error", "h", "floor", "dtype"}.
    """
    xb, tb = network._inputs(x), network._labels(t)
    h = default_step(network.dtype) if h is None else h
    saved_stats = [
        (layer, layer.running_mean.copy(), layer.running_var.copy())
        for layer in network.layers.values()
        if isinstance(layer, BatchNorm)
    ]
    backprop = {name: as_numpy(g).copy() for name, g in network.gradient(xb, tb).items()}
    scale = max((float(np.abs(g).max(initial=0.0)) for g in backprop.values()), default=0.0)
    floor = max(FLOOR_FRACTION * scale, TINY)
    rng = np.random.default_rng(seed)
    parameters: dict[str, dict[str, float | int]] = {}

    def loss(_: Any) -> float:
        return float(network.loss(xb, tb, train=True))

    network.set_hold_dropout_masks(True)
    try:
        for name, param in network.params.items():
            indices = _sample_indices(tuple(param.shape), max_elements, rng)
            numeric = as_numpy(numerical_gradient(loss, param, h, indices, between)).astype(np.float64)
            if richardson:
                far = as_numpy(numerical_gradient(loss, param, 2 * h, indices, between)).astype(np.float64)
                numeric = (4 * numeric - far) / 3
            rows = tuple(np.array(axis) for axis in zip(*indices, strict=True))
            a, b = backprop[name][rows], numeric[rows]
            parameters[name] = {
                "max_abs": float(np.abs(a - b).max(initial=0.0)),
                "max_rel": float(relative_error(a, b, floor).max(initial=0.0)),
                "checked": len(indices),
            }
    finally:
        network.set_hold_dropout_masks(False)
        for layer, mean, var in saved_stats:
            layer.running_mean[...] = mean
            layer.running_var[...] = var
    return {
        "parameters": parameters,
        "max_relative_error": max((p["max_rel"] for p in parameters.values()), default=0.0),
        "max_abs_error": max((p["max_abs"] for p in parameters.values()), default=0.0),
        "h": h,
        "richardson": richardson,
        "floor": floor,
        "dtype": np.dtype(network.dtype).name,
    }
