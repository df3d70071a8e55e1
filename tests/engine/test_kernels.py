"""The compiled one-pass kernels (engine.kernels) against the NumPy chains they replace.

Each kernel must give the chain's values bit for bit (NaN, infinities, signed zeros and subnormals
included), in place and into another buffer, and must refuse (do nothing, return False) whatever it
cannot take, so that the layers run the chain instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from engine import kernels
from engine.layers import Relu
from engine.networks import mlp
from engine.optimizers import SGD

REAL = ["float32", "float64"]


@pytest.fixture(autouse=True)
def numba_present() -> None:
    if not kernels.available():
        if os.environ.get("CI") == "true":
            pytest.fail("Numba is a dependency of the engine; CI must have it")
        pytest.skip("Numba is not installed")


MIN_VALUES = kernels.MIN_VALUES  # the engine's threshold, before `any_size` lowers it


@pytest.fixture(autouse=True)
def any_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels on arrays of every size (they start at MIN_VALUES), to test them on awkward shapes."""
    monkeypatch.setattr(kernels, "MIN_VALUES", 0)


@pytest.fixture
def without_kernels() -> Iterator[None]:
    compiled = kernels._compiled
    kernels._compiled = {}
    try:
        yield
    finally:
        kernels._compiled = compiled


def awkward(dtype: str, shape: tuple[int, ...] = (37, 29)) -> Any:
    """Random values with every special value a ReLU can meet, in random places."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(dtype)
    tiny = np.finfo(dtype).smallest_subnormal
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, tiny, -tiny, 1e-30, -1e30], dtype=dtype)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, specials.size * 8, replace=False)] = np.tile(specials, 8)
    return x


class Subclass(np.ndarray):
    """An ndarray subclass: its own operators might not mean NumPy's, so the kernels leave it alone."""


def same_bits(a: Any, b: Any) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", REAL)
@pytest.mark.parametrize("in_place", [True, False], ids=["in place", "into a buffer"])
def test_relu_forward_gives_the_chain_s_mask_and_values_bit_for_bit(dtype: str, in_place: bool) -> None:
    x = awkward(dtype)
    with np.errstate(invalid="ignore"):  # -inf * 0 is NaN in the chain too
        want_mask = x > 0
        want = x * want_mask
    mask = np.ones(x.shape, bool)  # stale values, all overwritten
    out = x if in_place else np.full_like(x, 5.0)
    assert kernels.relu_forward(x, mask, out)
    assert same_bits(mask, want_mask)
    assert same_bits(out, want)
    assert np.isnan(out[np.isneginf(awkward(dtype))]).all()  # the chain's -inf * 0, kept as it was


@pytest.mark.parametrize("dtype", REAL)
@pytest.mark.parametrize("in_place", [True, False], ids=["in place", "into a buffer"])
def test_relu_backward_gives_the_chain_s_product_bit_for_bit(dtype: str, in_place: bool) -> None:
    dout = awkward(dtype)
    mask = np.random.default_rng(3).random(dout.shape) > 0.5
    with np.errstate(invalid="ignore"):
        want = dout * mask
    dx = dout if in_place else np.empty_like(dout)
    assert kernels.relu_backward(dout, mask, dx)
    assert same_bits(dx, want)


def test_the_kernels_take_any_number_of_dimensions_and_sizes() -> None:
    for shape in [(1,), (7,), (3, 5, 2, 4), (1024, 1024)]:
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        mask, out = np.empty(shape, bool), np.empty_like(x)
        assert kernels.relu_forward(x, mask, out)
        assert same_bits(out, x * (x > 0)) and same_bits(mask, x > 0)


def test_the_kernels_refuse_what_they_cannot_take_and_leave_it_untouched() -> None:
    x = awkward("float32", (16, 16))
    mask = np.zeros(x.shape, bool)
    out = np.zeros_like(x)
    flat = x.reshape(-1)
    refused = {
        "a transposed input": (x.T, mask, out),
        "an integer input": (np.ones(x.shape, np.int32), mask, np.ones(x.shape, np.int32)),
        "a float16 input": (np.ones(x.shape, np.float16), mask, np.ones(x.shape, np.float16)),
        "a mask of another dtype": (x, mask.astype(np.uint8), out),
        "an output of another dtype": (x, mask, out.astype(np.float64)),
        "an output of another shape": (x, mask, out[:8]),
        "a strided output": (x[:, :8], mask[:, :8], out[:, ::2]),
        "an output overlapping the input by part": (flat[1:], mask.reshape(-1)[1:], flat[:-1]),
        "a mask inside the input's memory": (x, x.view(bool)[:, :16], out),
    }
    before = x.copy()
    for what, (a, m, o) in refused.items():
        assert not kernels.relu_forward(a, m, o), what
        assert not kernels.relu_backward(a, m, o), what
    assert not kernels.relu_forward(x.view(Subclass), mask, out.view(Subclass)), "a NumPy subclass"
    assert same_bits(x, before) and not mask.any() and not out.any()


