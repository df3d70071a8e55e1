"""The OpenBLAS that NumPy loaded: its thread-count setters and three BLAS routines that do in one pass
what NumPy's ufuncs do in more.

A CPU training step spends a few percent of its time outside the matrix products, nearly all of it
streaming arrays through memory on one thread. Three of those passes are BLAS routines:

- `gemm_add` with a bias (y = x W + b, `Affine.forward`): the bias is written into the output and the
  product added to it (GEMM with beta = 1). OpenBLAS zeroes the output before a beta = 0 product anyway,
  so the bias costs that pass instead of a read-and-write pass of its own.
- `axpy` (p += alpha g, the SGD update): one pass on the pool's threads, where `p -= lr * g` is two
  passes on one thread.
- `gemv_into` with a vector of ones (the bias gradient, a sum over the batch): on the pool's threads,
  where `sum(axis=0)` runs on one.

The routines are found through threadpoolctl in the OpenBLAS library NumPy itself calls (so the thread
counts `engine.blas_threads` sets apply to them) and checked once, on small cases, against NumPy. Each
function returns False, having done nothing, where it does not apply (another BLAS, an array that is not
a NumPy float32/float64 array, an operand layout BLAS does not take); the caller then computes the same
value with NumPy.

The values differ from NumPy's expressions in rounding only: BLAS kernels fuse multiplies and adds (one
rounding where `p - lr * g` has two) and sum in their own order. tests/engine/test_openblas.py bounds the
difference; the gradient checks and the training tests hold either way.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS enums

#: Below this many values the routines decline. Measured on a quiet 2-CPU host (bench_openblas_passes.py,
#: benchmarks/README.md): at 1024 x 1024 the AXPY takes 0.35-0.52 of NumPy's SGD update and the GEMV
#: 0.64-1.04 of the column sum; at 256 x 256 both are even with NumPy while the pool's threads are awake
#: and 1.6-1.8 times slower when they must be woken; at 100 x 50 the call costs more than NumPy's pass.
MIN_VALUES = 1 << 18
_REAL = {np.dtype(np.float32): ("s", ctypes.c_float), np.dtype(np.float64): ("d", ctypes.c_double)}


class OpenBlas:
    """The OpenBLAS libraries in this process, found through threadpoolctl (searched again after imports)."""

    def __init__(self) -> None:
        self._found_at_modules = -1  # len(sys.modules) at the last search
        self.setters: list[Callable[[int], Any]] = []  # openblas_set_num_threads of every copy loaded
        self.getter: Callable[[], int] | None = None
        self._lib: Any = None  # threadpoolctl's controller of the copy NumPy calls, when found
        self._routines: dict[str, Any] = {}
        self._checked: bool | None = None  # None: not yet checked against NumPy

    def refresh(self) -> None:
        """Search the loaded libraries, unless no module was imported since the last search."""
        if self._found_at_modules == len(sys.modules):
            return
        from threadpoolctl import ThreadpoolController

        libs = [
            lib
            for lib in ThreadpoolController().select(internal_api="openblas").lib_controllers
            if lib._get_symbol("openblas_set_num_threads") and lib._get_symbol("openblas_get_num_threads")
        ]
        self.setters = [lib._get_symbol("openblas_set_num_threads") for lib in libs]
        lib = numpy_s_openblas(libs)
        counted = lib or (libs[0] if libs else None)  # every copy gets the same count from `setters`
        self.getter = counted._get_symbol("openblas_get_num_threads") if counted else None
        if lib is not self._lib:
            self._lib, self._routines, self._checked = lib, {}, None
        self._found_at_modules = len(sys.modules)

    def routine(self, name: str) -> Any:
        """The CBLAS function `name` (e.g. "saxpy") of NumPy's OpenBLAS, typed, or None without one."""
        self.refresh()
        if self._lib is None:
            return None
        fn = self._routines.get(name)
        if fn is None and name not in self._routines:
            fn = self._lib._get_symbol("cblas_" + name)
            if fn is not None:
                fn.restype = None
                fn.argtypes = _argtypes(name, _blasint(self._lib))
            self._routines[name] = fn
        return fn

    def usable(self) -> bool:
        """Whether the routines are found and agree with NumPy on a small case (checked once)."""
        self.refresh()
        if self._checked is None:
            self._checked = False  # a failing check (or an exception in it) leaves them off
            self._checked = self._lib is not None and _agrees_with_numpy()
        return self._checked


