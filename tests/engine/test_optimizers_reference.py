"""Each optimizer against PyTorch's over 20 steps: the same parameters, the same gradients, float64.

SGD, Momentum, Nesterov, AdaGrad and RMSprop are the textbook's definitions, and torch's agree with them
(AdaGrad and RMSprop given the engine's eps = 1e-7 instead of torch's defaults). Adam follows the
textbook's form, which adds eps to sqrt(v) before the bias correction, where torch adds it after: Adam is
checked against a hand-written reference of that form, and against torch with its eps rescaled per step
so that it lands where the engine's does (which shows that eps is the only difference).

Weight decay applies to the weights "W..." only, so torch gets two parameter groups: the weights with the
decay and everything else without.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from engine.backend import Device, as_numpy
from engine.optimizers import (
    EPS,
    OPTIMIZERS,
    SGD,
    AdaGrad,
    Adam,
    Momentum,
    Nesterov,
    Optimizer,
    RMSprop,
    decays,
    make_optimizer,
)

STEPS = 20
SHAPES = {"W1": (4, 3), "b1": (3,), "gamma1": (3,), "beta1": (3,), "W2": (3, 2), "b2": (2,)}
PULL = 0.7  # the gradient is PULL * param + noise: it depends on where each side's parameters are
TOLERANCE = {"rtol": 1e-12, "atol": 1e-14}  # float64, after 20 steps of differently ordered arithmetic


def initial_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {name: rng.standard_normal(shape) for name, shape in SHAPES.items()}


def noise_sequence() -> list[dict[str, np.ndarray]]:
    """The gradient's fixed part for each step (mixed scales, so eps and the accumulators matter)."""
    rng = np.random.default_rng(11)
    return [
        {name: rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 2) for name, shape in SHAPES.items()}
        for _ in range(STEPS)
    ]


def gradient(param: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return PULL * param + noise


def run_engine(optimizer: Optimizer, xp: Any = np) -> dict[str, np.ndarray]:
    params = {name: xp.asarray(value) for name, value in initial_params().items()}
    for noise in noise_sequence():
        optimizer.update(params, {name: gradient(p, xp.asarray(noise[name])) for name, p in params.items()})
    return {name: as_numpy(value) for name, value in params.items()}


def run_torch(
    torch: Any,
    make: Callable[[list[dict[str, Any]]], Any],
    weight_decay: float,
    before_step: Callable[[Any, int], None] | None = None,
) -> dict[str, np.ndarray]:
    params = {name: torch.tensor(value, dtype=torch.float64) for name, value in initial_params().items()}
    optimizer = make(
        [
            {"params": [p for name, p in params.items() if decays(name)], "weight_decay": weight_decay},
            {"params": [p for name, p in params.items() if not decays(name)], "weight_decay": 0.0},
        ]
    )
    for t, noise in enumerate(noise_sequence(), start=1):
        for name, p in params.items():
            p.grad = torch.from_numpy(gradient(p.numpy(), noise[name]))
        if before_step is not None:
            before_step(optimizer, t)
        optimizer.step()
    return {name: p.numpy() for name, p in params.items()}


def assert_same_params(engine: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    start = initial_params()
    for name in SHAPES:
        assert not np.allclose(engine[name], start[name])  # 20 steps moved every parameter
        np.testing.assert_allclose(engine[name], reference[name], err_msg=name, **TOLERANCE)


WEIGHT_DECAYS = pytest.mark.parametrize("weight_decay", [0.0, 0.05], ids=["no_decay", "decay"])


@WEIGHT_DECAYS
def test_sgd_matches_torch_sgd(torch: Any, weight_decay: float) -> None:
    expected = run_torch(torch, lambda groups: torch.optim.SGD(groups, lr=0.1), weight_decay)
    assert_same_params(run_engine(SGD(lr=0.1, weight_decay=weight_decay)), expected)


@WEIGHT_DECAYS
def test_momentum_matches_torch_sgd_with_momentum(torch: Any, weight_decay: float) -> None:
    expected = run_torch(torch, lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9), weight_decay)
    assert_same_params(run_engine(Momentum(lr=0.05, momentum=0.9, weight_decay=weight_decay)), expected)


@WEIGHT_DECAYS
def test_nesterov_matches_torch_sgd_with_nesterov(torch: Any, weight_decay: float) -> None:
    expected = run_torch(
        torch, lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True), weight_decay
    )
    assert_same_params(run_engine(Nesterov(lr=0.05, momentum=0.9, weight_decay=weight_decay)), expected)


@WEIGHT_DECAYS
def test_adagrad_matches_torch_adagrad(torch: Any, weight_decay: float) -> None:
    # torch's defaults: no lr decay and an accumulator that starts at 0, as in the textbook
    expected = run_torch(torch, lambda groups: torch.optim.Adagrad(groups, lr=0.1, eps=EPS), weight_decay)
    assert_same_params(run_engine(AdaGrad(lr=0.1, weight_decay=weight_decay)), expected)


