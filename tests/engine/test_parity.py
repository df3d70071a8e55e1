"""The `parity` kind on the CPU: NumPy against its own float64 reference, every preset."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from engine.backend import CPU
from engine.gradients import compare_gradients
from engine.jobs import run_job
from engine.kinds import parity
from engine.kinds.base import build
from engine.layers import BatchNorm

PRESETS = [
    "two_layer_net",
    "mlp relu",
    "mlp sigmoid",
    "mlp tanh",
    "mlp batchnorm",
    "mlp dropout",
    "simple_convnet",
]


@pytest.fixture(scope="module")
def float64_result() -> dict[str, Any]:
    return run_job({"kind": "parity", "dtype": "float64"})


@pytest.fixture(scope="module")
def float32_result() -> dict[str, Any]:
    return run_job({"kind": "parity", "dtype": "float32"})


def test_parity_checks_every_preset_of_the_issue(float64_result: dict[str, Any]) -> None:
    assert list(float64_result["metrics"]["presets"]) == PRESETS
    activations = [p["model"].get("activation") for p in float64_result["metrics"]["presets"].values()]
    assert {"relu", "sigmoid", "tanh"} <= set(activations)


def test_numpy_float64_against_its_reference_differs_by_exactly_zero(float64_result: dict[str, Any]) -> None:
    metrics = float64_result["metrics"]
    assert metrics["passed"] is True and metrics["bound"] == 1e-7
    for name, preset in metrics["presets"].items():
        assert (name, preset["max_relative_error"], preset["max_abs_error"]) == (name, 0.0, 0.0)
        assert preset["passed"] is True


def test_numpy_float32_is_within_the_rounding_bound_and_not_exact(float32_result: dict[str, Any]) -> None:
    metrics = float32_result["metrics"]
    assert metrics["passed"] is True and metrics["bound"] == parity.PARITY_BOUNDS["float32"] == 2e-3
    for preset in metrics["presets"].values():
        assert 1e-8 < preset["max_relative_error"] <= preset["bound"]  # it really ran in float32


def test_every_parameter_of_every_preset_is_compared(float32_result: dict[str, Any]) -> None:
    presets = float32_result["metrics"]["presets"]
    assert set(presets["mlp batchnorm"]["parameters"]) == {"W1", "b1", "gamma1", "beta1", "W2", "b2",
                                                            "gamma2", "beta2", "W3", "b3"}  # fmt: skip
    assert set(presets["simple_convnet"]["parameters"]) == {"W1", "b1", "W2", "b2", "W3", "b3"}


def test_the_dropout_reference_holds_the_mask_the_device_drew() -> None:
    model, shape = parity.PARITY_PRESETS["mlp dropout"]
    errors = parity.compare_preset(model, shape, "float64", CPU, seed=3)
    assert errors["max_relative_error"] == 0.0  # a fresh mask in the reference would differ at once


class _BatchNormWithoutVarianceTerm(BatchNorm):
    """A plausible bug: the backward forgets that the batch's variance depends on its input."""

    def backward(self, dout: Any) -> Any:
        dout = dout.reshape(dout.shape[0], -1)
        self.dbeta[...] = dout.sum(axis=0)
        self.dgamma[...] = (self.xn * dout).sum(axis=0)
        dxc = self.gamma * dout / self.std
        return (dxc - dxc.sum(axis=0) / self.batch_size).reshape(self.input_shape)


def test_the_float32_bound_catches_a_wrong_backward() -> None:
    model, shape = parity.PARITY_PRESETS["mlp batchnorm"]
    wrong = build(model, shape, parity.PARITY_CLASSES, "float32", CPU, 0)
    for layer in wrong.layers.values():
        if isinstance(layer, BatchNorm):
            layer.__class__ = _BatchNormWithoutVarianceTerm
    reference = build(model, shape, parity.PARITY_CLASSES, "float64", CPU, 0)
    reference.load_params({name: np.asarray(value) for name, value in wrong.params.items()})
    rng = np.random.default_rng(0)
    x = rng.random((parity.PARITY_SAMPLES, *shape)).astype(np.float32)
    t = rng.integers(0, parity.PARITY_CLASSES, parity.PARITY_SAMPLES)
    got = {name: g.copy() for name, g in wrong.gradient(x, t).items()}
    errors = compare_gradients(got, reference.gradient(x.astype(np.float64), t))
    assert errors["max_relative_error"] > 10 * parity.PARITY_BOUNDS["float32"]


def test_parity_stores_no_model_columns() -> None:
    assert parity.KIND.result_columns({}, {}) == {
        "model_name": None,
        "dataset": None,
        "batch_size": None,
        "peak_flops_per_s": None,
    }


def test_the_parity_estimate_is_mostly_the_runtime() -> None:
    estimate = parity.estimate_memory({"dtype": "float32", "kind": "parity"})
    assert estimate.parts["runtime"] == 64 * 2**20
    assert 0 < estimate.parts["parameters"] < 4 * 2**20  # small networks, on the device and in float64
