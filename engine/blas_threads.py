"""How many BLAS threads each matrix product of a training step gets: by its size.

PyTorch splits work into threads only above a grain size; OpenBLAS wakes every thread of its pool for
any product above a few hundred thousand multiply-adds. On a product as small as the textbook net's
(100x784x50, 3.9M multiply-adds) a second thread costs more in wake-up and synchronisation than it
saves, so during a training step (`sized_products`) a product of m x k by k x n gets one thread per
`WORK_PER_THREAD` multiply-adds (m*k*n), at least one and at most the ceiling: the pool's thread count
when the step began, as the process set it (`threadpool_limits`, `OPENBLAS_NUM_THREADS`, a worker's
`--threads`). The pool is set back to the ceiling when the step ends, so between steps everyone
(the fingerprint included) reads the count the process chose.

The thread count is changed through OpenBLAS's own `openblas_set_num_threads`, found once by
threadpoolctl (its context manager rescans the loaded libraries on every entry: far too slow per
product). Only OpenBLAS pools are sized; with another BLAS (MKL, BLIS, Accelerate) or on a GPU the
products run as the library decides. The pool is one per process, like OpenBLAS's own: two threads of one
process training at once would size each other's products (the engine runs one job per process).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

#: Multiply-adds per BLAS thread. The smallest products that gained from a second thread on the
#: benchmark machine (benchmarks/bench_blas_threads.py) are ~16M multiply-adds.
WORK_PER_THREAD = 1 << 24


class BlasPool:
    """The OpenBLAS thread pools NumPy calls, with cheap direct setters (found on first use)."""

    def __init__(self) -> None:
        self._setters: list[Callable[[int], Any]] = []
        self._getter: Callable[[], int] | None = None
        self._found_at_modules = -1  # len(sys.modules) at the last search: redone after new imports
        self.ceiling = 1
        self.current = 1
        self.active = False

    def _find(self) -> None:
        if self._found_at_modules == len(sys.modules):
            return
        from threadpoolctl import ThreadpoolController

        setters, getter = [], None
        for lib in ThreadpoolController().select(internal_api="openblas").lib_controllers:
            set_fn, get_fn = (
                lib._get_symbol("openblas_set_num_threads"),
                lib._get_symbol("openblas_get_num_threads"),
            )
            if set_fn is None or get_fn is None:
                continue
            setters.append(set_fn)
            getter = getter or get_fn
        self._setters, self._getter = setters, getter
        self._found_at_modules = len(sys.modules)

    def begin(self) -> bool:
        """Read the ceiling (the pool's count now) and start sizing products; True if this call started it.

        False, and nothing to undo, when sizing is already on (an outer step owns it), when NumPy's BLAS
        is not OpenBLAS, or when the ceiling is one thread (nothing to choose).
        """
        if self.active:
            return False
        self._find()
        if self._getter is None:
            return False
        self.ceiling = self.current = max(1, int(self._getter()))
        self.active = self.ceiling > 1
        return self.active

    def fit(self, work: int) -> None:
        """Give the next product `work` multiply-adds' worth of threads (no call when unchanged)."""
        if not self.active:
            return
        threads = min(self.ceiling, max(1, work // WORK_PER_THREAD))
        if threads != self.current:
            self._set(threads)

    def end(self) -> None:
        """Put the ceiling back and stop sizing."""
        if self.active and self.current != self.ceiling:
            self._set(self.ceiling)
        self.active = False

    def _set(self, threads: int) -> None:
        for set_threads in self._setters:
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
