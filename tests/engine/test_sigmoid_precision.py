"""Sigmoid and its derivative within a few ulp of the exact values, over the whole range, in both dtypes.

The reference is the definition, 1 / (1 + exp(-x)) and exp(-x) / (1 + exp(-x))^2, evaluated in Python's
`decimal` with 40 significant digits (no overflow there) and rounded once to float64.
"""

from __future__ import annotations

import decimal

import numpy as np
import pytest

from engine.backend import Device, as_numpy
from engine.layers import Sigmoid

# exp contributes up to ~2.5 ulp (NumPy's SIMD float32 exp), 1 + e, the reciprocal and the products 0.5 each
MAX_ULP = 6.0
CONTEXT = decimal.Context(prec=40)
# beyond these, y underflows to 0 (or rounds to 1) in the dtype anyway
RANGES = {"float32": 110.0, "float64": 750.0}
POINTS = [0.0, 17.0, -17.0, 80.0, -80.0, 1e-30, -1e-30, 0.5, -0.5, 1.0, -1.0]


def exact(x: float) -> tuple[float, float]:
    """sigmoid(x) and its derivative at the float x, correctly rounded to float64."""
    e = CONTEXT.exp(CONTEXT.minus(decimal.Decimal(x)))
    one_plus_e = CONTEXT.add(1, e)
    return float(CONTEXT.divide(1, one_plus_e)), float(
        CONTEXT.divide(e, CONTEXT.multiply(one_plus_e, one_plus_e))
    )


def ulp_error(got: np.ndarray, reference: np.ndarray, dtype: str) -> np.ndarray:
    """|got - reference| in units of the spacing of the dtype at the reference (subnormals included)."""
    spacing = np.spacing(np.abs(reference).astype(dtype)).astype(np.float64)
    return np.abs(got.astype(np.float64) - reference) / spacing


def sample(dtype: str) -> np.ndarray:
    limit = RANGES[dtype]
    rng = np.random.default_rng(3)
    grid = np.linspace(-limit, limit, 8001)
    return np.concatenate([grid, rng.uniform(-20, 20, 2000), POINTS]).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_forward_and_backward_are_within_a_few_ulp_everywhere(dtype: str) -> None:
    x = sample(dtype)
    reference = np.array([exact(float(v)) for v in x])
    layer = Sigmoid()
    y = layer.forward(x)
    dy = layer.backward(np.ones_like(x))
    assert y.dtype == dy.dtype == np.dtype(dtype)
    assert ulp_error(y, reference[:, 0], dtype).max() <= MAX_ULP
    assert ulp_error(dy, reference[:, 1], dtype).max() <= MAX_ULP


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_keeps_the_negative_tail(dtype: str) -> None:
    x = np.array([-80.0, -17.0, 0.0, 17.0, 80.0], dtype=dtype)
    layer = Sigmoid()
    y = layer.forward(x).astype(np.float64)
    dy = layer.backward(np.ones_like(x)).astype(np.float64)
    rtol = 4 * float(np.finfo(dtype).eps)
    tail, at_17 = 1.8048513878454153e-35, 4.1399373760035016e-08  # exp(-80); sigmoid'(17) = sigmoid'(-17)
    np.testing.assert_allclose(y, [tail, 4.1399375473943306e-08, 0.5, 0.9999999586006245, 1.0], rtol=rtol)
    np.testing.assert_allclose(dy, [tail, at_17, 0.25, at_17, tail], rtol=rtol)  # as small on the right


def test_sigmoid_passes_nan_and_infinities_through() -> None:
    layer = Sigmoid()
    y = layer.forward(np.array([np.nan, -np.inf, np.inf]))
    assert np.isnan(y[0])  # a diverged net must stay visibly diverged
    assert (y[1], y[2]) == (0.0, 1.0)
    dy = layer.backward(np.ones(3))
    assert np.isnan(dy[0]) and (dy[1], dy[2]) == (0.0, 0.0)


def test_sigmoid_reuses_its_buffers_and_writes_no_warnings(recwarn: pytest.WarningsRecorder) -> None:
    layer = Sigmoid()
    x = np.linspace(-1000, 1000, 101)
    first = layer.forward(x)
    assert layer.forward(-x) is first  # the same output buffer, per the layers' contract
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # exp(-|x|) cannot overflow
        layer.forward(x)
        layer.backward(np.ones_like(x))
    assert len(recwarn) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_on_the_gpu_is_within_a_few_ulp_too(gpu: Device, dtype: str) -> None:
    x = sample(dtype)
    reference = np.array([exact(float(v)) for v in x])
    layer = Sigmoid()
    x_gpu = gpu.xp.asarray(x)
    y = as_numpy(layer.forward(x_gpu))
    dy = as_numpy(layer.backward(gpu.xp.ones_like(x_gpu)))
    # CuPy compiles its CUDA kernels with -ftz=true (cupy/cupy#8382, #9576): a float32 result below the
    # smallest normal is flushed to 0 (seen on the H200, 4 Dec 2026: 0 where sigmoid(-87.4) = 1.17e-38).
    # Above it the bound is the CPU's; below it, 0 or the value, off by less than the smallest normal.
    smallest_normal = float(np.finfo(dtype).smallest_normal) if gpu.backend == "cuda" else 0.0
    for got, want in ((y, reference[:, 0]), (dy, reference[:, 1])):
        normal = np.abs(want) >= smallest_normal
        assert ulp_error(got[normal], want[normal], dtype).max() <= MAX_ULP
        assert np.all(np.abs(got[~normal].astype(np.float64) - want[~normal]) < smallest_normal)