@WEIGHT_DECAYS
def test_rmsprop_matches_torch_rmsprop(torch: Any, weight_decay: float) -> None:
    # the engine's decay_rate is torch's alpha; no momentum, not centered
    expected = run_torch(
        torch, lambda groups: torch.optim.RMSprop(groups, lr=0.01, alpha=0.9, eps=EPS), weight_decay
    )
    assert_same_params(run_engine(RMSprop(lr=0.01, decay_rate=0.9, weight_decay=weight_decay)), expected)


def adam_textbook_reference(
    lr: float, beta1: float, beta2: float, weight_decay: float
) -> dict[str, np.ndarray]:
    """Kingma & Ba's Adam in the form of their section 2's last paragraph, written out one step at a time:

    m_t = b1 m + (1 - b1) g;  v_t = b2 v + (1 - b2) g^2;  alpha_t = lr sqrt(1 - b2^t) / (1 - b1^t);
    W <- W - alpha_t m_t / (sqrt(v_t) + eps).
    """
    params = initial_params()
    m = {name: np.zeros(shape) for name, shape in SHAPES.items()}
    v = {name: np.zeros(shape) for name, shape in SHAPES.items()}
    for t, noise in enumerate(noise_sequence(), start=1):
        alpha_t = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        for name, p in params.items():
            g = gradient(p, noise[name]) + (weight_decay * p if decays(name) else 0.0)
            m[name] = beta1 * m[name] + (1 - beta1) * g
            v[name] = beta2 * v[name] + (1 - beta2) * g * g
            params[name] = p - alpha_t * m[name] / (np.sqrt(v[name]) + EPS)
    return params


@WEIGHT_DECAYS
def test_adam_matches_the_textbook_form(weight_decay: float) -> None:
    expected = adam_textbook_reference(0.01, 0.9, 0.99, weight_decay)
    assert_same_params(run_engine(Adam(lr=0.01, beta1=0.9, beta2=0.99, weight_decay=weight_decay)), expected)


@WEIGHT_DECAYS
def test_adam_differs_from_torch_adam_only_by_where_eps_is_added(torch: Any, weight_decay: float) -> None:
    def engine_eps(optimizer: Any, t: int) -> None:
        # eps added to sqrt(v_t) before the correction is eps / sqrt(1 - b2^t) added after it
        for group in optimizer.param_groups:
            group["eps"] = EPS / math.sqrt(1 - 0.99**t)

    def make(groups: list[dict[str, Any]]) -> Any:
        return torch.optim.Adam(groups, lr=0.01, betas=(0.9, 0.99), eps=EPS)

    engine = run_engine(Adam(lr=0.01, beta1=0.9, beta2=0.99, weight_decay=weight_decay))
    assert_same_params(engine, run_torch(torch, make, weight_decay, before_step=engine_eps))
    plain_torch = run_torch(torch, make, weight_decay)
    assert not np.allclose(engine["b2"], plain_torch["b2"], **TOLERANCE)  # the placement is visible


def test_adam_eps_placement_is_what_sets_it_apart_from_torch_in_the_first_step(torch: Any) -> None:
    """One step on a gradient of 1e-6: eps is 3.2e-6 relative to sqrt(v) in the engine, 1e-7 in torch."""
    g = np.array([1e-6])
    w_engine = {"W1": np.zeros(1)}
    Adam(lr=0.1).update(w_engine, {"W1": g})
    w_torch = torch.zeros(1, dtype=torch.float64)
    w_torch.grad = torch.from_numpy(g)
    optimizer = torch.optim.Adam([w_torch], lr=0.1, eps=EPS)
    optimizer.step()
    # engine: lr sqrt(0.001) / 0.1 * 0.1 g / (sqrt(0.001) g + eps); torch: lr * g / (g + eps)
    assert w_engine["W1"][0] == pytest.approx(-0.1 * 1e-6 / (1e-6 + EPS / math.sqrt(0.001)), rel=1e-12)
    assert w_torch.item() == pytest.approx(-0.1 * 1e-6 / (1e-6 + EPS), rel=1e-12)
    assert w_engine["W1"][0] == pytest.approx(-0.0240, abs=1e-4)
    assert w_torch.item() == pytest.approx(-0.0909, abs=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_on_the_gpu_takes_the_cpu_steps(gpu: Device, name: str) -> None:
    spec = {"name": name, "lr": 0.01, "weight_decay": 0.05}
    on_gpu = run_engine(make_optimizer(spec), gpu.xp)
    assert_same_params(on_gpu, run_engine(make_optimizer(spec)))
