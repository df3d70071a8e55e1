"""NumPy's calling convention over OpenCL buffers, so the engine's layers run on any OpenCL device unchanged.

An `OpenclArray` is a strided view of one `pyopencl.array.Array` (its flat storage): a shape, strides in
elements and an offset, as NumPy's. Views (`.T`, `reshape` of a contiguous array, a slice along the first
axis) share the storage, as on NumPy, so the layers' buffers and in-place updates mean what they mean
there. The array module (`OpenclNumpy`, one per device's queue) has exactly the NumPy functions the
engine's MLP path calls; each takes NumPy's `out=` and writes into it (OpenCL buffers can be changed).

Kernels: every elementwise function is one kernel written here for its operation, dtypes, shape and
strides (compiled once, kept), with the offsets and scalars as arguments, so broadcasting and transposed
operands cost no copy. Matrix products are CLBlast's GEMM (`pyclblast.gemm`), a transposed operand passed
as a flag on its storage. Reductions along an axis are one work-item per result running down that axis, in
NumPy's summation order for the short axes the layers reduce (pairwise summation differs below 1e-7). A
stack of products is one strided batched GEMM where its slices share a layout.

Launch cost decides a small net's step here, not arithmetic: a kernel keeps the arguments it was last
enqueued with and only changed ones are set (a scalar argument costs ~6 us on pocl), an elementwise call's
plan is kept by its signature, and the chains the engine issues every step (ReLU's forward, the softmax
cross-entropy's forward and backward, SGD over all parameters) are one kernel each (`fused_*`, asked for
through `engine.layers.fused_form`), each computing exactly what its plain chain computes.

Importing this module imports PyOpenCL; nothing on the NumPy path imports it (`engine.backend` looks for
these arrays only once it is loaded).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

# The OpenCL C type of each dtype the engine uses (bool is one byte, as NumPy's).
_C_TYPES = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.bool_): "uchar",
    np.dtype(np.uint8): "uchar",
    np.dtype(np.int8): "char",
    np.dtype(np.int32): "int",
    np.dtype(np.uint32): "uint",
    np.dtype(np.int64): "long",
    np.dtype(np.uint64): "ulong",
}

# Elementwise operations: OpenCL C over the operands a, b (already in the computing type T).
_BINARY = {
    "add": "a + b",
    "subtract": "a - b",
    "multiply": "a * b",
    "divide": "a / b",
    "power": "pow(a, b)",
    "maximum": "(isnan(a) || a > b) ? a : b",
    "minimum": "(isnan(a) || a < b) ? a : b",
    "copysign": "copysign(a, b)",
    "greater": "a > b",
    "greater_equal": "a >= b",
    "less": "a < b",
    "less_equal": "a <= b",
    "equal": "a == b",
    "not_equal": "a != b",
}
_COMPARISONS = frozenset({"greater", "greater_equal", "less", "less_equal", "equal", "not_equal"})
_UNARY = {
    "exp": "exp(a)",
    "log": "log(a)",
    "sqrt": "sqrt(a)",
    "tanh": "tanh(a)",
    "reciprocal": "((T)1) / a",
    "negative": "-a",
    "abs": "fabs(a)",
    "copy": "a",
}
_FLOAT_ONLY = frozenset({"exp", "log", "sqrt", "tanh", "power", "copysign", "abs", "maximum", "minimum"})
_REDUCE = {"sum": ("0", "acc + v"), "max": ("-INFINITY", "(isnan(v) || v > acc) ? v : acc")}


def c_type(dtype: Any) -> str:
    """The OpenCL C type of a NumPy dtype; a ValueError names the accepted ones."""
    try:
        return _C_TYPES[np.dtype(dtype)]
    except KeyError:
        accepted = ", ".join(str(d) for d in _C_TYPES)
        raise ValueError(f"the opencl backend has no dtype {np.dtype(dtype)}; accepted: {accepted}") from None


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _broadcast_strides(
    shape: tuple[int, ...], strides: tuple[int, ...], to: tuple[int, ...]
) -> tuple[int, ...]:
    """Strides reading an array of `shape` as one of shape `to` (NumPy's broadcasting; 0 where repeated)."""
    if len(shape) > len(to):
        raise ValueError(f"operands could not be broadcast together with shapes {shape} {to}")
    lead = len(to) - len(shape)
    found = [0] * lead
    for n, stride, m in zip(shape, strides, to[lead:], strict=True):
        if n == m:
            found.append(stride if m > 1 else 0)
        elif n == 1:
            found.append(0)
        else:
            raise ValueError(f"operands could not be broadcast together with shapes {shape} {to}")
    return tuple(found)


def _offset_expression(name: str, shape: tuple[int, ...], strides: tuple[int, ...]) -> str:
    """C for the element offset of `name` at flat index `i` of the result's `shape` (strides baked in)."""
    if strides == _contiguous_strides(shape):  # row-major: no division per element
        return f"{name}_off + i"
    terms = [f"{name}_off"]
    inner = 1
    for n, stride in reversed(list(zip(shape, strides, strict=True))):
        if stride and n > 1:
            terms.append(f"((i / {inner}) % {n}) * {stride}")
        inner *= n
    return " + ".join(terms)


class _Kernel:
    """A compiled kernel and the arguments it was last enqueued with.

    OpenCL keeps a kernel's arguments from one enqueue to the next, and setting a scalar one costs about
    6 us on pocl (a buffer 0.1 us, the enqueue 3 us), more than the small kernels themselves: so only the
    arguments that changed are set. The buffers last passed stay referenced until replaced.
    """

    def __init__(self, program: Any, name: str) -> None:
        self.kernel = cl.Kernel(program, name)  # once: `program.name` makes a new kernel on every access
        self.last: list[Any] = [None] * self.kernel.num_args

    def __call__(
        self, queue: cl.CommandQueue, size: int, args: Sequence[Any], group: int | None = None
    ) -> None:
        kernel, last = self.kernel, self.last
        for i, value in enumerate(args):
            held = last[i]
            if value is not held and (held is None or type(value) is not type(held) or value != held):
                kernel.set_arg(i, value)
                last[i] = value
        cl.enqueue_nd_range_kernel(queue, kernel, (size,), None if group is None else (group,))


def _build(context: cl.Context, source: str, name: str) -> _Kernel:
    """The kernel `name` of `source`, compiled with NumPy's rounding: no contraction of a * b + c into
    one fused multiply-add, which OpenCL C otherwise allows."""
    return _Kernel(cl.Program(context, "#pragma OPENCL FP_CONTRACT OFF\n" + source).build(), name)


class OpenclArray:
    """A strided view of OpenCL storage with the part of `numpy.ndarray` the engine uses."""

    __array_priority__ = 100  # NumPy scalars and arrays defer to this class's operators

    def __init__(
        self,
        module: OpenclNumpy,
        storage: cl_array.Array,
        shape: tuple[int, ...],
        strides: tuple[int, ...] | None = None,
        offset: int = 0,
    ) -> None:
        self.module = module
        self.storage = storage
        self.shape = tuple(int(n) for n in shape)
        self.strides = _contiguous_strides(self.shape) if strides is None else tuple(strides)
        self.offset = int(offset)
        self.dtype: np.dtype[Any] = storage.dtype  # kept, not asked: every operation's key reads it

    # --- what an ndarray tells -----------------------------------------------------------------------

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self) -> Any:
        return (self[i] for i in range(self.shape[0]))

    @property
    def is_contiguous(self) -> bool:
        found = self.__dict__.get("_contiguous")
        if found is None:  # asked every step of the same arrays, whose shape and strides never change
            found = self._contiguous = all(
                s == c
                for n, s, c in zip(self.shape, self.strides, _contiguous_strides(self.shape), strict=True)
                if n > 1
            )
        return found

    def __repr__(self) -> str:
        return f"OpenclArray({self.get()!r})"

    # --- to the host ---------------------------------------------------------------------------------

    def get(self) -> np.ndarray:
        """A NumPy copy."""
        if self.size == 0:
            return np.empty(self.shape, self.dtype)
        view = self if self.is_contiguous else self.copy()
        flat = np.empty(view.size, view.dtype)
        cl.enqueue_copy(
            self.module.queue,
            flat,
            view.storage.base_data,  # type: ignore[arg-type]
            src_offset=view.storage.offset + view.offset * view.dtype.itemsize,
        )
        return flat.reshape(self.shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        host = self.get()
        return host if dtype is None else host.astype(dtype)

    def item(self) -> Any:
        return self.get().item()

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __bool__(self) -> bool:
        return bool(self.item())

    def tolist(self) -> Any:
        return self.get().tolist()

    # --- views and copies ----------------------------------------------------------------------------

    def _view(self, shape: tuple[int, ...], strides: tuple[int, ...], offset: int) -> OpenclArray:
        return OpenclArray(self.module, self.storage, shape, strides, offset)

    @property
    def T(self) -> OpenclArray:
        return self._view(self.shape[::-1], self.strides[::-1], self.offset)

    def transpose(self, *axes: int) -> OpenclArray:
        order = tuple(axes[0]) if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        order = order or tuple(reversed(range(self.ndim)))
        return self._view(
            tuple(self.shape[a] for a in order), tuple(self.strides[a] for a in order), self.offset
        )

    def reshape(self, *shape: Any) -> OpenclArray:
        wanted = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        wanted = tuple(int(n) for n in wanted)
        if -1 in wanted:
            known = math.prod(n for n in wanted if n != -1)
            wanted = tuple(self.size // max(known, 1) if n == -1 else n for n in wanted)
        if math.prod(wanted) != self.size:
            raise ValueError(f"cannot reshape array of size {self.size} into shape {wanted}")
        source = self if self.is_contiguous else self.copy()
        return source._view(wanted, _contiguous_strides(wanted), source.offset)

    def ravel(self) -> OpenclArray:
        return self.reshape(-1)

    def copy(self) -> OpenclArray:
        return self.module.copy(self)

    def astype(self, dtype: Any, copy: bool = True) -> OpenclArray:
        if np.dtype(dtype) == self.dtype and not copy:
            return self
        return self.module._elementwise("copy", (self,), np.dtype(dtype))

    def __getitem__(self, index: Any) -> OpenclArray:
        if isinstance(index, tuple) and any(isinstance(i, OpenclArray) for i in index):
            return self.module._gather(self, index)
        if isinstance(index, OpenclArray):
            return self.module.take(self, index, axis=0)
        return self._basic_index(index)

    def _basic_index(self, index: Any) -> OpenclArray:
        """Integers, slices, `None` and `...`: a view, as NumPy's basic indexing."""
        parts = list(index) if isinstance(index, tuple) else [index]
        if any(p is Ellipsis for p in parts):
            at = parts.index(Ellipsis)
            named = sum(1 for p in parts if p is not None and p is not Ellipsis)
            parts[at : at + 1] = [slice(None)] * (self.ndim - named)
        parts += [slice(None)] * (self.ndim - sum(1 for p in parts if p is not None))
        shape, strides, offset, axis = [], [], self.offset, 0
        for part in parts:
            if part is None:
                shape.append(1)
                strides.append(0)
                continue
            n, stride = self.shape[axis], self.strides[axis]
            axis += 1
            if isinstance(part, slice):
                start, stop, step = part.indices(n)
                offset += start * stride
                shape.append(max(0, (stop - start + step - 1) // step) if step > 0 else 0)
                strides.append(stride * step)
            elif isinstance(part, (int, np.integer)):
                if not -n <= int(part) < n:
                    raise IndexError(f"index {int(part)} is out of bounds for axis {axis - 1} with size {n}")
                offset += (int(part) % n) * stride
            else:
                raise IndexError(f"the opencl backend has no index of type {type(part).__name__}")
        return self._view(tuple(shape), tuple(strides), offset)

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, tuple) and any(isinstance(i, OpenclArray) for i in index):
            self.module._scatter(self, index, value)
            return
        self.module._elementwise("copy", (value,), self.dtype, out=self[index])

    # --- reductions ----------------------------------------------------------------------------------

    def sum(self, axis: int | None = None, dtype: Any = None, out: Any = None) -> OpenclArray:
        return self.module.sum(self, axis=axis, dtype=dtype, out=out)

    def max(self, axis: int | None = None, out: Any = None) -> OpenclArray:
        return self.module.max(self, axis=axis, out=out)

    def mean(self, axis: int | None = None) -> OpenclArray:
        return self.module.mean(self, axis=axis)

    def argmax(self, axis: int | None = None) -> OpenclArray:
        return self.module.argmax(self, axis=axis)

    # --- operators -----------------------------------------------------------------------------------

    def _binary(self, op: str, other: Any, reverse: bool = False) -> OpenclArray:
        return self.module._elementwise(op, (other, self) if reverse else (self, other))

    def __add__(self, other: Any) -> OpenclArray:
        return self._binary("add", other)

    def __radd__(self, other: Any) -> OpenclArray:
        return self._binary("add", other, True)

    def __sub__(self, other: Any) -> OpenclArray:
        return self._binary("subtract", other)

    def __rsub__(self, other: Any) -> OpenclArray:
        return self._binary("subtract", other, True)

    def __mul__(self, other: Any) -> OpenclArray:
        return self._binary("multiply", other)

    def __rmul__(self, other: Any) -> OpenclArray:
        return self._binary("multiply", other, True)

    def __truediv__(self, other: Any) -> OpenclArray:
        return self._binary("divide", other)

    def __rtruediv__(self, other: Any) -> OpenclArray:
        return self._binary("divide", other, True)

    def __pow__(self, other: Any) -> OpenclArray:
        if isinstance(other, (int, float)) and other == 2:
            return self._binary("multiply", self)  # NumPy squares by multiplying too
        return self._binary("power", other)

    def __neg__(self) -> OpenclArray:
        return self.module._elementwise("negative", (self,))

    def __gt__(self, other: Any) -> OpenclArray:
        return self._binary("greater", other)

    def __ge__(self, other: Any) -> OpenclArray:
        return self._binary("greater_equal", other)

    def __lt__(self, other: Any) -> OpenclArray:
        return self._binary("less", other)

    def __le__(self, other: Any) -> OpenclArray:
        return self._binary("less_equal", other)

    def __eq__(self, other: Any) -> OpenclArray:  # type: ignore[override]
        return self._binary("equal", other)

    def __ne__(self, other: Any) -> OpenclArray:  # type: ignore[override]
        return self._binary("not_equal", other)

    __hash__ = None  # type: ignore[assignment]

    def _in_place(self, op: str, other: Any) -> OpenclArray:
        return self.module._elementwise(op, (self, other), out=self)

    def __iadd__(self, other: Any) -> OpenclArray:
        return self._in_place("add", other)

    def __isub__(self, other: Any) -> OpenclArray:
        return self._in_place("subtract", other)

    def __imul__(self, other: Any) -> OpenclArray:
        return self._in_place("multiply", other)

    def __itruediv__(self, other: Any) -> OpenclArray:
        return self._in_place("divide", other)

    def __matmul__(self, other: Any) -> OpenclArray:
        return self.module.matmul(self, other)


class _HostRandom:
    """`xp.random`: generators drawing on the host and copying the draws to the device (dropout masks)."""

    def __init__(self, module: OpenclNumpy) -> None:
        self.module = module

    def default_rng(self, seed: int | None = None) -> HostGenerator:
        return HostGenerator(self.module, np.random.default_rng(seed))


class HostGenerator:
    """The `Generator` method the engine draws with, `random(shape, dtype)`: NumPy's numbers, on the device
    (the same seed gives NumPy's masks)."""

    def __init__(self, module: OpenclNumpy, rng: np.random.Generator) -> None:
        self.module, self.rng = module, rng

    def random(self, shape: tuple[int, ...], dtype: Any = np.float64) -> OpenclArray:
        return self.module.asarray(self.rng.random(shape, dtype=dtype))


def _ufunc(op: str) -> Any:
    """The array module's method for the elementwise `op`, taking NumPy's `out=`."""

    def function(self: OpenclNumpy, *args: Any, out: OpenclArray | None = None, **kwargs: Any) -> OpenclArray:
        return self._elementwise(op, args, out=out)

    function.__name__ = op
    return function


class OpenclNumpy:
    """The array module of one OpenCL queue: the NumPy functions the engine's MLP path calls."""

    __name__ = "opencl.numpy"  # as a module's (`lacks_numpy_forms` asks)
    immutable = False
    # NumPy's dtypes, as `xp.float32` is asked for
    float32, float64, bool_, uint8, int32, int64, uint = (
        np.float32,
        np.float64,
        np.bool_,
        np.uint8,
        np.int32,
        np.int64,
        np.uint,
    )
    inf, nan = np.inf, np.nan

    def __init__(self, queue: cl.CommandQueue) -> None:
        self.queue = queue
        self.context = queue.context
        self.random = _HostRandom(self)
        self._kernels: dict[Any, _Kernel] = {}  # compiled, by what their source depends on
        self._plans: dict[Any, Any] = {}  # `_elementwise`'s, by call signature

    def __repr__(self) -> str:
        return f"<array module opencl.numpy on {self.queue.device.name}>"

    def forget_arguments(self) -> None:
        """Drop every kernel's hold on the buffers it was last enqueued with (after a job: its arrays can
        then be freed); the next call of a kernel sets all its arguments."""
        for kernel in self._kernels.values():
            kernel.last = [None] * len(kernel.last)

    # --- making arrays -------------------------------------------------------------------------------

    def empty(self, shape: Any, dtype: Any = np.float64) -> OpenclArray:
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape)
        # Two-dimensional storage (one row): CLBlast's wrapper takes matrices only, and reads it by offset.
        storage = cl_array.empty(self.queue, (1, max(math.prod(shape), 1)), np.dtype(dtype))
        return OpenclArray(self, storage, shape)

    def full(self, shape: Any, value: Any, dtype: Any = np.float64) -> OpenclArray:
        out = self.empty(shape, dtype)
        self._elementwise("copy", (value,), out.dtype, out=out)
        return out

    def zeros(self, shape: Any, dtype: Any = np.float64) -> OpenclArray:
        return self.full(shape, 0, dtype)

    def ones(self, shape: Any, dtype: Any = np.float64) -> OpenclArray:
        return self.full(shape, 1, dtype)

    def empty_like(self, a: OpenclArray, dtype: Any = None) -> OpenclArray:
        return self.empty(a.shape, a.dtype if dtype is None else dtype)

    def zeros_like(self, a: OpenclArray, dtype: Any = None) -> OpenclArray:
        return self.zeros(a.shape, a.dtype if dtype is None else dtype)

    def ones_like(self, a: OpenclArray, dtype: Any = None) -> OpenclArray:
        return self.ones(a.shape, a.dtype if dtype is None else dtype)

    def arange(self, n: int, dtype: Any = np.int64) -> OpenclArray:
        return self.asarray(np.arange(n, dtype=dtype))

    def asarray(self, a: Any, dtype: Any = None) -> OpenclArray:
        """`a` on this device (no copy when it is one of its arrays of that dtype already)."""
        if isinstance(a, OpenclArray):
            return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
        host = np.ascontiguousarray(np.asarray(a, dtype=dtype))
        if host.dtype == np.float16 or host.dtype.kind not in "biuf":
            raise ValueError(f"the opencl backend has no dtype {host.dtype}")
        out = self.empty(host.shape, host.dtype)
        if host.size:
            cl.enqueue_copy(self.queue, out.storage.base_data, host, dst_offset=out.storage.offset)  # type: ignore[arg-type]
        return out

    array = asarray

    def copy(self, a: OpenclArray) -> OpenclArray:
        return self._elementwise("copy", (a,), a.dtype)

    def copyto(self, dst: OpenclArray, src: Any) -> None:
        self._elementwise("copy", (src,), dst.dtype, out=dst)

    def stack(self, arrays: Sequence[Any]) -> OpenclArray:
        return self.asarray(np.stack([np.asarray(a) for a in arrays]))

    # --- elementwise ---------------------------------------------------------------------------------

    def _pointer(self, a: OpenclArray) -> tuple[Any, np.int64]:
        """A kernel's two arguments for `a`: its storage's buffer and its first element's offset."""
        return a.storage.base_data, np.int64(a.offset + a.storage.offset // a.dtype.itemsize)

    def _operand(self, value: Any) -> Any:
        if isinstance(value, (OpenclArray, int, float, bool, np.generic)):
            return value
        return self.asarray(value)

    def _elementwise(
        self, op: str, operands: tuple[Any, ...], dtype: Any = None, out: OpenclArray | None = None
    ) -> OpenclArray:
        """`op` of the operands (arrays broadcast as NumPy's, Python and NumPy scalars) written into `out`
        (or a new array); `dtype` is the computing type (default NumPy's result type).

        What a call compiles to depends only on its signature (the operation, each operand's dtype, shape
        and strides or scalar type, and `out`'s), so the kernel, result shape and dtype are kept per
        signature (`_plans`): a repeated call builds its key, sets the changed arguments and enqueues.
        Python scalars are weak (NumPy 2's rule), so their type, not their value, decides the result.
        """
        key: list[Any] = [op, dtype, None if out is None else (out.dtype, out.shape, out.strides)]
        for v in operands:
            if isinstance(v, OpenclArray):
                key.append((v.dtype, v.shape, v.strides))
            elif isinstance(v, (bool, int, float)):
                key.append(type(v))
            elif isinstance(v, np.generic):
                key.append(v.dtype)
            else:  # host data: on the device first
                return self._elementwise(op, tuple(self._operand(v) for v in operands), dtype, out)
        signature = tuple(key)
        plan = self._plans.get(signature)
        if plan is None:
            plan = self._plans[signature] = self._elementwise_plan(op, operands, dtype, out)
        kernel, shape, result, scalar = plan
        if out is None:
            out = self.empty(shape, result)
        if kernel is None:  # nothing to compute
            return out
        args = list(self._pointer(out))
        for v in operands:
            if isinstance(v, OpenclArray):
                args += self._pointer(v)
            else:
                args.append(scalar(v))
        kernel(self.queue, out.size, args)
        return out

    def _elementwise_plan(
        self, op: str, operands: tuple[Any, ...], dtype: Any, out: OpenclArray | None
    ) -> tuple[_Kernel | None, tuple[int, ...], np.dtype[Any], Any]:
        """(kernel, result shape, result dtype, the scalars' type) of one signature of `_elementwise`."""
        arrays = [v for v in operands if isinstance(v, OpenclArray)]
        shape = np.broadcast_shapes(*(a.shape for a in arrays)) if arrays else ()
        if out is not None:
            shape = out.shape if not shape or out.shape == shape else np.broadcast_shapes(shape, out.shape)
            if shape != out.shape:
                raise ValueError(f"non-broadcastable output operand with shape {out.shape} for {shape}")
        promoted = np.result_type(*(v.dtype if isinstance(v, OpenclArray) else v for v in operands))
        if op in _FLOAT_ONLY and promoted.kind != "f":
            promoted = np.result_type(promoted, np.float64) if promoted.itemsize > 2 else np.dtype(np.float32)
        compute = np.dtype(dtype) if dtype is not None and op == "copy" else promoted
        result = np.dtype(np.bool_) if op in _COMPARISONS else compute
        if out is not None:
            result = out.dtype  # cast on store, as NumPy's `out=` (a comparison into floats: 1.0 and 0.0)
        if math.prod(shape) == 0:
            return None, shape, result, compute.type
        out_strides = out.strides if out is not None else _contiguous_strides(shape)
        T = c_type(compute)
        layout: list[tuple[str, tuple[int, ...]] | None] = []
        for v in operands:
            if isinstance(v, OpenclArray):
                layout.append((v.dtype.str, _broadcast_strides(v.shape, v.strides, shape)))
            else:
                layout.append(None)
        key = ("ew", op, T, result.str, shape, out_strides, tuple(layout))
        kernel = self._kernels.get(key)
        if kernel is None:
            kernel = self._elementwise_kernel(op, T, result, out_strides, shape, operands, layout)
            self._kernels[key] = kernel
        return kernel, shape, result, compute.type

    def _elementwise_kernel(
        self,
        op: str,
        T: str,
        result: np.dtype[Any],
        out_strides: tuple[int, ...],
        shape: tuple[int, ...],
        operands: tuple[Any, ...],
        layout: list[Any],
    ) -> _Kernel:
        names = "ab"
        params = [f"__global {c_type(result)} *out", "long out_off"]
        reads = []
        for name, v, found in zip(names, operands, layout, strict=False):
            if found is None:
                params.append(f"{T} {name}")
            else:
                params += [f"__global const {c_type(v.dtype)} *{name}_p", f"long {name}_off"]
                reads.append(f"{T} {name} = ({T}){name}_p[{_offset_expression(name, shape, found[1])}];")
        expression = {**_BINARY, **_UNARY}[op]
        source = f"""
        {"#pragma OPENCL EXTENSION cl_khr_fp64 : enable" if "double" in " ".join(params) + T else ""}
        #define T {T}
        __kernel void ew({", ".join(params)}) {{
            long i = get_global_id(0);
            {" ".join(reads)}
            out[{_offset_expression("out", shape, out_strides)}] = ({c_type(result)})({expression});
        }}
        """
        return _build(self.context, source, "ew")

    add, subtract, multiply, divide, power = (
        _ufunc(o) for o in ("add", "subtract", "multiply", "divide", "power")
    )
    true_divide = divide
    maximum, minimum, copysign = (_ufunc(o) for o in ("maximum", "minimum", "copysign"))
    greater, greater_equal, less, less_equal, equal, not_equal = (
        _ufunc(o) for o in ("greater", "greater_equal", "less", "less_equal", "equal", "not_equal")
    )
    exp, log, sqrt, tanh, reciprocal, negative, abs = (
        _ufunc(o) for o in ("exp", "log", "sqrt", "tanh", "reciprocal", "negative", "abs")
    )

    # --- reductions ----------------------------------------------------------------------------------

    def _reduce(
        self, op: str, a: OpenclArray, axis: int | None, dtype: Any, out: OpenclArray | None
    ) -> OpenclArray:
        """`op` (sum, max, argmax) of `a` along `axis` (None: all), one work-item per result."""
        if axis is None:
            a = a.reshape(-1)
            axis = 0
        axis = axis % a.ndim
        kept = [d for d in range(a.ndim) if d != axis]
        shape = tuple(a.shape[d] for d in kept)
        if op == "argmax":
            result = np.dtype(np.int64)
        elif dtype is not None:
            result = np.dtype(dtype)
        elif op == "sum" and a.dtype.kind in "bui":
            result = np.dtype(np.int64)
        else:
            result = a.dtype
        if out is None:
            out = self.empty(shape, result)
        elif out.shape != shape:
            raise ValueError(f"output shape {out.shape} does not match the reduction's {shape}")
        T = c_type(result if op != "argmax" else a.dtype)
        key = ("reduce", op, T, a.dtype.str, out.dtype.str, a.shape, a.strides, axis, out.strides)
        kernel = self._kernels.get(key)
        if kernel is None:
            kept_strides = tuple(a.strides[d] for d in kept)
            start, step = ("0", "") if op == "argmax" else _REDUCE[op]
            if op == "argmax":
                body = f"""
                T acc = (T)a_p[base]; long best = 0;
                for (long k = 1; k < {a.shape[axis]}; ++k) {{
                    T v = (T)a_p[base + k * {a.strides[axis]}];
                    if (v > acc || (isnan(v) && !isnan(acc))) {{ acc = v; best = k; }}
                }}
                out[{_offset_expression("out", shape, out.strides)}] = best;"""
            else:
                body = f"""
                T acc = {start};
                for (long k = 0; k < {a.shape[axis]}; ++k) {{
                    T v = (T)a_p[base + k * {a.strides[axis]}];
                    acc = {step};
                }}
                out[{_offset_expression("out", shape, out.strides)}] = ({c_type(out.dtype)})acc;"""
            fp64 = "double" in (T, c_type(a.dtype), c_type(out.dtype))
            source = f"""
            {"#pragma OPENCL EXTENSION cl_khr_fp64 : enable" if fp64 else ""}
            #define T {T}
            __kernel void reduce(__global {c_type(out.dtype)} *out, long out_off,
                                 __global const {c_type(a.dtype)} *a_p, long a_off) {{
                long i = get_global_id(0);
                long base = {_offset_expression("a", shape, kept_strides)};
                {body}
            }}
            """
            kernel = _build(self.context, source, "reduce")
            self._kernels[key] = kernel
        kernel(self.queue, max(out.size, 1), (*self._pointer(out), *self._pointer(a)))
        return out

    def sum(self, a: Any, axis: int | None = None, dtype: Any = None, out: Any = None) -> OpenclArray:
        return self._reduce("sum", self.asarray(a), axis, dtype, out)

    def max(self, a: Any, axis: int | None = None, out: Any = None) -> OpenclArray:
        return self._reduce("max", self.asarray(a), axis, None, out)

    amax = max

    def argmax(self, a: Any, axis: int | None = None) -> OpenclArray:
        return self._reduce("argmax", self.asarray(a), axis, None, None)

    def mean(self, a: Any, axis: int | None = None) -> OpenclArray:
        a = self.asarray(a)
        count = a.size if axis is None else a.shape[axis]
        total = self._reduce("sum", a, axis, np.float64 if a.dtype.kind != "f" else None, None)
        return self._elementwise("divide", (total, count), out=total)

    # --- indexing ------------------------------------------------------------------------------------

    def take(
        self, a: OpenclArray, indices: Any, axis: int = 0, out: OpenclArray | None = None
    ) -> OpenclArray:
        """Rows of `a` (axis 0) at `indices`, into `out`."""
        if axis != 0:
            raise ValueError(f"the opencl backend takes along axis 0 only, got axis={axis}")
        indices = self._contiguous(self.asarray(indices))
        rows = a.reshape(a.shape[0], -1)
        shape = (indices.size, rows.shape[1])
        if out is None:
            out = self.empty((indices.size, *a.shape[1:]), a.dtype)
        target = out.reshape(shape)
        key = ("take", a.dtype.str, indices.dtype.str, rows.strides, shape, target.strides)
        kernel = self._kernels.get(key)
        if kernel is None:
            T = c_type(a.dtype)
            source = f"""
            {"#pragma OPENCL EXTENSION cl_khr_fp64 : enable" if T == "double" else ""}
            __kernel void take(__global {T} *out, long out_off, __global const {T} *a_p, long a_off,
                               __global const {c_type(indices.dtype)} *idx, long idx_off) {{
                long i = get_global_id(0);
                long row = i / {shape[1]}, col = i % {shape[1]};
                out[{_offset_expression("out", shape, target.strides)}] =
                    a_p[a_off + (long)idx[idx_off + row] * {rows.strides[0]} + col * {rows.strides[1]}];
            }}
            """
            kernel = _build(self.context, source, "take")
            self._kernels[key] = kernel
        if target.size:
            kernel(
                self.queue,
                target.size,
                (*self._pointer(target), *self._pointer(rows), *self._pointer(indices)),
            )
        return out

    def _contiguous(self, a: OpenclArray) -> OpenclArray:
        """`a`, or a contiguous copy of it: the index kernels read their indices in order."""
        return a if a.is_contiguous else a.copy()

    def _pairs(self, a: OpenclArray, index: tuple[Any, ...]) -> tuple[OpenclArray, OpenclArray]:
        if a.ndim != 2 or len(index) != 2:
            raise IndexError("the opencl backend indexes a 2-d array by two index arrays only")
        rows, cols = (self._contiguous(self.asarray(i)) for i in index)
        if rows.shape != cols.shape or rows.ndim != 1:
            raise IndexError(
                f"index arrays of shapes {rows.shape} and {cols.shape}: two 1-d of one length expected"
            )
        return rows, cols

    def _pair_kernel(
        self, name: str, a: OpenclArray, rows: OpenclArray, cols: OpenclArray, statement: str
    ) -> _Kernel:
        key = (name, a.dtype.str, rows.dtype.str, cols.dtype.str, a.strides)
        kernel = self._kernels.get(key)
        if kernel is None:
            T = c_type(a.dtype)
            source = f"""
            {"#pragma OPENCL EXTENSION cl_khr_fp64 : enable" if T == "double" else ""}
            __kernel void pair(__global {T} *v, long v_off, __global {T} *a_p, long a_off,
                               __global const {c_type(rows.dtype)} *r, long r_off,
                               __global const {c_type(cols.dtype)} *c, long c_off) {{
                long i = get_global_id(0);
                long at = a_off + (long)r[r_off + i] * {a.strides[0]} + (long)c[c_off + i] * {a.strides[1]};
                {statement}
            }}
            """
            kernel = _build(self.context, source, "pair")
            self._kernels[key] = kernel
        return kernel

    def _gather(self, a: OpenclArray, index: tuple[Any, ...]) -> OpenclArray:
        """`a[rows, cols]`: one element per pair of indices."""
        rows, cols = self._pairs(a, index)
        out = self.empty(rows.shape, a.dtype)
        if out.size:
            kernel = self._pair_kernel("gather", a, rows, cols, "v[v_off + i] = a_p[at];")
            pointers = (*self._pointer(out), *self._pointer(a), *self._pointer(rows), *self._pointer(cols))
            kernel(self.queue, out.size, pointers)
        return out

    def _scatter(self, a: OpenclArray, index: tuple[Any, ...], value: Any) -> None:
        """`a[rows, cols] = value` (no pair repeated)."""
        rows, cols = self._pairs(a, index)
        values = self._elementwise("copy", (value,), a.dtype, out=self.empty(rows.shape, a.dtype))
        if values.size:
            kernel = self._pair_kernel("scatter", a, rows, cols, "a_p[at] = v[v_off + i];")
            pointers = (*self._pointer(values), *self._pointer(a), *self._pointer(rows), *self._pointer(cols))
            kernel(self.queue, values.size, pointers)

    # --- fused chains ------------------------------------------------------------------------------------
    # One kernel for a chain of operations the engine's layers and SGD issue every step, where the chain's
    # own launches and intermediate arrays cost more than its arithmetic. Each computes exactly what its
    # plain chain computes, in the same order and rounding (the kernels do not contract a * b + c); the
    # engine asks for them by name (`engine.layers.fused_form`), and NumPy has none.

    def _fp64(self, *dtypes: np.dtype[Any]) -> str:
        return "#pragma OPENCL EXTENSION cl_khr_fp64 : enable" if np.dtype(np.float64) in dtypes else ""

    def fused_relu(self, x: OpenclArray, mask: OpenclArray, out: OpenclArray) -> OpenclArray:
        """`mask[...] = x > 0; out[...] = x * mask` (ReLU's forward, `out` may be `x`): `out`."""
        if not (x.shape == mask.shape == out.shape) or mask.dtype != np.bool_:
            raise ValueError(f"fused_relu: x {x.shape}, mask {mask.shape} {mask.dtype}, out {out.shape}")
        if x.size == 0:
            return out
        key = ("relu", x.dtype.str, out.dtype.str, x.shape, x.strides, mask.strides, out.strides)
        kernel = self._kernels.get(key)
        if kernel is None:
            T, S = c_type(x.dtype), c_type(out.dtype)
            source = f"""
            {self._fp64(x.dtype, out.dtype)}
            __kernel void relu(__global uchar *mask, long mask_off, __global {S} *out, long out_off,
                               __global const {T} *x, long x_off) {{
                long i = get_global_id(0);
                {T} v = x[{_offset_expression("x", x.shape, x.strides)}];
                uchar m = v > ({T})0;
                mask[{_offset_expression("mask", x.shape, mask.strides)}] = m;
                out[{_offset_expression("out", x.shape, out.strides)}] = ({S})(v * ({T})m);
            }}
            """
            kernel = self._kernels[key] = _build(self.context, source, "relu")
        kernel(self.queue, x.size, (*self._pointer(mask), *self._pointer(out), *self._pointer(x)))
        return out

    def fused_softmax_cross_entropy(
        self, x: OpenclArray, t: OpenclArray, out: OpenclArray
    ) -> tuple[OpenclArray, OpenclArray, OpenclArray]:
        """Softmax of the (N, K) scores `x` into the (K, N) `out`, with what the loss needs, for integer
        labels `t` (N,). The chain, per sample n: s = x[n] - max(x[n]); target = s[t[n]]; e = exp(s);
        total = e[0] + e[1] + ... (in that order); out[:, n] = e / total. Returns (out, target, total),
        the last two fresh (N,) arrays (a later call does not overwrite them: a pending loss keeps them)."""
        n, k = x.shape
        if out.shape != (k, n) or t.shape != (n,) or t.dtype.kind not in "iu":
            raise ValueError(
                f"fused_softmax_cross_entropy: x {x.shape}, labels {t.shape} {t.dtype}, out {out.shape}"
            )
        stats = self.empty((2, n), x.dtype)  # target, total
        key = ("softmax", x.dtype.str, t.dtype.str, x.shape, x.strides, t.strides, out.strides)
        kernel = self._kernels.get(key)
        if kernel is None:
            T, L = c_type(x.dtype), c_type(t.dtype)
            (xn, xk), (sk, sn) = x.strides, out.strides
            source = f"""
            {self._fp64(x.dtype)}
            __kernel void softmax(__global {T} *s, long s_off, __global {T} *stats, long stats_off,
                                  __global const {T} *x, long x_off, __global const {L} *t, long t_off) {{
                long n = get_global_id(0);
                __global const {T} *row = x + x_off + n * {xn};
                __global {T} *column = s + s_off + n * {sn};
                {T} m = -INFINITY;
                for (long k = 0; k < {k}; ++k) {{ {T} v = row[k * {xk}]; m = (isnan(v) || v > m) ? v : m; }}
                {T} total = 0;
                for (long k = 0; k < {k}; ++k) {{
                    {T} e = exp(({T})(row[k * {xk}] - m));
                    column[k * {sk}] = e;
                    total = total + e;
                }}
                stats[stats_off + n] = row[(long)t[t_off + n * {t.strides[0]}] * {xk}] - m;
                stats[stats_off + {n} + n] = total;
                for (long k = 0; k < {k}; ++k) column[k * {sk}] = column[k * {sk}] / total;
            }}
            """
            kernel = self._kernels[key] = _build(self.context, source, "softmax")
        if n:
            pointers = (*self._pointer(out), *self._pointer(stats), *self._pointer(x), *self._pointer(t))
            kernel(self.queue, n, pointers)
        return out, stats[0], stats[1]

    def fused_softmax_cross_entropy_backward(
        self, y_t: OpenclArray, t: OpenclArray, scale: float, out: OpenclArray
    ) -> OpenclArray:
        """The gradient of the mean cross-entropy for integer labels, in the (K, N) layout of the softmax
        `y_t`: `out[...] = y_t * scale; out[t, arange(N)] += -scale` (scale = dout / N): `out`."""
        k, n = y_t.shape
        if out.shape != (k, n) or t.shape != (n,) or t.dtype.kind not in "iu":
            raise ValueError(
                f"fused_softmax_cross_entropy_backward: y {y_t.shape}, labels {t.shape} {t.dtype}, "
                f"out {out.shape}"
            )
        key = ("softmax_backward", y_t.dtype.str, t.dtype.str, y_t.shape, y_t.strides, t.strides, out.strides)
        kernel = self._kernels.get(key)
        if kernel is None:
            T, L = c_type(y_t.dtype), c_type(t.dtype)
            source = f"""
            {self._fp64(y_t.dtype)}
            __kernel void softmax_backward(__global {T} *out, long out_off, __global const {T} *y,
                                           long y_off, __global const {L} *t, long t_off, {T} scale,
                                           {T} negative) {{
                long i = get_global_id(0), k = i / {n}, n = i % {n};
                {T} v = y[y_off + k * {y_t.strides[0]} + n * {y_t.strides[1]}] * scale;
                if (k == (long)t[t_off + n * {t.strides[0]}]) v = v + negative;
                out[out_off + k * {out.strides[0]} + n * {out.strides[1]}] = v;
            }}
            """
            kernel = self._kernels[key] = _build(self.context, source, "softmax_backward")
        if out.size:
            T_ = y_t.dtype.type
            args = (*self._pointer(out), *self._pointer(y_t), *self._pointer(t), T_(scale), T_(-scale))
            kernel(self.queue, out.size, args)
        return out

    def fused_sgd(self, params: Sequence[OpenclArray], grads: Sequence[OpenclArray], lr: float) -> None:
        """`param -= grad * lr` for every pair, in place, in one kernel for all the contiguous pairs of one
        dtype (each element: param - (grad * lr), two roundings, as the plain update's)."""
        pairs = list(zip(params, grads, strict=True))
        if not pairs:
            return
        dtype = pairs[0][0].dtype
        together = []
        for p, g in pairs:
            if p.dtype == g.dtype == dtype and p.shape == g.shape and p.is_contiguous and g.is_contiguous:
                if p.size:
                    together.append((p, g))
            else:
                self._elementwise("subtract", (p, self._elementwise("multiply", (g, lr))), out=p)
        if not together:
            return
        # One work-group never spans two parameters: each parameter starts at a multiple of the group size,
        # so the branch on the group is the same for all its items and pocl vectorizes every branch.
        group = 64
        sizes = tuple(p.size for p, _ in together)
        starts = [0]
        for size in sizes:
            starts.append(starts[-1] + -(-size // group) * group)
        key = ("sgd", dtype.str, sizes)
        kernel = self._kernels.get(key)
        if kernel is None:
            T = c_type(dtype)
            params_c, branches = [f"{T} lr"], []
            for j, size in enumerate(sizes):
                params_c += [
                    f"__global {T} *p{j}",
                    f"long p{j}_off",
                    f"__global const {T} *g{j}",
                    f"long g{j}_off",
                ]
                branches.append(
                    f"if (group < {starts[j + 1] // group}) {{ long e = i - {starts[j]}; if (e < {size}) "
                    f"p{j}[p{j}_off + e] = p{j}[p{j}_off + e] - g{j}[g{j}_off + e] * lr; return; }}"
                )
            source = f"""
            {self._fp64(dtype)}
            __kernel void sgd({", ".join(params_c)}) {{
                long i = get_global_id(0), group = get_group_id(0);
                {" ".join(branches)}
            }}
            """
            kernel = self._kernels[key] = _build(self.context, source, "sgd")
        args: list[Any] = [dtype.type(lr)]
        for p, g in together:
            args += [*self._pointer(p), *self._pointer(g)]
        kernel(self.queue, starts[-1], args, group)

    # --- matrix products -----------------------------------------------------------------------------

    def matmul(self, a: Any, b: Any, out: OpenclArray | None = None) -> OpenclArray:
        """`a @ b` of 2-d arrays (a 1-d operand as a row or column) by CLBlast's GEMM; an operand that is a
        transposed contiguous array is passed as its storage with the transpose flag, not copied."""
        import pyclblast

        a, b = self.asarray(a), self.asarray(b)
        if a.ndim == 3 or b.ndim == 3:  # a stack of products: one GEMM each
            batch = a.shape[0] if a.ndim == 3 else b.shape[0]
            if out is None:
                rows, cols = a.shape[-2], b.shape[-1]
                out = self.empty((batch, rows, cols), np.result_type(a.dtype, b.dtype))
            if not self._strided_batch(a, b, out, batch):
                for i in range(batch):
                    self.matmul(a[i] if a.ndim == 3 else a, b[i] if b.ndim == 3 else b, out=out[i])
            return out
        vector_left, vector_right = a.ndim == 1, b.ndim == 1
        a2 = a.reshape(1, -1) if vector_left else a
        b2 = b.reshape(-1, 1) if vector_right else b
        if a2.ndim != 2 or b2.ndim != 2 or a2.shape[1] != b2.shape[0]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are not 2-d and aligned")
        m, k, n = a2.shape[0], a2.shape[1], b2.shape[1]
        shape = (m, n)
        if out is None:
            out = self.empty(shape, np.result_type(a.dtype, b.dtype))
        c = out.reshape(shape) if out.shape != shape else out
        if not c.is_contiguous:
            raise ValueError("matmul writes into a contiguous out only")
        a2, a_transposed, a_ld = self._gemm_operand(a2)
        b2, b_transposed, b_ld = self._gemm_operand(b2)
        pyclblast.gemm(
            self.queue,
            m,
            n,
            k,
            a2.storage,
            b2.storage,
            c.storage,
            a_ld=a_ld,
            b_ld=b_ld,
            c_ld=max(n, 1),
            a_transp=a_transposed,
            b_transp=b_transposed,
            a_offset=a2.offset,
            b_offset=b2.offset,
            c_offset=c.offset,
        )
        if vector_left and vector_right:
            return out.reshape(())
        return out

    def _strided_batch(self, a: OpenclArray, b: OpenclArray, out: OpenclArray, batch: int) -> bool:
        """The stack of products `out[i] = a[i] @ b[i]` (a 2-d operand the same in every product) as one
        call of CLBlast's strided batched GEMM, where every product's operands have one layout a fixed
        stride apart; False, and nothing done, where they do not (the caller runs one GEMM each)."""
        import pyclblast

        a0, b0 = (x[0] if x.ndim == 3 else x for x in (a, b))
        dtypes = {a.dtype, b.dtype, out.dtype}
        if (
            batch < 2
            or len(dtypes) != 1
            or a.dtype.kind != "f"
            or a0.ndim != 2
            or b0.ndim != 2
            or a0.shape[1] != b0.shape[0]
            or out.shape != (batch, a0.shape[0], b0.shape[1])
            or not out.is_contiguous
            or any(x.ndim == 3 and x.shape[0] != batch for x in (a, b))
        ):
            return False
        a_layout, b_layout = self._gemm_layout(a0), self._gemm_layout(b0)
        if a_layout is None or b_layout is None or 0 in out.shape or a0.shape[1] == 0:
            return False
        (m, k), n = a0.shape, b0.shape[1]
        pyclblast.gemmStridedBatched(
            self.queue,
            m,
            n,
            k,
            batch,
            a.storage,
            b.storage,
            out.storage,
            a_ld=a_layout[1],
            b_ld=b_layout[1],
            c_ld=max(n, 1),
            a_stride=a.strides[0] if a.ndim == 3 else 0,
            b_stride=b.strides[0] if b.ndim == 3 else 0,
            c_stride=m * n,
            a_transp=a_layout[0],
            b_transp=b_layout[0],
            a_offset=a.offset,
            b_offset=b.offset,
            c_offset=out.offset,
        )
        return True

    def _gemm_layout(self, a: OpenclArray) -> tuple[bool, int] | None:
        """(transposed?, leading dimension) of a 2-d operand that is row-major or the transpose of a
        row-major matrix, as GEMM reads it from its storage; None for any other layout."""
        rows, cols = a.shape
        if (a.strides[1] == 1 or cols == 1) and a.strides[0] >= max(cols, 1):
            return False, max(a.strides[0], cols, 1)
        if (a.strides[0] == 1 or rows == 1) and a.strides[1] >= max(rows, 1):
            return True, max(a.strides[1], rows, 1)
        return None

    def _gemm_operand(self, a: OpenclArray) -> tuple[OpenclArray, bool, int]:
        """(storage view, transposed?, leading dimension) of a 2-d operand, copied only if it is neither
        row-major nor the transpose of a row-major matrix."""
        layout = self._gemm_layout(a)
        if layout is None:
            return self._gemm_operand(a.copy())
        return a, *layout


def is_opencl_array(a: Any) -> bool:
    """Whether `a` is an array of this module."""
    return isinstance(a, OpenclArray)
