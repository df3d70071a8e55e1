"""`parity`: the job's device against the NumPy float64 reference, gradient for gradient, on every preset.

For each preset (`PARITY_PRESETS`: two_layer_net; mlp with each activation, with BatchNorm and with
Dropout; simple_convnet) the network is built on the job's device in the job's dtype, and the reference
on the host CPU in float64 with the same weights (the device's, widened exactly) and the same batch (its
inputs drawn in the job's dtype, widened exactly; a Dropout layer holds the mask the device drew). One
backward pass on each; the relative error of every gradient element is `engine.gradients`' (|a - b| over
max(|a| + |b|, 1e-3 of the network's largest gradient)), and a preset passes when its largest is within
the dtype's bound (`PARITY_BOUNDS`):

- float64: 1e-7, the gradcheck's bound. The same arithmetic in another order (another BLAS, another
  reduction tree) differs by a few ulp (1e-16 .. 1e-14); NumPy against itself differs by exactly 0.
- float32: 2e-3, a rounding bound. The device computes every layer in float32 (unit roundoff
  u = 2^-24 = 6e-8) from the same inputs, the reference in float64: a dot product of length k errs by up
  to about k u of the sum of its terms' magnitudes, each layer of the backward pass adds its own, and an
  element is judged against the floor, 1e-3 of the largest gradient, which amplifies an error up to
  1,000 times. BatchNorm's input gradient is the small difference of batch sums, so it loses most: over
  300 seeds on NumPy/OpenBLAS the worst preset (mlp batchnorm) erred by 1.5e-4 at the median and 6.5e-4
  at most, the others by at most 3e-4. 2e-3 = 2^15 u leaves a factor of 3 above that for other summation
  orders and fused multiply-adds, and stays far below what a wrong backward gives (1e-2 and more).

A float64 job on a device without float64 is refused (`JobError`), not checked in float32.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from engine.backend import CPU, DeviceError, as_numpy, check_float64, draw_as, seed_everything
from engine.gradients import compare_gradients
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
from engine.layers import Dropout
from engine.networks import Network
from engine.spec import JobError

PARITY_SAMPLES = 16  # one batch: enough for BatchNorm's statistics and a Dropout mask of each pattern
PARITY_CLASSES = 10
PARITY_BOUNDS: dict[str, float] = {"float64": 1e-7, "float32": 2e-3}
PARITY_CONV_INPUT = (1, 12, 12)  # 5x5 filters -> 8x8 -> 2x2 pooling -> 4x4: 480 features
_DENSE = [48, 32, 24, PARITY_CLASSES]  # two hidden layers: the middle layers' backward is checked too
# name -> (model, per-sample input shape). Small: a parity job takes about a second on a CPU.
PARITY_PRESETS: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "two_layer_net": ({"name": "two_layer_net", "layers": [48, 32, PARITY_CLASSES]}, (48,)),
    "mlp relu": ({"name": "mlp", "layers": _DENSE, "activation": "relu"}, (48,)),
    "mlp sigmoid": ({"name": "mlp", "layers": _DENSE, "activation": "sigmoid"}, (48,)),
    "mlp tanh": ({"name": "mlp", "layers": _DENSE, "activation": "tanh"}, (48,)),
    "mlp batchnorm": ({"name": "mlp", "layers": _DENSE, "activation": "relu", "batchnorm": True}, (48,)),
    "mlp dropout": ({"name": "mlp", "layers": _DENSE, "activation": "relu", "dropout": 0.3}, (48,)),
    "simple_convnet": (
        {"name": "simple_convnet", "layers": [144, 32, PARITY_CLASSES]},
        PARITY_CONV_INPUT,
    ),
}


def hold_masks_of(device_net: Network, reference: Network) -> None:
    """Make the reference's Dropout layers use the masks the device's drew (they are the same layers)."""
    pairs = zip(device_net.layers.values(), reference.layers.values(), strict=True)
    for mine, theirs in pairs:
        if isinstance(mine, Dropout) and isinstance(theirs, Dropout):
            theirs.mask = as_numpy(mine.mask)
    reference.set_hold_dropout_masks(True)


def compare_preset(
    model: dict[str, Any], shape: tuple[int, ...], dtype: str, device: Any, seed: int
) -> dict[str, Any]:
    """One preset: backprop on the device against the NumPy float64 reference; the errors per parameter."""
    network = build(model, shape, PARITY_CLASSES, dtype, device, seed)
    reference = build(model, shape, PARITY_CLASSES, "float64", CPU, seed)
    reference.load_params({name: as_numpy(value) for name, value in network.params.items()})
    rng = np.random.default_rng(seed)
    x = draw_as(rng.random, (PARITY_SAMPLES, *shape), dtype)
    t = rng.integers(0, PARITY_CLASSES, PARITY_SAMPLES)
    started = time.perf_counter()
    grads = {name: as_numpy(g).copy() for name, g in network.gradient(device.xp.asarray(x), t).items()}
    seconds = time.perf_counter() - started
    hold_masks_of(network, reference)
    expected = reference.gradient(x.astype(np.float64), t)
    errors = compare_gradients(grads, expected)
    errors["backprop_s"] = seconds
    errors["parameters_count"] = network.n_params
    return errors


def run(spec: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Run a `parity` job; the result body."""
    device = device_of(spec)
    dtype, seed = spec["dtype"], int(spec["seed"])
    try:
        check_float64(device, dtype)
    except DeviceError as exc:
        raise JobError(str(exc)) from None
    seed_everything(seed, device)
    bound = PARITY_BOUNDS[dtype]
    presets: dict[str, dict[str, Any]] = {}
    for index, (name, (model, shape)) in enumerate(PARITY_PRESETS.items()):
        reporter.report(index / len(PARITY_PRESETS), f"parity: {name}", force=True)
        reporter.check_stop(f"before the parity of {name}")
        errors = compare_preset(model, shape, dtype, device, seed)
        presets[name] = {
            "model": model,
            "input_shape": list(shape),
            "n_parameters": errors["parameters_count"],
            "max_relative_error": errors["max_relative_error"],
            "max_abs_error": errors["max_abs_error"],
            "bound": bound,
            "passed": errors["max_relative_error"] <= bound,
            "parameters": errors["parameters"],
            "floor": errors["floor"],
            "backprop_s": errors["backprop_s"],
        }
    worst = max(p["max_relative_error"] for p in presets.values())
    return {
        "metrics": {
            "presets": presets,
            "max_relative_error": worst,
            "bound": bound,
            "passed": all(p["passed"] for p in presets.values()),
            "dtype": dtype,
            "reference": "NumPy float64 on the host CPU, the same weights and batch",
            "samples": PARITY_SAMPLES,
        },
        "trials": [],
    }


def estimate_memory(spec: dict[str, Any]) -> MemoryEstimate:
    """Every preset's network on the device and its float64 reference, each with one batch (no data set)."""
    item = DTYPE_BYTES[spec["dtype"]]
    parts = {"parameters": 0, "activations": 0}
    for model, shape in PARITY_PRESETS.values():
        for size in (item, DTYPE_BYTES["float64"]):
            for key, value in network_bytes(model, shape, size, PARITY_SAMPLES, 1).items():
                parts[key] += value
    return estimate(parts)


def result_columns(spec: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """Every preset, no data set and no batch of the spec's: no model columns and no peak."""
    return {"model_name": None, "dataset": None, "batch_size": None, "peak_flops_per_s": None}


KIND = JobKind(
    name="parity",
    summary="compares the device's backprop gradients with the NumPy float64 reference on every preset",
    run=run,
    estimate_memory=estimate_memory,
    result_columns=result_columns,
)
