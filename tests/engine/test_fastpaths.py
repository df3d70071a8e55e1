"""The fast paths compute what the plain textbook formulas compute.

Fast paths: float32, preallocated `out=` buffers reused across steps, in-place exp/maximum,
integer labels instead of one-hot, and no gradient for the input layer's dx.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.layers import Affine, Relu, Sigmoid, SoftmaxWithLoss, Tanh
from engine.networks import Network, mlp, two_layer_net
from engine.optimizers import SGD


def textbook_two_layer_gradient(
    params: dict[str, np.ndarray], x: np.ndarray, t_one_hot: np.ndarray
) -> tuple[float, dict[str, np.ndarray]]:
    """The textbook's TwoLayerNet written out with plain expressions, every array freshly made."""
    a1 = np.dot(x, params["W1"]) + params["b1"]
    mask = a1 <= 0
    z1 = a1.copy()
    z1[mask] = 0
    a2 = np.dot(z1, params["W2"]) + params["b2"]
    exp = np.exp(a2 - a2.max(axis=1, keepdims=True))
    y = exp / exp.sum(axis=1, keepdims=True)
    loss = -np.sum(t_one_hot * np.log(y)) / x.shape[0]
    dy = (y - t_one_hot) / x.shape[0]
    grads = {"W2": np.dot(z1.T, dy), "b2": np.sum(dy, axis=0)}
    dz1 = np.dot(dy, params["W2"].T)
    dz1[mask] = 0
    grads["W1"], grads["b1"] = np.dot(x.T, dz1), np.sum(dz1, axis=0)
    return float(loss), grads


@pytest.fixture
def batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.random((100, 784)), rng.integers(0, 10, 100)


def test_engine_gradient_equals_the_textbook_formulas(batch: tuple[np.ndarray, np.ndarray]) -> None:
    x, t = batch
    net = two_layer_net(dtype="float64", seed=0)
    grads = net.gradient(x, t)
    loss, expected = textbook_two_layer_gradient(
        {k: v.copy() for k, v in net.params.items()}, x, np.eye(10)[t]
    )
    assert net.last_loss == pytest.approx(loss, rel=1e-12)
    for key, value in expected.items():
        np.testing.assert_allclose(grads[key], value, rtol=1e-10, atol=1e-15)


def test_float32_step_matches_float64_step(batch: tuple[np.ndarray, np.ndarray]) -> None:
    x, t = batch
    net32, net64 = two_layer_net(dtype="float32", seed=0), two_layer_net(dtype="float64", seed=0)
    grads32, grads64 = net32.gradient(x, t), net64.gradient(x, t)
    assert net32.last_loss == pytest.approx(net64.last_loss, rel=1e-6)
    for key in grads64:
        assert grads32[key].dtype == np.float32
        scale = np.abs(grads64[key]).max()
        np.testing.assert_allclose(grads32[key], grads64[key], rtol=0, atol=1e-4 * scale)


def test_integer_labels_equal_one_hot_labels(batch: tuple[np.ndarray, np.ndarray]) -> None:
    x, t = batch
    net = two_layer_net(dtype="float64", seed=0)
    by_index = {k: v.copy() for k, v in net.gradient(x, t).items()}
    loss_index = net.last_loss
    by_one_hot = net.gradient(x, np.eye(10)[t])
    assert net.last_loss == pytest.approx(loss_index, rel=1e-14)
    for key, value in by_index.items():
        np.testing.assert_allclose(by_one_hot[key], value, rtol=1e-12, atol=1e-18)


def test_input_layer_skips_dx_without_changing_the_gradients(batch: tuple[np.ndarray, np.ndarray]) -> None:
    x, t = batch
    fast = two_layer_net(dtype="float64", seed=0)
    plain = two_layer_net(dtype="float64", seed=0)
    plain.layers["Affine1"].need_dx = True
    assert fast.layers["Affine1"].need_dx is False
    fast_grads = fast.gradient(x, t)
    plain_grads = plain.gradient(x, t)
    for key, value in plain_grads.items():
        np.testing.assert_array_equal(fast_grads[key], value)
    assert fast.layers["Affine1"].backward(np.ones((100, 50))) is None
    assert plain.layers["Affine1"].backward(np.ones((100, 50))).shape == (100, 784)


