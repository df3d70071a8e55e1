"""Backprop agrees with central differences: float64, max relative error <= 1e-7 for every parameter.

Relative error per element is |a - b| / max(|a| + |b|, 1e-3 * largest gradient of the network)
(see engine/gradients.py for why the floor). Biases are made nonzero first, so that no unit sits
exactly on a ReLU kink, where the numerical derivative would be the average of the two slopes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from engine.backend import Device, as_numpy
from engine.gradients import compare_gradients, gradient_check, numerical_gradient, relative_error
from engine.layers import BatchNorm, Dropout
from engine.networks import mlp, simple_convnet, two_layer_net
from tests.engine.conftest import randomize_params

THRESHOLD = 1e-7


def assert_all_parameters_pass(report: dict[str, Any], expected: set[str]) -> None:
    assert set(report["parameters"]) == expected
    failures = {k: v["max_rel"] for k, v in report["parameters"].items() if not v["max_rel"] <= THRESHOLD}
    assert not failures, f"max relative error above {THRESHOLD}: {failures}"
    assert report["max_relative_error"] <= THRESHOLD
    assert report["dtype"] == "float64"


def test_numerical_gradient_of_a_quadratic_is_exact_and_restores_x() -> None:
    x = np.array([[3.0, -4.0], [0.5, 2.0]])
    before = x.copy()
    grad = numerical_gradient(lambda v: float((v**2).sum()), x)
    np.testing.assert_allclose(grad, 2 * before, rtol=1e-9)
    assert np.array_equal(x, before)


def test_relative_error_uses_the_floor_for_tiny_elements() -> None:
    a, b = np.array([1.0, 1e-12]), np.array([1.0 + 2e-8, 2e-12])
    rel = relative_error(a, b, floor=1e-3)
    np.testing.assert_allclose(rel, [1e-8, 1e-9], rtol=1e-6)


def test_two_layer_net(rng: np.random.Generator) -> None:
    net = two_layer_net(dtype="float64", seed=0)  # the textbook's 784-50-10
    randomize_params(net, rng)
    x, t = rng.random((3, 784)), np.array([1, 4, 7])
    report = gradient_check(net, x, t, max_elements=200)
    assert_all_parameters_pass(report, {"W1", "b1", "W2", "b2"})
    assert report["parameters"]["W1"]["checked"] == 200
    assert report["parameters"]["b2"]["checked"] == 10


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_mlp_with_each_activation(activation: str, rng: np.random.Generator) -> None:
    net = mlp([8, 6, 5, 3], activation=activation, init="xavier", dtype="float64", seed=1)
    randomize_params(net, rng)
    x, t = rng.standard_normal((6, 8)), rng.integers(0, 3, 6)
    report = gradient_check(net, x, t, h=1e-5)
    assert_all_parameters_pass(report, {"W1", "b1", "W2", "b2", "W3", "b3"})


def test_mlp_with_batchnorm(rng: np.random.Generator) -> None:
    net = mlp([8, 6, 5, 3], batchnorm=True, dtype="float64", seed=2)
    randomize_params(net, rng)
    x, t = rng.standard_normal((10, 8)), rng.integers(0, 3, 10)
    batchnorm = net.layers["BatchNorm1"]
    assert isinstance(batchnorm, BatchNorm)
    running_before = as_numpy(batchnorm.running_mean).copy()
    report = gradient_check(net, x, t, h=1e-5)
    expected = {"W1", "b1", "gamma1", "beta1", "W2", "b2", "gamma2", "beta2", "W3", "b3"}
    assert_all_parameters_pass(report, expected)
    # The check's many forward passes must not leave the running statistics moved.
    assert np.array_equal(as_numpy(batchnorm.running_mean), running_before)


def test_mlp_with_dropout_mask_held_fixed(rng: np.random.Generator) -> None:
    net = mlp([8, 6, 5, 3], dropout=0.3, dtype="float64", seed=3)
    randomize_params(net, rng)
    x, t = rng.standard_normal((6, 8)), rng.integers(0, 3, 6)
    report = gradient_check(net, x, t)
    assert_all_parameters_pass(report, {"W1", "b1", "W2", "b2", "W3", "b3"})
    dropout = net.layers["Dropout1"]
    assert isinstance(dropout, Dropout) and not dropout.hold_mask  # released again after the check


def test_simple_convnet_on_a_small_input(rng: np.random.Generator) -> None:
    net = simple_convnet((1, 10, 10), filter_num=4, hidden_size=10, init="he", dtype="float64", seed=4)
    randomize_params(net, rng)
    x, t = rng.standard_normal((2, 1, 10, 10)), np.array([3, 7])
    report = gradient_check(net, x, t, h=1e-5)
    assert_all_parameters_pass(report, {"W1", "b1", "W2", "b2", "W3", "b3"})


def test_compare_gradients_reports_per_parameter_errors() -> None:
    backprop = {"W1": np.array([1.0, 2.0]), "b1": np.array([0.5])}
    numerical = {"W1": np.array([1.0, 2.0 + 4e-6]), "b1": np.array([0.5])}
    report = compare_gradients(backprop, numerical)
    assert report["parameters"]["W1"]["max_abs"] == pytest.approx(4e-6)
    assert report["parameters"]["W1"]["max_rel"] == pytest.approx(1e-6, rel=1e-5)
    assert report["parameters"]["b1"]["max_rel"] == 0.0
    assert report["max_relative_error"] == pytest.approx(1e-6, rel=1e-5)


@pytest.mark.gpu
def test_gradient_check_on_gpu_agrees_with_cpu(gpu: Device) -> None:
    rng = np.random.default_rng(7)
    x, t = rng.standard_normal((6, 8)), rng.integers(0, 3, 6)
    nets = [mlp([8, 6, 5, 3], activation="tanh", dtype="float64", seed=5, device=d) for d in (Device(), gpu)]
    for net in nets:
        randomize_params(net, np.random.default_rng(8))
    cpu_grads = {k: v.copy() for k, v in nets[0].gradient(x, t).items()}
    gpu_grads = {k: as_numpy(v) for k, v in nets[1].gradient(x, t).items()}
    assert compare_gradients(cpu_grads, gpu_grads)["max_relative_error"] <= 1e-7
    assert gradient_check(nets[1], x, t, h=1e-5)["max_relative_error"] <= THRESHOLD
