"""Max pooling and the convolution's fast layout equal straightforward references.

The references are plain loops over every output element: the window's maximum (padding counts as
-inf, so it never wins), and the upstream gradient added to the first maximum of its window in
row-major order (what `argmax` and PyTorch choose on ties).
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.layers import Convolution, Pooling, col2im, fold, im2col, unfold


def reference_pooling(
    x: np.ndarray, dout: np.ndarray, pool_h: int, pool_w: int, stride: int, pad: int
) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward of max pooling, one window at a time."""
    n, c, h, w = x.shape
    out_h, out_w = (h + 2 * pad - pool_h) // stride + 1, (w + 2 * pad - pool_w) // stride + 1
    out = np.empty((n, c, out_h, out_w))
    dx = np.zeros_like(x)
    for b in range(n):
        for ch in range(c):
            for i in range(out_h):
                for j in range(out_w):
                    best, where = -np.inf, None
                    for y in range(i * stride - pad, i * stride - pad + pool_h):
                        for z in range(j * stride - pad, j * stride - pad + pool_w):
                            if 0 <= y < h and 0 <= z < w and x[b, ch, y, z] > best:
                                best, where = x[b, ch, y, z], (y, z)
                    assert where is not None
                    out[b, ch, i, j] = best
                    dx[b, ch, where[0], where[1]] += dout[b, ch, i, j]
    return out, dx


CASES = [  # (pool_h, pool_w, stride, pad, height, width)
    (2, 2, 2, 0, 8, 6),  # the convnet's case: windows tile the image
    (2, 2, 2, 0, 7, 9),  # odd sizes: the last row and column lie in no window
    (3, 3, 2, 1, 7, 9),  # overlapping windows and padding
    (3, 2, 1, 0, 5, 7),  # rectangular windows, stride 1: every element in several windows
    (2, 3, 3, 1, 9, 8),  # stride larger than the window: gaps between windows
    (3, 3, 3, 2, 7, 7),  # padding of two on a three-wide window
]


@pytest.mark.parametrize(("pool_h", "pool_w", "stride", "pad", "h", "w"), CASES)
def test_pooling_equals_the_loop_reference(
    pool_h: int, pool_w: int, stride: int, pad: int, h: int, w: int, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((2, 3, h, w))
    layer = Pooling(pool_h, pool_w, stride=stride, pad=pad)
    out = layer.forward(x).copy()
    dout = rng.standard_normal(out.shape)
    expected_out, expected_dx = reference_pooling(x, dout, pool_h, pool_w, stride, pad)
    np.testing.assert_array_equal(out, expected_out)
    # Where windows overlap, an element sums several shares: in another order than the loops.
    np.testing.assert_allclose(layer.backward(dout), expected_dx, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize(("pool_h", "pool_w", "stride", "pad", "h", "w"), CASES)
def test_pooling_routes_ties_to_the_first_maximum(
    pool_h: int, pool_w: int, stride: int, pad: int, h: int, w: int, rng: np.random.Generator
) -> None:
    x = rng.integers(0, 2, (2, 2, h, w)).astype(np.float64)  # most windows hold several equal maxima
    layer = Pooling(pool_h, pool_w, stride=stride, pad=pad)
    out = layer.forward(x).copy()
    dout = rng.standard_normal(out.shape)
    expected_out, expected_dx = reference_pooling(x, dout, pool_h, pool_w, stride, pad)
    np.testing.assert_array_equal(out, expected_out)
    # Where windows overlap, an element sums several shares: in another order than the loops.
    np.testing.assert_allclose(layer.backward(dout), expected_dx, rtol=1e-14, atol=1e-15)


def test_padded_pooling_pads_with_minus_infinity() -> None:
    x = -np.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # all negative: a zero pad would win every border window
    layer = Pooling(2, 2, stride=2, pad=1)
    out = layer.forward(x)
    np.testing.assert_array_equal(out, [[[[-1.0, -2.0], [-4.0, -5.0]]]])
    dx = layer.backward(np.ones_like(out))
    np.testing.assert_array_equal(dx, [[[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]])


def test_pooling_rejects_a_pad_as_large_as_the_window() -> None:
    with pytest.raises(ValueError, match=r"pooling pad must be in \[0, 2\) for a 2x3 window, got 2"):
        Pooling(2, 3, stride=2, pad=2)


@pytest.mark.parametrize(("pool_h", "pool_w", "stride", "pad", "h", "w"), CASES)
def test_pooling_evaluation_forward_equals_the_training_forward(
    pool_h: int, pool_w: int, stride: int, pad: int, h: int, w: int, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    layer = Pooling(pool_h, pool_w, stride=stride, pad=pad)
    trained = layer.forward(x, train=True).copy()
    np.testing.assert_array_equal(layer.forward(x, train=False), trained)


@pytest.mark.parametrize(("stride", "pad"), [(1, 0), (2, 1), (3, 2)])
def test_unfold_holds_the_im2col_rows_as_columns_and_fold_is_col2im(
    stride: int, pad: int, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((2, 3, 7, 8))
    col = unfold(x, 3, 2, stride, pad)
    rows = im2col(x, 3, 2, stride, pad)
    np.testing.assert_array_equal(col.transpose(0, 2, 1).reshape(rows.shape), rows)
    patches = rng.standard_normal(col.shape)
    np.testing.assert_allclose(
        fold(patches, x.shape, 3, 2, stride, pad),
        col2im(patches.transpose(0, 2, 1).reshape(rows.shape), x.shape, 3, 2, stride, pad),
        rtol=1e-15,
    )


def test_convolution_output_is_contiguous_for_the_layers_after_it(rng: np.random.Generator) -> None:
    layer = Convolution(rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4))
    out = layer.forward(rng.standard_normal((2, 3, 8, 8)))
    assert out.shape == (2, 4, 6, 6)
    assert out.flags.c_contiguous
