"""The BLAS routines the CPU step calls directly (engine.openblas) against NumPy's own expressions.

Each routine must give NumPy's value up to rounding (a fused multiply-add, another summation order), in
every operand layout it accepts, on the BLAS threads (sizes above OpenBLAS's threading thresholds), and
must refuse (do nothing, return False) whatever it cannot take, so that the layers fall back to NumPy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from engine import blas_threads
from engine.blas_threads import affine, column_sums, sized_products
from engine.layers import Affine
from engine.networks import mlp
from engine.openblas import MIN_VALUES, OPENBLAS, axpy, gemm_add, gemv_into, numpy_s_openblas
from engine.optimizers import SGD


@pytest.fixture(autouse=True)
def openblas() -> None:
    if not OPENBLAS.usable():
        pytest.skip(f"NumPy's BLAS is not an OpenBLAS these routines can call: {threadpool_info()}")


@contextlib.contextmanager
def switched_off() -> Iterator[None]:
    """OpenBLAS's routines switched off, as on a NumPy built against another BLAS."""
    checked = OPENBLAS._checked
    OPENBLAS._checked = False
    try:
        yield
    finally:
        OPENBLAS._checked = checked


@pytest.fixture
def unusable() -> Iterator[None]:
    with switched_off():
        yield


def nearest(value: Fraction, dtype: Any) -> Any:
    """The value of `dtype` nearest to an exact rational (ties to the even one): rounded once."""
    guess = dtype(float(value))  # within one step of the answer (float64 first, then dtype)
    candidates = [np.nextafter(guess, dtype(-np.inf)), guess, np.nextafter(guess, dtype(np.inf))]
    errors = [abs(Fraction(float(c)) - value) for c in candidates]
    best = min(errors)
    ties = [c for c, e in zip(candidates, errors, strict=True) if e == best]
    return ties[0] if len(ties) == 1 else next(c for c in ties if int(c.view(f"u{c.itemsize}")) % 2 == 0)