def test_nothing_runs_without_numba(without_kernels: None) -> None:
    x = np.ones(8, np.float32)
    mask = np.zeros(8, bool)
    assert not kernels.available()
    assert not kernels.relu_forward(x, mask, x)
    assert not kernels.relu_backward(x, mask, x)
    assert not mask.any()


@pytest.mark.parametrize("in_place", [True, False], ids=["in place", "into a buffer"])
def test_the_relu_layer_gives_the_same_numbers_with_and_without_the_kernels(in_place: bool) -> None:
    x = awkward("float32", (64, 33))
    dout = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
    results = []
    for compiled in (kernels._kernels(), {}):
        saved, kernels._compiled = kernels._compiled, compiled
        try:
            layer = Relu()
            layer.in_place = in_place
            with np.errstate(invalid="ignore"):
                y = layer.forward(x.copy()).copy()
                dx = layer.backward(dout.copy()).copy()
            results.append((y, dx, layer.mask.copy()))
        finally:
            kernels._compiled = saved
    (y1, dx1, m1), (y2, dx2, m2) = results
    assert same_bits(y1, y2) and same_bits(dx1, dx2) and same_bits(m1, m2)


def test_the_relu_layer_on_numpy_runs_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    compiled = dict(kernels._kernels())
    for name, fn in list(compiled.items()):
        compiled[name] = lambda *a, _fn=fn, _name=name: (calls.append(_name), _fn(*a))[1]
    monkeypatch.setattr(kernels, "_compiled", compiled)
    layer = Relu()
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
    layer.forward(x)
    layer.backward(np.ones_like(x))
    layer.in_place = True
    layer.forward(x)
    layer.backward(np.ones_like(x))
    assert calls == ["relu_forward", "relu_backward", "relu_forward_in_place", "relu_backward_in_place"]


def test_an_mlp_trains_to_the_same_losses_with_and_without_the_kernels() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 20)).astype(np.float32)
    t = rng.integers(0, 5, 256)
    losses = []
    for compiled in (kernels._kernels(), {}):
        saved, kernels._compiled = kernels._compiled, compiled
        try:
            net, opt = mlp([20, 64, 64, 5], seed=3), SGD(0.1)
            steps = []
            for _ in range(20):
                net.train_step(x, t, opt)
                steps.append(net.last_loss)
            losses.append(steps)
        finally:
            kernels._compiled = saved
    assert losses[0] == losses[1]
    assert losses[0][-1] < losses[0][0]


def test_arrays_below_the_threshold_run_numpy_s_chain_and_never_import_numba() -> None:
    probe = (
        "import sys, numpy as np\n"
        "from engine import kernels\n"
        "from engine.layers import Relu\n"
        "x = np.linspace(-1, 1, kernels.MIN_VALUES - 1, dtype=np.float32)\n"
        "assert not kernels.relu_forward(x, np.empty(x.size, bool), x)\n"
        "y = Relu().forward(x)\n"
        "assert (y == np.maximum(x, 0)).all()\n"
        "print('numba' in sys.modules, 'scipy' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "False"]


def test_arrays_from_the_threshold_on_run_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "MIN_VALUES", MIN_VALUES)
    below = np.linspace(-1, 1, MIN_VALUES - 1, dtype=np.float32)
    assert not kernels.relu_forward(below, np.empty(below.size, bool), below)
    x = np.linspace(-1, 1, MIN_VALUES, dtype=np.float32)
    mask = np.empty(x.size, bool)
    assert kernels.relu_forward(x, mask, x)
    assert same_bits(mask, np.linspace(-1, 1, MIN_VALUES, dtype=np.float32) > 0)