def numpy_s_openblas(libs: list[Any]) -> Any:
    """Of threadpoolctl's controllers of the OpenBLAS copies loaded, the one NumPy calls, or None.

    NumPy's wheels ship their copy beside the package (numpy.libs: Linux, Windows) or inside it
    (numpy/.dylibs: macOS). SciPy's wheels ship another (scipy.libs), loaded by `import scipy.linalg`
    and by Numba, and it may be listed first; a system NumPy's one OpenBLAS lies elsewhere, and is taken
    when it is the only copy.
    """
    numpy_pkg = Path(np.__file__).resolve().parent
    numpy_dirs = (numpy_pkg, numpy_pkg.parent / "numpy.libs")
    for lib in libs:
        if any(Path(lib.filepath).resolve().is_relative_to(d) for d in numpy_dirs):
            return lib
    return libs[0] if len(libs) == 1 else None


def _blasint(lib: Any) -> Any:
    """OpenBLAS's integer: 64 bits in an ILP64 build (NumPy's wheels: symbols ending `64_`)."""
    config = lib._get_symbol("openblas_get_config")
    text = ""
    if config is not None:
        config.restype = ctypes.c_char_p
        text = (config() or b"").decode(errors="replace")
    ilp64 = "USE64BITINT" in text or getattr(lib, "_symbol_suffix", "").startswith("64")
    return ctypes.c_int64 if ilp64 else ctypes.c_int32


def _argtypes(name: str, n: Any) -> list[Any]:
    real = ctypes.c_float if name[0] == "s" else ctypes.c_double
    ptr, enum = ctypes.c_void_p, ctypes.c_int
    if name[1:] == "axpy":  # n, alpha, x, incx, y, incy
        return [n, real, ptr, n, ptr, n]
    if name[1:] == "gemm":  # order, transA, transB, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc
        return [enum, enum, enum, n, n, n, real, ptr, n, ptr, n, real, ptr, n]
    if name[1:] == "gemv":  # order, trans, m, n, alpha, A, lda, x, incx, beta, y, incy
        return [enum, enum, n, n, real, ptr, n, ptr, n, real, ptr, n]
    raise ValueError(name)


OPENBLAS = OpenBlas()


def axpy(alpha: float, x: Any, y: Any) -> bool:
    """y += alpha * x in place through one BLAS AXPY; False (nothing done) where BLAS cannot take them
    (contiguous NumPy arrays of one real dtype and shape only) or y has fewer than MIN_VALUES values."""
    return y.size >= MIN_VALUES and OPENBLAS.usable() and _axpy(alpha, x, y)


def gemm_add(a: Any, b: Any, out: Any, bias: Any = None) -> bool:
    """out += a @ b through one BLAS GEMM (beta = 1), or with `bias` out = a @ b + bias (bias, a vector
    of out's columns, written into out first); False (nothing done) where BLAS cannot take them or out
    has fewer than MIN_VALUES values.

    For 2-D NumPy arrays of one real dtype, `out` row-major, `a` and `b` row-major or transposes of
    row-major arrays (as `x.T` is).
    """
    return out.size >= MIN_VALUES and OPENBLAS.usable() and _gemm_add(a, b, out, bias)


def gemv_into(x: Any, a: Any, out: Any) -> bool:
    """out = x @ a for a vector x (m,) and a matrix a (m, n) through one BLAS GEMV; False (nothing done)
    where BLAS cannot take them or a has fewer than MIN_VALUES values. With x all ones it is the sum of
    a's rows."""
    return a.size >= MIN_VALUES and OPENBLAS.usable() and _gemv_into(x, a, out)


def _plain(*arrays: Any) -> bool:
    """NumPy arrays BLAS can take as they are: one real dtype (float32/float64), aligned, not empty."""
    dtype = arrays[0].dtype if type(arrays[0]) is np.ndarray else None
    return dtype in _REAL and all(
        type(a) is np.ndarray and a.dtype == dtype and a.size > 0 and a.flags.aligned for a in arrays
    )