def one_rounding_or_two(w: np.ndarray, alpha: float, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w + alpha g rounded once (a fused multiply-add: the exact value, then one rounding), and rounded
    twice (alpha g, then the sum: NumPy's expression), elementwise in w's dtype."""
    dtype = w.dtype.type
    a = Fraction(float(dtype(alpha)))
    once = np.array(
        [nearest(Fraction(float(wi)) + a * Fraction(float(gi)), dtype) for wi, gi in zip(w, g, strict=True)]
    )
    return once, w + dtype(alpha) * g


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(MIN_VALUES,), (513, 517)])  # above OpenBLAS's 10,000 for threads
def test_axpy_gives_the_update_rounded_once_or_as_numpy_does(dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape))
    w, g = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    y = w.copy()
    assert axpy(-0.1, g, y)
    sample = np.arange(
        0, w.size, 13
    )  # every 13th value, in every part of the array (exact arithmetic is slow)
    once, twice = one_rounding_or_two(w.ravel()[sample], -0.1, g.ravel()[sample])
    assert not np.array_equal(once, twice)  # the two roundings differ somewhere: the test can tell them apart
    got = y.ravel()[sample]
    each = (got == once) | (got == twice)
    assert each.all(), (got[~each], once[~each], twice[~each])


def test_the_routines_leave_small_arrays_to_numpy() -> None:
    """Below MIN_VALUES the call would cost what it saves: each declines and touches nothing."""
    rng = np.random.default_rng(1)
    y, g = rng.standard_normal(MIN_VALUES - 1), rng.standard_normal(MIN_VALUES - 1)
    x, w, b = rng.standard_normal((100, 784)), rng.standard_normal((784, 50)), rng.standard_normal(50)
    out, column = np.full((100, 50), 7.0), np.full(50, 7.0)
    assert not axpy(-0.1, g, y.copy())
    assert not gemm_add(x, w, out, bias=b)  # the textbook net's first layer: 5,000 outputs
    assert not gemv_into(np.ones(100), out, column)
    assert (out == 7.0).all() and (column == 7.0).all()


def test_axpy_refuses_what_blas_cannot_take() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1024, 512))
    cases = [
        (w[:, ::2].copy(), w[:, ::2]),  # a strided view
        (w.astype(np.float32), w),  # two dtypes
        (w.astype(np.float16), w.astype(np.float16)),  # no BLAS for half precision
        (np.arange(24).reshape(6, 4), np.arange(24).reshape(6, 4)),  # integers
        (w[:3], w),  # two shapes
        (np.empty((0, 4)), np.empty((0, 4))),
    ]
    for g, y in cases:
        before = y.copy()
        assert not axpy(-0.1, g, y)
        np.testing.assert_array_equal(y, before)


def layouts(
    rng: np.random.Generator, m: int, k: int, n: int, dtype: str
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """The same x (m, k) and W (k, n) as row-major arrays, transposed views and rows of wider arrays."""
    x, w = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    wide = np.zeros((m, k + 5), dtype)
    wide[:, :k] = x
    yield "row-major", x, w
    yield "x transposed view", np.ascontiguousarray(x.T).T, w
    yield "W transposed view", x, np.ascontiguousarray(w.T).T
    yield "x rows of a wider array", wide[:, :k], w


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(512, 300, 513), (1024, 100, 256)])
def test_gemm_with_a_bias_equals_the_product_plus_the_bias(dtype: str, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(1)
    m, k, n = shape
    b = rng.standard_normal(n).astype(dtype)
    eps = np.finfo(dtype).eps
    for layout, x, w in layouts(rng, m, k, n, dtype):
        exact = x.astype(np.float64) @ w.astype(np.float64) + b
        scale = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)) + np.abs(b)
        out = np.full((m, n), np.nan, dtype)
        assert gemm_add(x, w, out, bias=b), layout
        # BLAS's error bound for a dot product of length k, with the bias one more term
        assert (np.abs(out - exact) <= 2 * (k + 1) * eps * scale).all(), layout
        plain = x @ w + b
        assert np.allclose(out, plain, rtol=0, atol=4 * (k + 1) * eps * scale.max()), layout


def test_gemm_without_a_bias_adds_to_what_out_holds() -> None:
    rng = np.random.default_rng(2)
    x, w, out = rng.standard_normal((512, 3)), rng.standard_normal((3, 512)), rng.standard_normal((512, 512))
    expected = out + x @ w
    assert gemm_add(x, w, out)
    np.testing.assert_allclose(out, expected, rtol=1e-14)


def test_gemm_refuses_what_blas_cannot_take() -> None:
    rng = np.random.default_rng(3)
    m, n = 512, 513
    x, w, b = rng.standard_normal((m, 6)), rng.standard_normal((6, n)), rng.standard_normal(n)
    cases = {
        "x with strided columns": (x[:, ::2], w[:3], b, np.empty((m, n))),
        "out transposed": (x, w, b, np.empty((n, m)).T),
        "mixed dtypes": (x.astype(np.float32), w, b, np.empty((m, n))),
        "bias of another length": (x, w, b[:4], np.empty((m, n))),
        "bias of another dtype": (x, w, b.astype(np.float32), np.empty((m, n))),
        "3-D x": (x.reshape(2, m // 2, 6), w, b, np.empty((m, n))),
        "shapes that do not chain": (x, w[:5], b, np.empty((m, n))),
        "empty": (x[:0], w, b, np.empty((0, n))),
    }
    for case, (a, bb, bias, out) in cases.items():
        before = out.copy()
        assert not gemm_add(a, bb, out, bias=bias), case
        np.testing.assert_array_equal(out, before, err_msg=case)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(MIN_VALUES, 1), (1024, 1024), (67, 4099)])
def test_gemv_with_ones_sums_the_rows(dtype: str, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(4)
    a = rng.standard_normal(shape).astype(dtype)
    exact = a.astype(np.float64).sum(axis=0)
    bound = 2 * shape[0] * np.finfo(dtype).eps * np.abs(a.astype(np.float64)).sum(axis=0)
    ones = np.ones(shape[0], dtype)
    for matrix in (a, np.asfortranarray(a)):
        out = np.full(shape[1], np.nan, dtype)
        assert gemv_into(ones, matrix, out)
        assert (np.abs(out - exact) <= bound).all()


def test_column_sums_and_affine_take_numpy_s_path_without_openblas(unusable: None) -> None:
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((1024, 300)), rng.standard_normal((300, 256)), rng.standard_normal(256)
    assert not axpy(-0.1, x, x.copy()) and not gemm_add(x, w, np.empty((1024, 256)), bias=b)
    np.testing.assert_array_equal(affine(np, x, w, b, np.empty((1024, 256))), x @ w + b)  # bit for bit
    np.testing.assert_array_equal(column_sums(np, x, np.ones(1024), np.empty(300)), x.sum(axis=0))
    w_sgd, g = rng.standard_normal((1024, 300)), rng.standard_normal((1024, 300))
    params, expected = {"W1": w_sgd.copy()}, w_sgd - 0.1 * g
    SGD(lr=0.1).update(params, {"W1": g})
    np.testing.assert_array_equal(params["W1"], expected)


def test_an_mlp_trains_to_the_same_losses_with_and_without_the_routines() -> None:
    """The BLAS routines change roundings, not training: float64 losses over 60 steps agree to 1e-12."""
    rng = np.random.default_rng(6)
    x, t = rng.standard_normal((1024, 512)), rng.integers(0, 5, 1024)

    def losses() -> list[float]:  # every routine runs: outputs 1024 x 512, W1 512 x 512
        net, opt = mlp([512, 512, 128, 5], dtype="float64", seed=1), SGD(lr=0.1)
        out = []
        for _ in range(60):
            net.train_step(x, t, opt)
            out.append(float(net.last_loss))
        return out

    fast = losses()
    with switched_off():
        plain = losses()
    assert fast != plain  # the routines did run (other roundings)
    np.testing.assert_allclose(fast, plain, rtol=1e-12)
    assert fast[-1] < 0.5 * fast[0]  # it trains


def test_affine_layer_on_numpy_uses_the_bias_gemm_and_the_ones_vector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def counted(name: str, fn: Callable[..., bool]) -> Callable[..., bool]:
        def call(*args: Any, **kwargs: Any) -> bool:
            done = fn(*args, **kwargs)
            calls.append(f"{name} {done}")
            return done

        return call

    monkeypatch.setattr(blas_threads, "gemm_add", counted("gemm", blas_threads.gemm_add))
    monkeypatch.setattr(blas_threads, "gemv_into", counted("gemv", blas_threads.gemv_into))
    rng = np.random.default_rng(7)
    layer = Affine(rng.standard_normal((300, 256)), rng.standard_normal(256))
    x, dout = rng.standard_normal((1024, 300)), rng.standard_normal((1024, 256))
    np.testing.assert_allclose(layer.forward(x), x @ layer.W + layer.b, rtol=1e-13)
    layer.backward(dout)
    assert calls == ["gemm True", "gemv True"]
    np.testing.assert_allclose(layer.db, dout.sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(layer.dW, x.T @ dout, rtol=1e-13)
    ones = layer._buffers[("ones", (1024,), np.dtype(np.float64))]
    np.testing.assert_array_equal(ones, np.ones(1024))


def openblas_threads() -> set[int]:
    return {int(p["num_threads"]) for p in threadpool_info() if p["internal_api"] == "openblas"}


def test_the_bias_gradient_runs_on_every_thread_when_large_and_one_when_small() -> None:
    with threadpool_limits(limits=2, user_api="blas"):
        if openblas_threads() != {2}:
            pytest.skip("OpenBLAS cannot run 2 threads here")
        large = np.ones((MIN_VALUES // 64, 64))
        small = np.ones((100, 50))
        with sized_products():
            column_sums(np, small, np.ones(100), np.empty(50))
            assert openblas_threads() == {1}
            out = column_sums(np, large, np.ones(large.shape[0]), np.empty(64))
            assert openblas_threads() == {2}
        np.testing.assert_array_equal(out, np.full(64, float(large.shape[0])))
        assert openblas_threads() == {2}


@pytest.mark.parametrize("order", ["as loaded", "reversed"])
def test_the_routines_call_numpy_s_openblas_when_scipy_has_loaded_its_own(order: str) -> None:
    # SciPy's wheels ship a second OpenBLAS (scipy.libs), loaded by `import scipy.linalg` and by Numba
    # when it compiles engine.kernels, and threadpoolctl may list it first. Calling that copy's GEMM
    # between NumPy's products left two thread pools spinning on the same CPUs: a training step ran three
    # times slower. Both orders of the real controllers must give NumPy's copy.
    import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS)
    from threadpoolctl import ThreadpoolController

    libs = ThreadpoolController().select(internal_api="openblas").lib_controllers
    folders = {Path(lib.filepath).resolve().parent.name for lib in libs}
    if "scipy.libs" not in folders:
        pytest.skip(f"SciPy has no OpenBLAS of its own here: {folders}")
    numpy_pkg = Path(np.__file__).resolve().parent
    chosen = numpy_s_openblas(libs if order == "as loaded" else libs[::-1])
    assert Path(chosen.filepath).resolve().parent in (numpy_pkg.parent / "numpy.libs", numpy_pkg / ".dylibs")
    assert OPENBLAS.usable() and OPENBLAS._lib.filepath == chosen.filepath


def test_a_lone_openblas_outside_numpy_s_folders_is_taken_as_numpy_s() -> None:
    # A system NumPy (Debian's python3-numpy) links the system's one OpenBLAS, outside NumPy's folders.
    from threadpoolctl import ThreadpoolController

    lone = ThreadpoolController().select(internal_api="openblas").lib_controllers[:1]
    assert numpy_s_openblas(lone) is lone[0]
    assert numpy_s_openblas([]) is None
