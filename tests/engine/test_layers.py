"""Each layer computes the textbook's values, forward and backward."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from engine import layers
from engine.layers import (
    Add,
    Affine,
    BatchNorm,
    Convolution,
    Dropout,
    Mul,
    Pooling,
    Relu,
    Sigmoid,
    SoftmaxWithLoss,
    Tanh,
    col2im,
    im2col,
)


def test_shopping_example_forward_and_backward() -> None:
    # The seed's apple example: 2 apples at 100 each, 10% tax.
    apple, count, tax = 100, 2, 1.1
    mul_apple, mul_tax = Mul(), Mul()
    price = mul_tax.forward(mul_apple.forward(apple, count), tax)
    assert price == pytest.approx(220.0)
    d_apple_price, d_tax = mul_tax.backward(1)
    d_apple, d_count = mul_apple.backward(d_apple_price)
    assert (d_apple, d_count, d_tax) == pytest.approx((2.2, 110.0, 200.0))


def test_shopping_example_with_oranges_uses_add() -> None:
    # Textbook figure 5-17: 2 apples at 100, 3 oranges at 150, tax 1.1 -> 715.
    apples, oranges, add, tax = Mul(), Mul(), Add(), Mul()
    total = tax.forward(add.forward(apples.forward(100, 2), oranges.forward(150, 3)), 1.1)
    assert total == pytest.approx(715.0)
    d_sum, d_tax = tax.backward(1)
    d_apples, d_oranges = add.backward(d_sum)
    assert apples.backward(d_apples) == pytest.approx((2.2, 110.0))
    assert oranges.backward(d_oranges) == pytest.approx((3.3, 165.0))
    assert d_tax == pytest.approx(650.0)


def test_relu_zeroes_negatives_and_their_gradient() -> None:
    relu = Relu()
    x = np.array([[1.0, -0.5], [-2.0, 3.0]])
    np.testing.assert_array_equal(relu.forward(x), [[1.0, 0.0], [0.0, 3.0]])
    np.testing.assert_array_equal(relu.backward(np.array([[5.0, 6.0], [7.0, 8.0]])), [[5.0, 0.0], [0.0, 8.0]])


def test_sigmoid_values_and_gradient() -> None:
    sig = Sigmoid()
    x = np.array([[0.0, 2.0, -2.0, 50.0, -800.0]])
    y = sig.forward(x)
    np.testing.assert_allclose(y, [[0.5, 0.8807970779778823, 0.11920292202211755, 1.0, 0.0]], atol=1e-15)
    np.testing.assert_allclose(
        # y (1 - y) at x = 50 is exp(-50), not the 0 that 1 - y gives once y has rounded to 1
        sig.backward(np.ones_like(x)),
        [[0.25, 0.10499358540350662, 0.10499358540350662, 1.9287498479639178e-22, 0]],
    )


def test_tanh_gradient_is_one_minus_y_squared() -> None:
    layer = Tanh()
    x = np.array([[0.0, 1.0]])
    np.testing.assert_allclose(layer.forward(x), [[0.0, 0.7615941559557649]])
    np.testing.assert_allclose(layer.backward(np.array([[2.0, 1.0]])), [[2.0, 0.41997434161402614]])


def test_affine_forward_and_backward_values() -> None:
    W, b = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), np.array([0.5, -0.5, 1.0])
    layer = Affine(W, b)
    x = np.array([[1.0, 1.0], [2.0, -1.0]])
    np.testing.assert_allclose(layer.forward(x), [[5.5, 6.5, 10.0], [-1.5, -1.5, 1.0]])
    dout = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    dx = layer.backward(dout)
    np.testing.assert_allclose(dx, [[1.0, 4.0], [5.0, 11.0]])
    np.testing.assert_allclose(layer.dW, [[1.0, 2.0, 2.0], [1.0, -1.0, -1.0]])
    np.testing.assert_allclose(layer.db, [1.0, 1.0, 1.0])


def test_affine_flattens_image_input_and_restores_its_shape() -> None:
    layer = Affine(np.ones((12, 2)), np.zeros(2))
    x = np.arange(24.0).reshape(2, 3, 2, 2)
    np.testing.assert_allclose(layer.forward(x), [[66.0, 66.0], [210.0, 210.0]])
    assert layer.backward(np.ones((2, 2))).shape == (2, 3, 2, 2)


def test_softmax_with_loss_uniform_scores() -> None:
    layer = SoftmaxWithLoss()
    loss = layer.forward(np.zeros((2, 4)), np.array([1, 3]))
    assert float(loss) == pytest.approx(np.log(4.0))
    np.testing.assert_allclose(
        layer.backward(), [[0.125, -0.375, 0.125, 0.125], [0.125, 0.125, 0.125, -0.375]]
    )


def test_softmax_with_loss_one_hot_equals_integer_labels() -> None:
    x = np.array([[0.3, 2.0, -1.0], [1.5, 0.1, 0.2]])
    by_index, by_one_hot = SoftmaxWithLoss(), SoftmaxWithLoss()
    loss_i = by_index.forward(x, np.array([1, 0]))
    loss_h = by_one_hot.forward(x, np.eye(3)[[1, 0]])
    assert float(loss_i) == pytest.approx(float(loss_h), rel=1e-15)
    np.testing.assert_allclose(by_index.backward(), by_one_hot.backward(), rtol=1e-15)


def test_softmax_with_loss_is_exact_for_extreme_scores() -> None:
    # log-softmax needs no 1e-7: a confidently wrong prediction costs exactly its margin.
    layer = SoftmaxWithLoss()
    loss = layer.forward(np.array([[1000.0, 0.0]]), np.array([1]))
    assert float(loss) == pytest.approx(1000.0)
    np.testing.assert_allclose(layer.backward(), [[1.0, -1.0]])


def test_dropout_training_drops_and_evaluation_scales() -> None:
    layer = Dropout(0.25, np.random.default_rng(0))
    x = np.ones((200, 50))
    out = layer.forward(x, train=True)
    assert set(np.unique(out)) == {0.0, 1.0}
    assert out.mean() == pytest.approx(0.75, abs=0.02)
    np.testing.assert_array_equal(layer.backward(np.full_like(x, 3.0)), 3.0 * layer.mask)
    np.testing.assert_allclose(layer.forward(x, train=False), np.full_like(x, 0.75))


def test_dropout_without_a_generator_draws_its_masks_with_the_inputs_array_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stand-in for CuPy: the layer must ask the input's array module for its generator, not NumPy.
    drawn: list[tuple[int, ...]] = []

    class InputsGenerator:
        def random(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
            drawn.append(shape)
            return np.linspace(0.0, 1.0, int(np.prod(shape)), dtype=dtype).reshape(shape)

    inputs_module = SimpleNamespace(random=SimpleNamespace(default_rng=InputsGenerator))
    monkeypatch.setattr(layers, "get_array_module", lambda *arrays: inputs_module)
    layer = Dropout(0.5)
    assert layer.rng is None  # nothing is drawn before the first training step

    out = layer.forward(np.ones((2, 4)))

    assert isinstance(layer.rng, InputsGenerator) and drawn == [(2, 4)]
    np.testing.assert_array_equal(out, [[0, 0, 0, 0], [1, 1, 1, 1]])


def test_dropout_without_a_generator_on_numpy_input_keeps_numpy_arrays() -> None:
    layer = Dropout(0.5)
    out = layer.forward(np.ones((100, 10), dtype=np.float32))

    assert isinstance(layer.rng, np.random.Generator)
    assert type(layer.mask) is np.ndarray and out.dtype == np.float32
    assert 0.3 < out.mean() < 0.7


def test_dropout_hold_mask_reuses_the_mask() -> None:
    layer = Dropout(0.5, np.random.default_rng(1))
    x = np.ones((4, 100))
    first = layer.forward(x).copy()
    layer.hold_mask = True
    np.testing.assert_array_equal(layer.forward(x), first)
    layer.hold_mask = False
    assert not np.array_equal(layer.forward(x), first)


def test_batchnorm_training_normalises_and_updates_running_stats() -> None:
    layer = BatchNorm(np.array([2.0, 1.0]), np.array([0.5, 0.0]))
    x = np.array([[1.0, 10.0], [3.0, 30.0]])
    out = layer.forward(x, train=True)
    std = np.sqrt(np.array([1.0, 100.0]) + 1e-6)
    np.testing.assert_allclose(out, [[0.5 - 2 / std[0], -10 / std[1]], [0.5 + 2 / std[0], 10 / std[1]]])
    np.testing.assert_allclose(layer.running_mean, [0.2, 2.0])
    # from 1, toward the unbiased batch variance [2, 200]: 0.9 * 1 + 0.1 * [2, 200]
    np.testing.assert_allclose(layer.running_var, [1.1, 20.9])
    evaluated = layer.forward(np.array([[0.2, 2.0]]), train=False)
    np.testing.assert_allclose(evaluated, [[0.5, 0.0]], atol=1e-12)


def test_batchnorm_backward_values() -> None:
    layer = BatchNorm(np.array([1.0]), np.array([0.0]), eps=0.0)
    layer.forward(np.array([[1.0], [3.0]]), train=True)  # xn = [-1, 1], std = 1
    dx = layer.backward(np.array([[1.0], [0.0]]))
    assert layer.dbeta[0] == pytest.approx(1.0)
    assert layer.dgamma[0] == pytest.approx(-1.0)
    np.testing.assert_allclose(dx, [[0.0], [0.0]], atol=1e-15)  # dxn = [1, 0] is pure mean + scale


def naive_convolution(x: np.ndarray, W: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    n, _, h, w = x.shape
    fn, _, fh, fw = W.shape
    xp = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    oh, ow = (h + 2 * pad - fh) // stride + 1, (w + 2 * pad - fw) // stride + 1
    out = np.zeros((n, fn, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride : i * stride + fh, j * stride : j * stride + fw]
            out[:, :, i, j] = np.tensordot(patch, W, axes=([1, 2, 3], [1, 2, 3])) + b
    return out


@pytest.mark.parametrize(("stride", "pad"), [(1, 0), (2, 1)])
def test_convolution_matches_the_definition(stride: int, pad: int, rng: np.random.Generator) -> None:
    x, W, b = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    layer = Convolution(W, b, stride=stride, pad=pad)
    out = layer.forward(x)
    np.testing.assert_allclose(out, naive_convolution(x, W, b, stride, pad), rtol=1e-12)
    assert layer.output_shape((3, 7, 6)) == out.shape[1:]
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    # The convolution is linear in x and in W: backward is its adjoint.
    assert np.sum(dx * x) == pytest.approx(np.sum(dout * (out - b[None, :, None, None])), rel=1e-10)
    assert np.sum(layer.dW * W) == pytest.approx(np.sum(dx * x), rel=1e-10)
    np.testing.assert_allclose(layer.db, dout.sum(axis=(0, 2, 3)))


def test_im2col_and_col2im_are_adjoint(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 3, 6, 5))
    col = im2col(x, 3, 2, stride=2, pad=1)
    c = rng.standard_normal(col.shape)
    assert np.sum(col * c) == pytest.approx(np.sum(x * col2im(c, x.shape, 3, 2, stride=2, pad=1)), rel=1e-12)


def test_max_pooling_forward_and_backward() -> None:
    x = np.array([[[[1.0, 2.0, 5.0, 0.0], [3.0, 4.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0], [9.0, 0.0, 3.0, 7.0]]]])
    layer = Pooling(2, 2, stride=2)
    np.testing.assert_array_equal(layer.forward(x), [[[[4.0, 5.0], [9.0, 7.0]]]])
    dx = layer.backward(np.array([[[[10.0, 20.0], [30.0, 40.0]]]]))
    expected = np.zeros((1, 1, 4, 4))
    expected[0, 0, 1, 1], expected[0, 0, 0, 2], expected[0, 0, 3, 0], expected[0, 0, 3, 3] = 10, 20, 30, 40
    np.testing.assert_array_equal(dx, expected)
