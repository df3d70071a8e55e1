"""The fused paths compute what the plain formulas compute.

In-place ReLU inside a network (forward overwrites the Affine's output, backward the upstream
gradient), ReLU as x * (x > 0), and optimizers that update through scratch buffers instead of
temporary arrays: each against the plain version on the same numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.layers import Relu
from engine.networks import Network, mlp, simple_convnet
from engine.optimizers import SGD, AdaGrad, Adam, Momentum, Nesterov, Optimizer, RMSprop
from tests.engine.conftest import randomize_params


def relus(net: Network) -> list[Relu]:
    return [layer for layer in net.layers.values() if isinstance(layer, Relu)]


def test_relu_as_a_mask_product_equals_maximum(rng: np.random.Generator) -> None:
    x = np.concatenate([rng.standard_normal(1000), [0.0, -0.0, 1e-300, -1e-300, np.inf, np.nan]])
    np.testing.assert_array_equal(Relu().forward(x), np.maximum(x, 0.0))


def test_a_network_runs_its_relus_in_place_after_affine_and_convolution() -> None:
    assert [r.in_place for r in relus(mlp([6, 5, 4, 3]))] == [True, True]
    assert [r.in_place for r in relus(simple_convnet((1, 8, 8), filter_num=2, hidden_size=4))] == [True, True]
    assert not Relu().in_place  # a layer on its own never overwrites what it is handed


@pytest.mark.parametrize("model", ["mlp", "convnet"])
def test_in_place_relus_give_the_same_loss_and_gradients(model: str, rng: np.random.Generator) -> None:
    def build() -> Network:
        if model == "mlp":
            return mlp([12, 9, 7, 4], dtype="float64", seed=5)
        return simple_convnet((1, 9, 9), filter_num=3, hidden_size=6, dtype="float64", seed=5)

    fused, plain = build(), build()
    randomize_params(fused, np.random.default_rng(1))
    randomize_params(plain, np.random.default_rng(1))
    for relu in relus(plain):
        relu.in_place = False
    x, t = rng.standard_normal((6, *fused.input_shape)), rng.integers(0, 4, 6)
    x_before = x.copy()
    fused_grads = {k: v.copy() for k, v in fused.gradient(x, t).items()}
    plain_grads = plain.gradient(x, t)
    assert fused.last_loss == plain.last_loss
    for key, value in plain_grads.items():
        np.testing.assert_array_equal(fused_grads[key], value, err_msg=key)
    np.testing.assert_array_equal(fused.predict(x), plain.predict(x))
    np.testing.assert_array_equal(x, x_before)  # the caller's data is never overwritten


def plain_update(name: str, state: dict[str, np.ndarray], w: np.ndarray, g: np.ndarray, step: int) -> None:
    """The textbook's update formulas with fresh temporaries (lr 0.1 and the defaults)."""
    lr, m, eps = 0.1, 0.9, 1e-7
    if name == "sgd":
        w -= lr * g
    elif name == "momentum":
        state["v"] = m * state["v"] - lr * g
        w += state["v"]
    elif name == "nesterov":
        w += m * m * state["v"]  # the velocity from before this step
        w -= (1 + m) * lr * g
        state["v"] = m * state["v"] - lr * g
    elif name == "adagrad":
        state["h"] = state["h"] + g * g
        w -= lr * g / (np.sqrt(state["h"]) + eps)
    elif name == "rmsprop":
        state["h"] = 0.99 * state["h"] + (1 - 0.99) * g * g
        w -= lr * g / (np.sqrt(state["h"]) + eps)
    elif name == "adam":
        lr_t = lr * np.sqrt(1 - 0.999**step) / (1 - 0.9**step)
        state["m"] = state["m"] + (1 - 0.9) * (g - state["m"])
        state["v"] = state["v"] + (1 - 0.999) * (g**2 - state["v"])
        w -= lr_t * state["m"] / (np.sqrt(state["v"]) + eps)


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adagrad": AdaGrad,
    "rmsprop": RMSprop,
    "adam": Adam,
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_in_place_optimizer_steps_equal_the_plain_formulas(name: str, rng: np.random.Generator) -> None:
    optimizer = OPTIMIZERS[name](lr=0.1)
    w = rng.standard_normal((5, 4))
    params, expected = {"W1": w.copy()}, w.copy()
    state = {key: np.zeros_like(w) for key in ("v", "h", "m")}
    for step in range(1, 6):
        g = rng.standard_normal(w.shape)
        g_before = g.copy()
        optimizer.update(params, {"W1": g})
        plain_update(name, state, expected, g, step)
        np.testing.assert_array_equal(g, g_before)
        np.testing.assert_array_equal(params["W1"], expected)  # the same operations in the same order
