"""Optimizers: the textbook's first step by hand, and each one descends a quadratic bowl."""

from __future__ import annotations

import numpy as np
import pytest

from engine.optimizers import SGD, AdaGrad, Adam, Momentum, Nesterov, Optimizer, RMSprop, make_optimizer

TARGET = np.array([3.0, -1.0, 0.5])


def bowl_gradient(w: np.ndarray) -> np.ndarray:
    """Gradient of f(w) = 0.5 * ||w - TARGET||^2 (the minimum is TARGET)."""
    return w - TARGET


def first_step(optimizer: Optimizer, w0: np.ndarray, g: np.ndarray) -> np.ndarray:
    params, grads = {"W1": w0.copy()}, {"W1": g.copy()}
    optimizer.update(params, grads)
    np.testing.assert_array_equal(grads["W1"], g)  # the gradient is never modified
    return params["W1"]


W0, G = np.array([1.0, -2.0, 4.0]), np.array([0.5, -2.0, 1.0])


def test_sgd_first_step() -> None:
    np.testing.assert_allclose(first_step(SGD(lr=0.1), W0, G), [0.95, -1.8, 3.9])


def test_momentum_first_two_steps() -> None:
    opt, params = Momentum(lr=0.1, momentum=0.9), {"W1": W0.copy()}
    opt.update(params, {"W1": G})
    np.testing.assert_allclose(params["W1"], [0.95, -1.8, 3.9])  # v = -lr g
    opt.update(params, {"W1": G})
    np.testing.assert_allclose(params["W1"], [0.95 - 0.095, -1.8 + 0.38, 3.9 - 0.19])  # v = 0.9 v - lr g


def test_nesterov_first_step() -> None:
    # w += m^2 v - (1 + m) lr g with the velocity before the step (v = 0): -(1 + 0.9) * 0.1 g
    np.testing.assert_allclose(first_step(Nesterov(lr=0.1, momentum=0.9), W0, G), W0 - 0.19 * G)


def test_nesterov_second_step_uses_the_velocity_of_the_first() -> None:
    opt, params = Nesterov(lr=0.1, momentum=0.9), {"W1": W0.copy()}
    opt.update(params, {"W1": G})
    opt.update(params, {"W1": G})
    # step 2: v = -lr g from step 1, so w += 0.81 * (-0.1 g) - 0.19 g
    np.testing.assert_allclose(params["W1"], W0 - 0.19 * G - (0.081 + 0.19) * G, rtol=1e-14)


def test_adagrad_first_step() -> None:
    expected = W0 - 0.1 * G / (np.abs(G) + 1e-7)
    np.testing.assert_allclose(first_step(AdaGrad(lr=0.1), W0, G), expected, rtol=1e-12)


def test_rmsprop_first_step() -> None:
    expected = W0 - 0.01 * G / (np.sqrt(0.01 * G**2) + 1e-7)
    np.testing.assert_allclose(first_step(RMSprop(lr=0.01, decay_rate=0.99), W0, G), expected, rtol=1e-12)


def test_adam_first_step_is_about_lr_times_sign() -> None:
    lr_t = 0.1 * np.sqrt(1 - 0.999) / (1 - 0.9)
    expected = W0 - lr_t * (0.1 * G) / (np.sqrt(0.001 * G**2) + 1e-7)
    result = first_step(Adam(lr=0.1), W0, G)
    np.testing.assert_allclose(result, expected, rtol=1e-12)
    np.testing.assert_allclose(result, W0 - 0.1 * np.sign(G), rtol=1e-5)


@pytest.mark.parametrize(
    "optimizer",
    [SGD(0.1), Momentum(0.05), Nesterov(0.05), AdaGrad(0.5), RMSprop(0.02), Adam(0.05)],
    ids=lambda o: type(o).__name__,
)
def test_each_optimizer_descends_a_quadratic(optimizer: Optimizer) -> None:
    params = {"W1": np.zeros(3)}
    start = 0.5 * np.sum((params["W1"] - TARGET) ** 2)
    for _ in range(300):
        optimizer.update(params, {"W1": bowl_gradient(params["W1"])})
    end = 0.5 * np.sum((params["W1"] - TARGET) ** 2)
    assert end < 1e-3 * start
    np.testing.assert_allclose(params["W1"], TARGET, atol=0.05)


def test_weight_decay_applies_to_weights_only() -> None:
    params = {
        "W1": np.array([2.0]),
        "b1": np.array([2.0]),
        "gamma1": np.array([2.0]),
        "beta1": np.array([2.0]),
    }
    grads = {k: np.array([1.0]) for k in params}
    SGD(lr=0.1, weight_decay=0.5).update(params, grads)
    assert params["W1"][0] == pytest.approx(2.0 - 0.1 * (1.0 + 0.5 * 2.0))
    for key in ("b1", "gamma1", "beta1"):
        assert params[key][0] == pytest.approx(1.9)
    assert grads["W1"][0] == 1.0


def test_updates_are_in_place() -> None:
    w = np.ones(3)
    params = {"W1": w}
    Adam(0.1).update(params, {"W1": np.ones(3)})
    assert params["W1"] is w and w[0] < 1.0


def test_make_optimizer_reads_the_spec_dict() -> None:
    opt = make_optimizer(
        {"name": "momentum", "lr": 0.05, "momentum": 0.8, "weight_decay": 1e-4, "beta1": 0.5}
    )
    assert isinstance(opt, Momentum)
    assert (opt.lr, opt.momentum, opt.weight_decay) == (0.05, 0.8, 1e-4)
    adam = make_optimizer({"name": "adam", "lr": 0.001, "beta1": 0.8, "beta2": 0.99})
    assert isinstance(adam, Adam) and (adam.beta1, adam.beta2) == (0.8, 0.99)
    rms = make_optimizer({"name": "rmsprop", "decay_rate": 0.9})
    assert isinstance(rms, RMSprop) and rms.decay_rate == 0.9 and rms.lr == 0.1
    assert isinstance(make_optimizer({"name": "nesterov"}), Nesterov)
    assert isinstance(make_optimizer({"name": "adagrad"}), AdaGrad)
    assert type(make_optimizer({})) is SGD


def test_make_optimizer_refuses_an_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"optimizer name must be one of sgd, momentum.*got 'lbfgs'"):
        make_optimizer({"name": "lbfgs"})