def test_buffers_are_reused_and_other_batch_sizes_do_not_corrupt_them(rng: np.random.Generator) -> None:
    net = mlp([12, 9, 4], activation="tanh", dtype="float64", seed=3)
    x, t = rng.standard_normal((8, 12)), rng.integers(0, 4, 8)
    reference = {
        k: v.copy()
        for k, v in mlp([12, 9, 4], activation="tanh", dtype="float64", seed=3).gradient(x, t).items()
    }
    first = net.gradient(x, t)
    affine = net.layers["Affine1"]
    assert isinstance(affine, Affine)
    out_buffer = net.layers["Affine1"]._buffers[("out", (8, 9), np.dtype("float64"))]
    net.accuracy(rng.standard_normal((5, 12)), rng.integers(0, 4, 5))  # another batch shape in between
    second = net.gradient(x, t)
    assert second is first and second["W1"] is affine.dW  # refilled in place
    assert net.layers["Affine1"]._buffers[("out", (8, 9), np.dtype("float64"))] is out_buffer
    for key, value in reference.items():
        np.testing.assert_array_equal(second[key], value)


def test_predict_returns_a_copy_that_later_calls_do_not_overwrite(rng: np.random.Generator) -> None:
    net = two_layer_net(input_size=6, hidden_size=5, output_size=3)
    x1, x2 = rng.random((4, 6)), rng.random((4, 6))
    y1 = net.predict(x1)
    kept = y1.copy()
    net.predict(x2)
    np.testing.assert_array_equal(y1, kept)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_in_place_activations_equal_textbook_expressions(dtype: str, rng: np.random.Generator) -> None:
    x = (4 * rng.standard_normal((50, 20))).astype(dtype)
    dout = rng.standard_normal((50, 20)).astype(dtype)
    tol = 1e-6 if dtype == "float32" else 1e-14

    relu = Relu()
    textbook = x.copy()
    textbook[x <= 0] = 0
    np.testing.assert_array_equal(relu.forward(x), textbook)
    expected_dx = dout.copy()
    expected_dx[x <= 0] = 0
    np.testing.assert_array_equal(relu.backward(dout), expected_dx)

    sigmoid = Sigmoid()
    y = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(sigmoid.forward(x), y, rtol=tol, atol=tol)
    np.testing.assert_allclose(sigmoid.backward(dout), dout * (1.0 - y) * y, rtol=0, atol=tol)

    tanh = Tanh()
    np.testing.assert_allclose(tanh.forward(x), np.tanh(x), rtol=tol)
    np.testing.assert_allclose(tanh.backward(dout), dout * (1 - np.tanh(x) ** 2), rtol=0, atol=tol)
    for out in (relu.forward(x), sigmoid.forward(x), tanh.forward(x)):
        assert out.dtype == np.dtype(dtype)


def test_softmax_with_loss_fast_path_equals_the_textbook_softmax(rng: np.random.Generator) -> None:
    x = rng.standard_normal((30, 10)).astype(np.float32)
    t = rng.integers(0, 10, 30)
    exp = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    y = exp / exp.sum(axis=1, keepdims=True)
    one_hot = np.eye(10)[t]
    layer = SoftmaxWithLoss()
    loss = layer.forward(x, t)
    assert loss.dtype == np.float32
    assert float(loss) == pytest.approx(-np.sum(one_hot * np.log(y)) / 30, rel=1e-6)
    np.testing.assert_allclose(layer.backward(), (y - one_hot) / 30, rtol=0, atol=1e-8)


def test_affine_out_buffers_equal_plain_matmul(rng: np.random.Generator) -> None:
    W, b = rng.standard_normal((20, 7)).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    layer = Affine(W, b)
    x, dout = (
        rng.standard_normal((16, 20)).astype(np.float32),
        rng.standard_normal((16, 7)).astype(np.float32),
    )
    np.testing.assert_allclose(layer.forward(x), np.dot(x, W) + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.backward(dout), np.dot(dout, W.T), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.dW, np.dot(x.T, dout), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.db, np.sum(dout, axis=0), rtol=1e-5, atol=1e-5)


def test_float32_training_step_keeps_float32_and_equals_the_plain_update(
    batch: tuple[np.ndarray, np.ndarray],
) -> None:
    x, t = batch
    net = two_layer_net(seed=0)  # float32 by default
    before = {k: v.copy() for k, v in net.params.items()}
    grads = {k: v.copy() for k, v in net.gradient(x, t).items()}
    net.train_step(x, t, SGD(lr=0.1))
    for key, value in net.params.items():
        assert value.dtype == np.float32
        np.testing.assert_allclose(value, before[key] - np.float32(0.1) * grads[key], rtol=1e-6, atol=1e-7)


def test_network_casts_inputs_to_its_dtype(rng: np.random.Generator) -> None:
    net: Network = two_layer_net(input_size=6, hidden_size=5, output_size=3)
    assert net.predict(rng.random((2, 6))).dtype == np.float32
    assert net.predict(rng.random((2, 6)).astype(np.float32)).shape == (2, 3)
