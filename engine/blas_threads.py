"""How many BLAS threads each matrix product of a training step gets: by its size.

PyTorch splits work into threads only above a grain size; OpenBLAS wakes every thread of its pool for
any product above a few hundred thousand multiply-adds, where a second thread costs about what it saves
(and every thread of a 16-core pool would cost more). So during a training step (`sized_products`) a
product of m x k by k x n gets one thread per `WORK_PER_THREAD` multiply-adds (m*k*n), at least one
and at most the ceiling: the pool's thread count
when the step began, as the process set it (`threadpool_limits`, `OPENBLAS_NUM_THREADS`, a worker's
`--threads`). The pool is set back to the ceiling when the step ends, so between steps everyone
(the fingerprint included) reads the count the process chose.

The thread count is changed through OpenBLAS's own `openblas_set_num_threads`, found once by
threadpoolctl (`engine.openblas`; threadpoolctl's context manager rescans the loaded libraries on
every entry: far too slow per product). Only OpenBLAS pools are sized; with another BLAS (MKL, BLIS,
Accelerate) or on a GPU the products run as the library decides. The pool is one per process, like
OpenBLAS's own: two threads of one process training at once would size each other's products (the
engine runs one job per process).

`affine` and `column_sums` are the layers' two other BLAS calls (y = x W + b; the bias gradient), sized
the same way and carried out by `engine.openblas` where NumPy's BLAS is OpenBLAS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from engine.openblas import OPENBLAS, gemm_add, gemv_into

#: Multiply-adds per BLAS thread. On a quiet 2-CPU machine (4 Dec 2026, benchmarks/README.md) a second
#: thread ran products of 1.6M-7.8M multiply-adds (the textbook net's 100x784x50 among them) in
#: 0.53-0.69 of one thread's time, 1.0M in 0.96 and 0.5M in 1.00: one thread per ~1M.
WORK_PER_THREAD = 1 << 20

#: Values per thread of a memory-bound pass (the bias gradient's GEMV): OpenBLAS's own threshold is
#: 9,216; a 1024x1024 pass ran in half the time on two threads (benchmarks/README.md), 100x50 on one.
ELEMENTS_PER_THREAD = 1 << 16


class BlasPool:
    """The OpenBLAS thread pools NumPy calls, with cheap direct setters (found on first use)."""

    def __init__(self) -> None:
        self.ceiling = 1
        self.current = 1
        self.active = False

    def begin(self) -> bool:
        """Read the ceiling (the pool's count now) and start sizing products; True if this call started it.

        False, and nothing to undo, when sizing is already on (an outer step owns it), when NumPy's BLAS
        is not OpenBLAS, or when the ceiling is one thread (nothing to choose).
        """
        if self.active:
            return False
        OPENBLAS.refresh()
        if OPENBLAS.getter is None:
            return False
        self.ceiling = self.current = max(1, int(OPENBLAS.getter()))
        self.active = self.ceiling > 1
        return self.active

    def fit(self, work: int) -> None:
        """Give the next product `work` multiply-adds' worth of threads (no call when unchanged)."""
        self._fit(work // WORK_PER_THREAD)

    def fit_pass(self, elements: int) -> None:
        """Give a memory-bound routine over `elements` values (a GEMV) one thread per ELEMENTS_PER_THREAD."""
        self._fit(elements // ELEMENTS_PER_THREAD)

    def _fit(self, wanted: int) -> None:
        """`wanted` threads, at least one and at most the ceiling; no call when that is the current count."""
        if not self.active:
            return
        threads = min(self.ceiling, max(1, wanted))
        if threads != self.current:
            self._set(threads)

    def end(self) -> None:
        """Put the ceiling back and stop sizing."""
        if self.active and self.current != self.ceiling:
            self._set(self.ceiling)
        self.active = False

    def _set(self, threads: int) -> None:
        for set_threads in OPENBLAS.setters:
            set_threads(threads)
        self.current = threads


POOL = BlasPool()


@contextlib.contextmanager
def sized_products() -> Iterator[BlasPool]:
    """Within this block, `matmul` gives each product threads by its size; the ceiling is restored after.

    Reentrant: an inner block leaves the sizing to the outer one.
    """
    started = POOL.begin()
    try:
        yield POOL
    finally:
        if started:
            POOL.end()


def matmul(xp: Any, a: Any, b: Any, out: Any) -> Any:
    """`xp.matmul(a, b, out=out)` on as many BLAS threads as its size earns (see the module docstring)."""
    if POOL.active:
        POOL.fit(a.shape[-2] * a.shape[-1] * b.shape[-1])
    return xp.matmul(a, b, out=out)


def affine(xp: Any, x: Any, W: Any, b: Any, out: Any) -> Any:
    """out = x W + b, the product sized like `matmul`'s. On NumPy with OpenBLAS the bias is written into
    out and one GEMM adds x W to it (`engine.openblas`); elsewhere the product, then the bias added."""
    if xp is np:
        POOL.fit(x.shape[-2] * x.shape[-1] * W.shape[-1])
        if gemm_add(x, W, out, bias=b):
            return out
    out = matmul(xp, x, W, out)
    out += b
    return out


def column_sums(xp: Any, a: Any, ones: Any, out: Any) -> Any:
    """out = a.sum(axis=0) for a 2-D a; on NumPy with OpenBLAS as ones @ a, one GEMV on the pool's threads
    (`ones`: a vector of a.shape[0] ones, the caller's, kept between calls)."""
    if xp is np:
        POOL.fit_pass(a.size)
        if gemv_into(ones, a, out):
            return out
    return xp.sum(a, axis=0, out=out)