def _operand(a: np.ndarray) -> tuple[int, int] | None:
    """(transpose flag, leading dimension) of a 2-D operand of a row-major product, or None."""
    item = a.itemsize
    if a.strides[1] == item and a.strides[0] % item == 0 and a.strides[0] >= a.shape[1] * item:
        return _NO_TRANS, max(1, a.strides[0] // item)  # rows of a (possibly wider) row-major array
    if a.strides[0] == item and a.strides[1] % item == 0 and a.strides[1] >= a.shape[0] * item:
        return _TRANS, max(1, a.strides[1] // item)  # the transpose of one (x.T of a row-major x)
    return None


def _axpy(alpha: float, x: Any, y: Any) -> bool:
    if not (_plain(x, y) and x.shape == y.shape and x.flags.c_contiguous and y.flags.c_contiguous):
        return False
    fn = OPENBLAS.routine(_REAL[y.dtype][0] + "axpy")
    if fn is None or not y.flags.writeable:
        return False
    fn(y.size, alpha, x.ctypes.data, 1, y.ctypes.data, 1)
    return True


def _gemm_add(a: Any, b: Any, out: Any, bias: Any = None) -> bool:
    if not (_plain(a, b, out) and a.ndim == b.ndim == out.ndim == 2):
        return False
    if bias is not None and not (_plain(bias, out) and bias.shape == out.shape[1:]):
        return False
    m, k = a.shape
    n = b.shape[1]
    if b.shape[0] != k or out.shape != (m, n) or not (out.flags.c_contiguous and out.flags.writeable):
        return False
    a_op, b_op = _operand(a), _operand(b)
    fn = OPENBLAS.routine(_REAL[out.dtype][0] + "gemm")
    if a_op is None or b_op is None or fn is None:
        return False
    if bias is not None:
        np.copyto(out, bias)  # over every row: the pass BLAS would otherwise spend zeroing out
    data = (a.ctypes.data, a_op[1], b.ctypes.data, b_op[1])
    fn(_ROW_MAJOR, a_op[0], b_op[0], m, n, k, 1.0, *data, 1.0, out.ctypes.data, n)
    return True


def _gemv_into(x: Any, a: Any, out: Any) -> bool:
    if not (_plain(x, a, out) and a.ndim == 2 and x.ndim == out.ndim == 1):
        return False
    m, n = a.shape
    if x.shape != (m,) or out.shape != (n,) or not (x.flags.c_contiguous and out.flags.c_contiguous):
        return False
    op = _operand(a)
    fn = OPENBLAS.routine(_REAL[out.dtype][0] + "gemv")
    if op is None or fn is None or not out.flags.writeable:
        return False
    # x @ a = a^T x. A row-major a is the (m, n) matrix to transpose; a transposed view is the row-major
    # (n, m) matrix a^T itself.
    trans, rows, cols = (_TRANS, m, n) if op[0] == _NO_TRANS else (_NO_TRANS, n, m)
    fn(_ROW_MAJOR, trans, rows, cols, 1.0, a.ctypes.data, op[1], x.ctypes.data, 1, 0.0, out.ctypes.data, 1)
    return True


def _agrees_with_numpy() -> bool:
    """Each routine on small float32 and float64 cases, in every operand layout, against NumPy."""
    rng = np.random.default_rng(0)
    dtype: Any
    for dtype in (np.float32, np.float64):
        a, b = rng.random((5, 3)).astype(dtype), rng.random((3, 4)).astype(dtype)
        for x in (a, np.asfortranarray(a)):
            for w in (b, np.asfortranarray(b)):
                out = np.full((5, 4), 0.5, dtype)
                if not _gemm_add(x, w, out) or not np.allclose(out, a @ b + 0.5, rtol=1e-5):
                    return False
        v, row = rng.random(5).astype(dtype), np.empty(4, dtype)
        for m in (a @ b, np.asfortranarray(a @ b)):
            if not _gemv_into(v, m, row) or not np.allclose(row, v @ (a @ b), rtol=1e-5):
                return False
        y, g = rng.random(7).astype(dtype), rng.random(7).astype(dtype)
        expected = y - 0.25 * g
        if not _axpy(-0.25, g, y) or not np.allclose(y, expected, rtol=1e-5):
            return False
    return True
