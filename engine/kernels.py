"""One-pass CPU kernels, compiled by Numba, for the elementwise chains NumPy runs as several passes.

ReLU is the one that matters: NumPy computes it as a comparison into a mask and a product with that mask,
two passes over the activations on one thread, and right after a multi-threaded matrix product those
passes cost more than they do alone (705 against 668 us for a forward and backward of 2^20 values). One loop
that reads x once and writes the mask and the output together takes about half of the chain's time
there (benchmarks/README.md, "ReLU in one pass").

Each kernel computes exactly what the chain computes, bit for bit: out = x * (x > 0) and dx = dout * mask,
multiplications by 1 or 0 in the array's own dtype, so NaN, infinities and signed zeros come out as the
chain's do. The kernels run on one thread (no `parallel=True`: Numba's pool and OpenBLAS's spinning
workers would compete for the same CPUs) and release the GIL.

Each function returns False, having done nothing, where it does not apply: arrays of fewer than
`MIN_VALUES` values, Numba not installed, an array that is not a C-contiguous NumPy float32/float64
array, arrays of different sizes. The caller then runs the NumPy chain. Compiled code is cached on disk
(`cache=True`), so a process after the first loads it instead of compiling (about half a second a kernel
the first time).

What Numba costs a process: importing it and running the kernels adds 125-136 MiB to its peak resident set
(LLVM, and SciPy with its own OpenBLAS, which Numba imports), counted in a job's memory estimate
(`KERNELS_RUNTIME_BYTES`). Small arrays never pay it: below `MIN_VALUES` nothing is imported.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import numpy as np

#: Below this many values the kernels decline and Numba is not imported. Measured (benchmarks/README.md,
#: "ReLU in one pass"): a forward and backward pair costs about 6 us more per call than NumPy's chain, is
#: even with it near 2^15 values and takes 0.57-0.59 of its time from 2^18 on (0.53 right after a product).
MIN_VALUES = 1 << 18
#: What importing Numba and running the kernels adds to a process's peak resident set: 125.6 MiB loading
#: them from the cache, 135.5 MiB compiling both dtypes (`benchmarks/bench_relu_kernels.py --memory`; x86_64,
#: Numba 0.68.1, SciPy 1.17.1).
KERNELS_RUNTIME_BYTES = 160 * 2**20
_REAL = (np.dtype(np.float32), np.dtype(np.float64))
_compiled: dict[str, Any] | None = None  # name -> kernel, once Numba was looked for ({} without it)


def _kernels() -> dict[str, Any]:
    """The compiled kernels, built on first use; an empty dict where Numba cannot be imported."""
    global _compiled
    if _compiled is not None:
        return _compiled
    try:
        import numba
    except ImportError:  # an optional speed-up: the NumPy chain computes the same values
        _compiled = {}
        return _compiled

    def jit(fn: Any) -> Any:
        try:
            return numba.njit(nogil=True, cache=True)(fn)
        except RuntimeError:  # no writable cache folder (a read-only install, no home): compile each time
            return numba.njit(nogil=True)(fn)

    # Separate in-place forms: with one array for input and output the loop runs at the README's speed;
    # given the same array twice, the compiled loop cannot rule out a partial overlap and ran several times
    # slower (a timing that was not kept).
    @jit
    def relu_forward(x: Any, mask: Any, out: Any) -> None:  # pragma: no cover - runs compiled
        for i in range(x.size):
            v = x[i]
            keep = v > 0
            mask[i] = keep
            out[i] = v * keep  # v * 1 or v * 0 in x's dtype, as NumPy's x * (x > 0)

    @jit
    def relu_forward_in_place(x: Any, mask: Any) -> None:  # pragma: no cover - runs compiled
        for i in range(x.size):
            v = x[i]
            keep = v > 0
            mask[i] = keep
            x[i] = v * keep

    @jit
    def relu_backward(dout: Any, mask: Any, dx: Any) -> None:  # pragma: no cover - runs compiled
        for i in range(dout.size):
            dx[i] = dout[i] * mask[i]

    @jit
    def relu_backward_in_place(dout: Any, mask: Any) -> None:  # pragma: no cover - runs compiled
        for i in range(dout.size):
            dout[i] = dout[i] * mask[i]

    _compiled = {
        "relu_forward": relu_forward,
        "relu_forward_in_place": relu_forward_in_place,
        "relu_backward": relu_backward,
        "relu_backward_in_place": relu_backward_in_place,
    }
    return _compiled


def available() -> bool:
    """Whether the kernels can run here (Numba importable; imports it)."""
    return bool(_kernels())


@functools.cache
def installed() -> bool:
    """Whether Numba is installed, without importing it (for memory estimates; looked up once)."""
    return importlib.util.find_spec("numba") is not None


def _flat(a: Any, dtype: np.dtype[Any] | None = None) -> Any:
    """`a` as a 1-D view when it is a C-contiguous NumPy array (of `dtype`, when given), else None."""
    if type(a) is not np.ndarray or not a.flags.c_contiguous:
        return None
    if dtype is not None and a.dtype != dtype:
        return None
    return a.reshape(-1)


def _run(name: str, a: Any, mask: Any, out: Any) -> bool:
    """Run kernel `name` (or its in-place form when out is a itself) on float a, bool mask and out, all of
    a's shape; False where it does not apply (see the module docstring)."""
    if a.size < MIN_VALUES or a.dtype not in _REAL or mask.shape != a.shape or out.shape != a.shape:
        return False
    af, mf, of = _flat(a), _flat(mask, np.dtype(bool)), _flat(out, a.dtype)
    if af is None or mf is None or of is None:
        return False
    if np.may_share_memory(mf, af) or np.may_share_memory(mf, of):
        return False
    in_place = np.may_share_memory(af, of)
    if in_place and af.__array_interface__["data"][0] != of.__array_interface__["data"][0]:
        return False  # a partial overlap: NumPy's ufuncs handle it, the loops do not
    kernels = _kernels()
    if not kernels:
        return False
    if in_place:
        kernels[name + "_in_place"](af, mf)
    else:
        kernels[name](af, mf, of)
    return True


def relu_forward(x: Any, mask: Any, out: Any) -> bool:
    """mask = x > 0 and out = x * mask in one pass (out may be x itself); False, doing nothing, where the
    kernel does not apply."""
    return _run("relu_forward", x, mask, out)


def relu_backward(dout: Any, mask: Any, dx: Any) -> bool:
    """dx = dout * mask in one pass (dx may be dout itself); False, doing nothing, where the kernel does
    not apply."""
    return _run("relu_backward", dout, mask, dx)
