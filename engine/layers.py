"""The layers: nodes of the computational graph, after the textbook's `common/layers.py`.

Each layer's `forward` keeps exactly what its `backward` needs and nothing else; `backward(dout)`
takes the upstream gradient and returns the gradient for its input, leaving the gradients of its
own parameters in `grads`. Everything goes through `xp` (NumPy or CuPy, whichever the arrays are).

Speed without losing the textbook's shape: outputs and input gradients are written into buffers that
a layer allocates once per shape and reuses (`out=` everywhere, in place), so a training step makes
almost no new arrays. The price: the array a layer returns is only valid until that layer runs again.
`Network.predict` copies its result; call sites that keep a layer's output must copy it too.

The same code runs on JAX, whose arrays cannot change (`engine.backends.jax_numpy`): every `out=` call's
result is used (on NumPy it is the buffer itself), and writes into part of an array go through
`engine.backend.put`/`add_at`/`compute_into`. A parameter `W` is the attribute `W` and its gradient the
attribute `dW` (`params`/`grads` name the same arrays), which is how a jitted step binds and reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from engine import kernels
from engine.backend import add_at, compute_into, get_array_module, put
from engine.blas_threads import affine, column_sums, matmul

Array = Any  # numpy.ndarray or cupy.ndarray

_MAX_BUFFER_SHAPES = 16  # a few batch shapes (train, eval, last partial batch) per layer


def lacks_numpy_forms(xp: Any) -> bool:
    """Whether `xp` is dpnp, which lacks a few NumPy forms the layers use (each use says which); NumPy,
    CuPy and JAX's adapter keep their own path, and NumPy's costs one identity test."""
    return xp is not np and xp.__name__ == "dpnp"


def fused_form(xp: Any, name: str) -> Callable[..., Any] | None:
    """The array module's one-kernel form of a chain of operations the engine issues every step (`relu`,
    `softmax_cross_entropy`, `softmax_cross_entropy_backward`, `sgd`: `xp.fused_<name>`), or None: NumPy,
    CuPy, dpnp and JAX run the plain chain. Where a module has one (`engine.backends.opencl_numpy`, whose
    launches cost more than these chains' arithmetic), it computes exactly what the chain computes."""
    return None if xp is np else getattr(xp, "fused_" + name, None)


def maximum_in_place(xp: Any, a: Array, b: Array) -> Array:
    """a = maximum(a, b), elementwise, into a itself."""
    if lacks_numpy_forms(xp):  # dpnp has no in-place maximum (out= aliasing a raises)
        a[...] = xp.maximum(a, b)
        return a
    return xp.maximum(a, b, out=a)


class BufferOwner:
    """Per-shape scratch buffers, allocated on first use and reused by every later call."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, tuple[int, ...], Any], Array] = {}

    def _buffer(self, name: str, shape: tuple[int, ...], like: Array, dtype: Any = None) -> Array:
        """A reusable uninitialised array for `name` at this shape (allocated on first use)."""
        dtype = like.dtype if dtype is None else dtype
        key = (name, shape, dtype)
        buf = self._buffers.get(key)
        if buf is None:
            if len(self._buffers) >= _MAX_BUFFER_SHAPES:
                self._buffers.clear()  # many different batch shapes: start over rather than grow
            xp = get_array_module(like)
            buf = xp.empty(shape, dtype=dtype)
            if not getattr(xp, "immutable", False):  # JAX's would only be a traced value kept past its step
                self._buffers[key] = buf
        return buf


class Layer(BufferOwner):
    """Base class: a named set of parameters and gradients, plus per-shape scratch buffers."""

    #: False for the first layer of a network: nobody uses the gradient of the input data.
    need_dx: bool = True
    #: Attributes that training changes besides the parameters (running statistics, a generator).
    state_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}

    def forward(self, x: Array, train: bool = True) -> Array:
        """Output for input `x` (`train` switches Dropout/BatchNorm behaviour); keeps what backward needs."""
        raise NotImplementedError

    def backward(self, dout: Array) -> Array:
        """Gradient for the input given `dout` (None where `need_dx` is False); fills `grads`."""
        raise NotImplementedError

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape for a per-sample input shape (elementwise layers keep it)."""
        return input_shape

    def gemm_shapes(self, batch_size: int, input_shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
        """The (m, k, n) matrix products one training step of this layer runs (none by default)."""
        return []


# --- The seed's shopping example: scalar nodes ------------------------------------------------------


class Mul:
    """z = x * y; backward swaps the inputs: dz/dx = y, dz/dy = x."""

    def __init__(self) -> None:
        self.x: Any = None
        self.y: Any = None

    def forward(self, x: Any, y: Any) -> Any:
        self.x, self.y = x, y
        return x * y

    def backward(self, dout: Any) -> tuple[Any, Any]:
        return dout * self.y, dout * self.x


class Add:
    """z = x + y; backward passes the gradient through unchanged to both inputs."""

    def forward(self, x: Any, y: Any) -> Any:
        return x + y

    def backward(self, dout: Any) -> tuple[Any, Any]:
        return dout * 1, dout * 1


# --- Activations ------------------------------------------------------------------------------------


class Relu(Layer):
    """max(0, x); the gradient passes where x > 0 (forward keeps that mask).

    Computed as x * (x > 0): the same values as max(0, x) for every finite x, and a NaN stays NaN. On
    NumPy arrays `engine.kernels` does it in one compiled pass (mask and output together), with exactly
    the chain's values; elsewhere, or without Numba, the comparison and the product are two passes. With
    `in_place` (set by `Network` where x is the previous layer's own output buffer), forward overwrites x
    and backward overwrites dout instead of filling new buffers.
    """

    #: Overwrite the input in forward and the upstream gradient in backward (see the class docstring).
    in_place: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.mask: Array = None

    def forward(self, x: Array, train: bool = True) -> Array:
        xp = get_array_module(x)
        mask = self._buffer("mask", x.shape, x, dtype=bool)
        out = x if self.in_place else self._buffer("out", x.shape, x)
        relu = fused_form(xp, "relu")
        if relu is not None:
            self.mask = mask
            return relu(x, mask, out)
        if xp is np and kernels.relu_forward(x, mask, out):
            self.mask = mask
            return out
        self.mask = xp.greater(x, 0, out=mask)
        return xp.multiply(x, self.mask, out=out)

    def backward(self, dout: Array) -> Array:
        dx = dout if self.in_place else self._buffer("dx", dout.shape, dout)
        xp = get_array_module(dout)
        if xp is np and kernels.relu_backward(dout, self.mask, dx):
            return dx
        return xp.multiply(dout, self.mask, out=dx)


class Sigmoid(Layer):
    """1 / (1 + exp(-x)), from e = exp(-|x|) so that nothing overflows and neither tail cancels.

    With s = 1 / (1 + e), y = s for x >= 0 and y = e * s for x < 0, each within a few ulp of the exact
    value over the whole range. The form (1 + tanh(x/2)) / 2 loses the negative tail to cancellation:
    in float32 it is 44% off at x = -17 and 0 from x = -20 on.

    dy/dx = y (1 - y) = e * s^2 on both sides, so forward keeps e and s rather than y: y (1 - y) from a
    rounded y is 0 wherever y rounds to 1 (x > 16.6 in float32, x > 36.7 in float64) instead of about e.

    On CUDA, CuPy compiles its kernels with -ftz=true, so a float32 y or dy/dx below the smallest normal
    (x < -87.3) comes out 0 there rather than subnormal; within a few ulp everywhere above it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.e: Array = None
        self.s: Array = None

    def forward(self, x: Array, train: bool = True) -> Array:
        xp = get_array_module(x)
        e = self._buffer("e", x.shape, x)
        s = self._buffer("s", x.shape, x)
        out = self._buffer("out", x.shape, x)
        e = xp.copysign(x, -1.0, out=e)  # -|x| in one pass
        e = xp.exp(e, out=e)  # in (0, 1]
        s = xp.add(e, 1.0, out=s)
        s = xp.reciprocal(s, out=s)  # sigmoid(|x|), in [0.5, 1]
        # dpnp compares only into bool arrays; heaviside gives it the same 1/0 (NaN: NaN)
        out = xp.heaviside(x, 1.0, out=out) if lacks_numpy_forms(xp) else xp.greater_equal(x, 0.0, out=out)
        out = maximum_in_place(xp, out, e)  # 1 where x >= 0, e where x < 0 (NaN stays NaN)
        out *= s
        self.e, self.s = e, s
        return out

    def backward(self, dout: Array) -> Array:
        xp = get_array_module(dout)
        dx = self._buffer("dx", dout.shape, dout)
        dx = xp.multiply(self.s, self.s, out=dx)  # dy/dx = y (1 - y) = e s^2, exact in both tails
        dx *= self.e
        dx *= dout
        return dx


class Tanh(Layer):
    """tanh(x); dy/dx = 1 - y^2, so forward keeps y."""

    def __init__(self) -> None:
        super().__init__()
        self.out: Array = None

    def forward(self, x: Array, train: bool = True) -> Array:
        out = self._buffer("out", x.shape, x)
        self.out = get_array_module(x).tanh(x, out=out)
        return self.out

    def backward(self, dout: Array) -> Array:
        xp = get_array_module(dout)
        dx = self._buffer("dx", dout.shape, dout)
        dx = xp.multiply(self.out, self.out, out=dx)
        dx = xp.subtract(1.0, dx, out=dx)
        dx *= dout
        return dx


# --- Affine ---------------------------------------------------------------------------------------------


class Affine(Layer):
    """y = x W + b. Forward keeps x (for dW); backward: dW = x^T dout, db = sum(dout), dx = dout W^T.

    An input of more than two dimensions (a conv feature map) is flattened per sample.
    """

    def __init__(self, W: Array, b: Array) -> None:
        super().__init__()
        xp = get_array_module(W)
        self.W, self.b = W, b
        self.dW, self.db = xp.zeros_like(W), xp.zeros_like(b)
        self.params = {"W": W, "b": b}
        self.grads = {"W": self.dW, "b": self.db}
        self.x: Array = None
        self.x_shape: tuple[int, ...] = ()

    def forward(self, x: Array, train: bool = True) -> Array:
        xp = get_array_module(x)
        self.x_shape = x.shape
        self.x = x.reshape(x.shape[0], -1)
        return affine(xp, self.x, self.W, self.b, self._buffer("out", (x.shape[0], self.W.shape[1]), x))

    def backward(self, dout: Array) -> Array:
        xp = get_array_module(dout)
        self.dW = matmul(xp, self.x.T, dout, self.dW)
        self.db = column_sums(xp, dout, self._ones(dout), self.db)
        if not self.need_dx:
            return None  # the input layer: dx of the data is never used, skip a whole GEMM
        dx = matmul(xp, dout, self.W.T, self._buffer("dx", self.x.shape, dout))
        return dx.reshape(self.x_shape)

    def _ones(self, dout: Array) -> Array:
        """A vector of ones, one per sample: summing the batch as a product (`column_sums`)."""
        if get_array_module(dout) is not np:
            return None
        ones = self._buffers.get(("ones", (dout.shape[0],), dout.dtype))
        if ones is None:
            ones = self._buffer("ones", (dout.shape[0],), dout)
            ones.fill(1)
        return ones

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (int(self.W.shape[1]),)

    def gemm_shapes(self, batch_size: int, input_shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
        d, h = int(self.W.shape[0]), int(self.W.shape[1])
        shapes = [(batch_size, d, h), (d, batch_size, h)]  # forward x W; backward x^T dout
        if self.need_dx:
            shapes.append((batch_size, h, d))  # backward dout W^T
        return shapes


# --- Loss ---------------------------------------------------------------------------------------------


class SoftmaxWithLoss(BufferOwner):
    """Softmax followed by the cross-entropy error, as one node (its gradient is simply (y - t) / N).

    The loss is computed from the log-softmax, log y_k = a_k - max(a) - log(sum(exp(a - max(a)))),
    so it never takes log(0) and needs no `+1e-7` that the backward would ignore: the backward
    returns exactly the gradient of the loss this forward computes. `t` is either integer class
    labels of shape (N,) (the fast path) or one-hot / probability rows of shape (N, K).
    The loss value is only computed when read (`loss`), so a training step that never looks at it
    does not pay for the logarithms (nor, on a GPU, for a synchronisation).
    """

    def __init__(self) -> None:
        super().__init__()
        self.y: Array = None  # softmax(x), (N, K); a transposed view of the working buffer
        self.t: Array = None
        self._target: Array = None  # per sample: shifted logit of the true class (or its t-weighted sum)
        self._total: Array = None  # per sample: sum_k exp(shifted logit k)
        self._loss: Array = None

    def _rows(self, n: int, like: Array) -> Array:
        rows = self._buffers.get(("rows", (n,), None))
        if rows is None:
            xp = get_array_module(like)
            rows = xp.arange(n)
            if not getattr(xp, "immutable", False):
                self._buffers[("rows", (n,), None)] = rows
        return rows

    def forward(self, x: Array, t: Array, compute_loss: bool = True) -> Array:
        """The mean cross-entropy over the batch (a 0-d array); keeps softmax(x) and t for backward.

        With `compute_loss=False` only the softmax is computed and None is returned (read `loss`
        later if wanted).
        """
        xp = get_array_module(x)
        n, k = x.shape
        self.t = t
        # Scores transposed, classes x samples: the per-sample max and sum then run down columns,
        # which NumPy does several times faster than along rows of a few (10) classes.
        fused = fused_form(xp, "softmax_cross_entropy") if t.ndim == 1 else None
        if fused is not None:  # the chain below in one kernel
            s, self._target, self._total = fused(x, t, out=self._buffer("scores_T", (k, n), x))
            self.y = s.T
            self._loss = None
            return self.loss if compute_loss else None
        s = put(self._buffer("scores_T", (k, n), x), ..., x.T)
        s -= s.max(axis=0)  # shifted logits: exp cannot overflow
        if t.ndim == 1:
            self._target = s[t, self._rows(n, x)]
        else:
            self._target = (t.T * s).sum(axis=0)  # taken before s is overwritten by exp
        s = xp.exp(s, out=s)
        self._total = s.sum(axis=0)
        s /= self._total
        self.y = s.T
        self._loss = None
        return self.loss if compute_loss else None

    def set_loss(self, loss: Array) -> None:
        """Take `loss` as the last forward's (a compiled step computes it, `engine.jit_step`)."""
        self._total = self._target = None
        self._loss = loss

    @property
    def loss(self) -> Array:
        """-mean_n sum_k t_nk log y_nk = mean_n (sum_k t_nk) log(total_n) - target_n, as a 0-d array."""
        if self._loss is None and self._total is not None:
            self._loss = self.pending_loss()()
        return self._loss

    def pending_loss(self) -> Callable[[], Array]:
        """This forward's `loss`, computed when called: it holds only arrays that no later forward
        reuses, so a training loop can keep one per step and compute them after its timed window."""
        total, target = self._total, self._target
        weights = None if self.t.ndim == 1 else self.t.sum(axis=1)  # labels may live in a reused buffer

        def loss() -> Array:
            log_total = get_array_module(total).log(total)
            n = log_total.shape[0]
            if weights is None:
                return (log_total.sum() - target.sum()) / n
            return (weights @ log_total - target.sum()) / n

        return loss

    def backward(self, dout: float = 1.0) -> Array:
        """d loss / d x = (softmax(x) * sum_k t_k - t) / N (which is (y - t) / N for one-hot rows)."""
        xp = get_array_module(self.y)
        y_t = self.y.T  # the contiguous (K, N) buffer; the gradient is built in the same layout
        k, n = y_t.shape
        scale = dout / n
        dx_t = self._buffer("dx_T", (k, n), y_t)
        fused = fused_form(xp, "softmax_cross_entropy_backward") if self.t.ndim == 1 else None
        if fused is not None:  # the two lines below in one kernel
            dx_t = fused(y_t, self.t, scale, out=dx_t)
        elif self.t.ndim == 1:
            dx_t = xp.multiply(y_t, scale, out=dx_t)
            dx_t = add_at(dx_t, (self.t, self._rows(n, y_t)), -scale)  # the one-hot, without building it
        else:
            dx_t = xp.multiply(y_t, self.t.sum(axis=1), out=dx_t)
            dx_t -= self.t.T
            dx_t *= scale
        if lacks_numpy_forms(xp):
            # dpnp's matmul copies this view when the other operand is transposed too: one copy into rows
            dx = self._buffer("dx", (n, k), y_t)
            xp.copyto(dx, dx_t.T)
            return dx
        return dx_t.T  # an (N, K) view; matmul and sum take it without a copy


# --- Regularisation ---------------------------------------------------------------------------------


class Dropout(Layer):
    """Drops each unit with probability `ratio` in training; scales by (1 - ratio) in evaluation.

    Textbook semantics (no inverted scaling). `hold_mask = True` reuses the current mask instead of
    drawing a new one, which makes the network a fixed function for gradient checking.
    """

    state_names = ("rng",)

    def __init__(self, ratio: float = 0.5, rng: Any = None) -> None:
        super().__init__()
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"dropout ratio must be in [0, 1), got {ratio}")
        self.ratio = ratio
        # None: an unseeded generator of the input's array module, made at the first training step (a
        # NumPy mask on a CuPy input would not multiply).
        self.rng = rng
        self.hold_mask = False
        self.mask: Array = None

    def forward(self, x: Array, train: bool = True) -> Array:
        if not train:
            return x * (1.0 - self.ratio)
        if not (self.hold_mask and self.mask is not None and self.mask.shape == x.shape):
            if self.rng is None:
                self.rng = get_array_module(x).random.default_rng()
            self.mask = self.rng.random(x.shape, dtype=np.float32) > self.ratio
        return x * self.mask

    def backward(self, dout: Array) -> Array:
        return dout * self.mask


class BatchNorm(Layer):
    """Normalises each feature over the batch, then scales by gamma and shifts by beta.

    Training normalises with the batch's mean and biased variance (divided by N) and updates running
    averages, running <- momentum * running + (1 - momentum) * batch (momentum 0.9 is torch's 0.1);
    evaluation (`train=False`) uses the running averages. They follow PyTorch's BatchNorm convention:
    the running variance starts at 1 and takes the unbiased batch variance (divided by N - 1), so an
    untrained net evaluates near the scale it trains at, where a running variance that starts at 0
    divides by sqrt(eps) = 1e-3 before the first step. A batch of one has no spread: it moves the
    running mean only (torch refuses such a batch). A 4-D input is normalised per sample position as in
    the textbook (flattened to (N, -1)).
    """

    state_names = ("running_mean", "running_var")

    def __init__(self, gamma: Array, beta: Array, momentum: float = 0.9, eps: float = 1e-6) -> None:
        super().__init__()
        xp = get_array_module(gamma)
        self.gamma, self.beta = gamma, beta
        self.dgamma, self.dbeta = xp.zeros_like(gamma), xp.zeros_like(beta)
        self.params = {"gamma": gamma, "beta": beta}
        self.grads = {"gamma": self.dgamma, "beta": self.dbeta}
        self.momentum, self.eps = momentum, eps
        self.running_mean = xp.zeros_like(gamma)
        self.running_var = xp.ones_like(gamma)
        self.input_shape: tuple[int, ...] = ()
        self.batch_size = 0
        self.xc: Array = None
        self.xn: Array = None
        self.std: Array = None

    def forward(self, x: Array, train: bool = True) -> Array:
        xp = get_array_module(x)
        self.input_shape = x.shape
        x = x.reshape(x.shape[0], -1)
        if train:
            mu = x.mean(axis=0)
            xc = x - mu
            var = (xc**2).mean(axis=0)
            std = xp.sqrt(var + self.eps)
            self.batch_size, self.xc, self.std = x.shape[0], xc, std
            self.xn = xn = xc / std
            self.running_mean *= self.momentum
            self.running_mean += (1 - self.momentum) * mu
            n = x.shape[0]
            if n > 1:
                self.running_var *= self.momentum
                self.running_var += (1 - self.momentum) * n / (n - 1) * var  # unbiased
        else:
            xn = (x - self.running_mean) / xp.sqrt(self.running_var + self.eps)
        out = self.gamma * xn + self.beta
        return out.reshape(self.input_shape)

    def backward(self, dout: Array) -> Array:
        dout = dout.reshape(dout.shape[0], -1)
        self.dbeta = put(self.dbeta, ..., dout.sum(axis=0))
        self.dgamma = put(self.dgamma, ..., (self.xn * dout).sum(axis=0))
        dxn = self.gamma * dout
        dxc = dxn / self.std
        dstd = -((dxn * self.xc) / (self.std * self.std)).sum(axis=0)
        dvar = 0.5 * dstd / self.std
        dxc += (2.0 / self.batch_size) * self.xc * dvar
        dmu = dxc.sum(axis=0)
        dx = dxc - dmu / self.batch_size
        return dx.reshape(self.input_shape)


# --- Convolution and pooling (im2col) ------------------------------------------------------------------


def conv_output_size(size: int, filter_size: int, stride: int, pad: int) -> int:
    """Output length along one axis: (size + 2 pad - filter) / stride + 1."""
    return (size + 2 * pad - filter_size) // stride + 1


def _window_index(y: int, x: int, stride: int, out_h: int, out_w: int) -> tuple[slice, ...]:
    """The index of the (N, C, out_h, out_w) elements at offset (y, x) of every window."""
    return (
        slice(None),
        slice(None),
        slice(y, y + stride * (out_h - 1) + 1, stride),
        slice(x, x + stride * (out_w - 1) + 1, stride),
    )


def _window(img: Array, y: int, x: int, stride: int, out_h: int, out_w: int) -> Array:
    """The (N, C, out_h, out_w) view of the elements at offset (y, x) of every window: no copy."""
    return img[_window_index(y, x, stride, out_h, out_w)]


def unfold(x: Array, filter_h: int, filter_w: int, stride: int = 1, pad: int = 0, out: Array = None) -> Array:
    """Patches of (N, C, H, W) images as (N, C*filter_h*filter_w, out_h*out_w): one sample's patches
    are the columns of one matrix, so `W(FN, C*FH*FW) @ unfold(x)` is the convolution already in
    (N, FN, out_h*out_w) order. Written into `out` when given (that shape), one strided copy per
    filter offset."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    out_h = conv_output_size(h, filter_h, stride, pad)
    out_w = conv_output_size(w, filter_w, stride, pad)
    img = xp.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)], "constant") if pad else x
    if out is None:
        out = xp.empty((n, c * filter_h * filter_w, out_h * out_w), dtype=x.dtype)
    col = out.reshape(n, c, filter_h, filter_w, out_h, out_w)
    for y in range(filter_h):
        for xx in range(filter_w):
            col = put(col, (slice(None), slice(None), y, xx), _window(img, y, xx, stride, out_h, out_w))
    return col.reshape(out.shape)


def fold(
    col: Array, input_shape: tuple[int, ...], filter_h: int, filter_w: int, stride: int = 1, pad: int = 0
) -> Array:
    """The adjoint of `unfold`: add every patch of (N, C*FH*FW, out_h*out_w) back into (N, C, H, W)."""
    xp = get_array_module(col)
    n, c, h, w = input_shape
    out_h = conv_output_size(h, filter_h, stride, pad)
    out_w = conv_output_size(w, filter_w, stride, pad)
    col = col.reshape(n, c, filter_h, filter_w, out_h, out_w)
    img = xp.zeros((n, c, h + 2 * pad + stride - 1, w + 2 * pad + stride - 1), dtype=col.dtype)
    for y in range(filter_h):
        for xx in range(filter_w):
            img = add_at(img, _window_index(y, xx, stride, out_h, out_w), col[:, :, y, xx])
    return img[:, :, pad : h + pad, pad : w + pad]


def im2col(x: Array, filter_h: int, filter_w: int, stride: int = 1, pad: int = 0) -> Array:
    """Unfold (N, C, H, W) images into rows of (N*out_h*out_w, C*filter_h*filter_w) patches."""
    n = x.shape[0]
    col = unfold(x, filter_h, filter_w, stride, pad)
    return col.transpose(0, 2, 1).reshape(n * col.shape[2], -1)


def col2im(
    col: Array, input_shape: tuple[int, ...], filter_h: int, filter_w: int, stride: int = 1, pad: int = 0
) -> Array:
    """The adjoint of im2col: add every patch row back into its place in (N, C, H, W) images."""
    n = input_shape[0]
    patches = col.reshape(n, -1, col.shape[1]).transpose(0, 2, 1)
    return fold(patches, input_shape, filter_h, filter_w, stride, pad)


class Convolution(Layer):
    """2-D convolution as a matrix product per sample: W(FN, C*FH*FW) @ unfold(x) + b.

    The textbook's im2col puts all patches in rows and gets (N*OH*OW, FN), which then needs a
    transposed, non-contiguous view to be (N, FN, OH, OW); with one sample's patches as columns
    the product lands in (N, FN, OH*OW) order, so ReLU and pooling read contiguous memory.
    """

    def __init__(self, W: Array, b: Array, stride: int = 1, pad: int = 0) -> None:
        super().__init__()
        xp = get_array_module(W)
        self.W, self.b = W, b
        self.dW, self.db = xp.zeros_like(W), xp.zeros_like(b)
        self.params = {"W": W, "b": b}
        self.grads = {"W": self.dW, "b": self.db}
        self.stride, self.pad = stride, pad
        self.x_shape: tuple[int, ...] = ()
        self.col: Array = None

    def forward(self, x: Array, train: bool = True) -> Array:
        xp = get_array_module(x)
        fn, c, fh, fw = self.W.shape
        n, _, h, w = x.shape
        out_h = conv_output_size(h, fh, self.stride, self.pad)
        out_w = conv_output_size(w, fw, self.stride, self.pad)
        self.x_shape = x.shape
        col = self._buffer("col", (n, c * fh * fw, out_h * out_w), x)
        self.col = unfold(x, fh, fw, self.stride, self.pad, out=col)
        out = matmul(xp, self.W.reshape(fn, -1), self.col, self._buffer("out", (n, fn, out_h * out_w), x))
        out += self.b[:, None]
        return out.reshape(n, fn, out_h, out_w)

    def backward(self, dout: Array) -> Array:
        xp = get_array_module(dout)
        fn, c, fh, fw = self.W.shape
        n = dout.shape[0]
        dout = dout.reshape(n, fn, -1)
        self.db = xp.sum(dout.sum(axis=0), axis=1, out=self.db)  # the batch first: one contiguous pass
        per_sample = self._buffer("dW_per_sample", (n, fn, c * fh * fw), dout)
        per_sample = matmul(xp, dout, self.col.transpose(0, 2, 1), per_sample)
        self.dW = xp.sum(per_sample, axis=0, out=self.dW.reshape(fn, -1)).reshape(self.W.shape)
        if not self.need_dx:
            return None
        dcol = matmul(xp, self.W.reshape(fn, -1).T, dout, self._buffer("dcol", self.col.shape, dout))
        return fold(dcol, self.x_shape, fh, fw, self.stride, self.pad)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        fn, _, fh, fw = (int(s) for s in self.W.shape)
        _, h, w = input_shape
        return (
            fn,
            conv_output_size(h, fh, self.stride, self.pad),
            conv_output_size(w, fw, self.stride, self.pad),
        )

    def gemm_shapes(self, batch_size: int, input_shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
        fn, c, fh, fw = (int(s) for s in self.W.shape)
        _, out_h, out_w = self.output_shape(input_shape)
        rows, k = batch_size * out_h * out_w, c * fh * fw
        shapes = [(rows, k, fn), (k, rows, fn)]  # forward col W^T; backward col^T dout
        if self.need_dx:
            shapes.append((rows, fn, k))  # backward dout W (dcol)
        return shapes


class Pooling(Layer):
    """Max pooling over pool_h x pool_w windows; backward routes each gradient to its window's max.

    The padding is -inf, so a padded border never wins a window (every window keeps at least one
    real element: `pad` must be smaller than the window). Ties go to the first maximum in row-major
    window order, as `argmax` (and PyTorch) choose. Forward walks the pool_h*pool_w offsets of the
    windows as strided views, keeping the running maximum and, in training, which offset holds it;
    backward writes each offset's share straight into its strided view of dx (adding, where windows
    overlap).
    """

    def __init__(self, pool_h: int, pool_w: int, stride: int = 1, pad: int = 0) -> None:
        super().__init__()
        if not (0 <= pad < pool_h and pad < pool_w):
            raise ValueError(
                f"pooling pad must be in [0, {min(pool_h, pool_w)}) for a {pool_h}x{pool_w} window, got {pad}"
            )
        self.pool_h, self.pool_w, self.stride, self.pad = pool_h, pool_w, stride, pad
        self.x_shape: tuple[int, ...] = ()
        self.arg_max: Array = None  # per output element: the window offset (row-major) of its maximum

    def _padded(self, x: Array) -> Array:
        if not self.pad:
            return x
        n, c, h, w = x.shape
        p = self.pad
        img = put(self._buffer("padded", (n, c, h + 2 * p, w + 2 * p), x), ..., -get_array_module(x).inf)
        return put(img, (slice(None), slice(None), slice(p, p + h), slice(p, p + w)), x)

    def forward(self, x: Array, train: bool = True) -> Array:
        xp = get_array_module(x)
        n, c, h, w = x.shape
        out_h = conv_output_size(h, self.pool_h, self.stride, self.pad)
        out_w = conv_output_size(w, self.pool_w, self.stride, self.pad)
        self.x_shape = x.shape
        img = self._padded(x)
        shape = (n, c, out_h, out_w)
        offsets = [(y, xx) for y in range(self.pool_h) for xx in range(self.pool_w)]
        out = put(self._buffer("out", shape, x), ..., _window(img, 0, 0, self.stride, out_h, out_w))
        if not train:
            for y, xx in offsets[1:]:
                out = maximum_in_place(xp, out, _window(img, y, xx, self.stride, out_h, out_w))
            return out
        index_dtype = xp.uint8 if len(offsets) <= 255 else xp.int32
        arg_max = put(self._buffer("arg_max", shape, x, dtype=index_dtype), ..., 0)
        greater = self._buffer("greater", shape, x, dtype=bool)
        offset_index = self._buffer("offset_index", shape, x, dtype=index_dtype)
        for k, (y, xx) in enumerate(offsets[1:], start=1):
            v = _window(img, y, xx, self.stride, out_h, out_w)
            greater = xp.greater(v, out, out=greater)  # strictly greater: the first maximum keeps its place
            # k exceeds every offset seen so far, so max(arg_max, k * greater) sets k exactly where
            # greater holds: arithmetic, several times faster than a masked copy on a random mask.
            if lacks_numpy_forms(xp):  # dpnp takes no `casting=`: a scalar of the index dtype needs none
                offset_index = xp.multiply(greater, index_dtype(k), out=offset_index)
            else:
                offset_index = xp.multiply(greater, k, out=offset_index, casting="unsafe")
            arg_max = maximum_in_place(xp, arg_max, offset_index)
            out = maximum_in_place(xp, out, v)
        self.arg_max = arg_max
        return out

    def backward(self, dout: Array) -> Array:
        xp = get_array_module(dout)
        n, c, h, w = self.x_shape
        p, s = self.pad, self.stride
        out_h, out_w = dout.shape[2:]
        tiles = not p and s >= self.pool_h and s >= self.pool_w  # every element in at most one window
        dx = self._buffer("dx", (n, c, h + 2 * p, w + 2 * p), dout)
        if not tiles or s * out_h != h or s * out_w != w or s != self.pool_h or s != self.pool_w:
            dx = put(dx, ..., 0)  # some elements lie in no window (or in several): start from zero
        chosen = self._buffer("chosen", dout.shape, dout, dtype=bool)
        share = self._buffer("share", dout.shape, dout)
        for k in range(self.pool_h * self.pool_w):
            y, xx = divmod(k, self.pool_w)
            target = _window_index(y, xx, s, out_h, out_w)
            chosen = xp.equal(self.arg_max, k, out=chosen)
            if tiles:
                dx = compute_into(dx, target, xp.multiply, dout, chosen)
            else:
                share = xp.multiply(dout, chosen, out=share)
                dx = add_at(dx, target, share)
        return dx[:, :, p : p + h, p : p + w] if p else dx

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = input_shape
        return (
            c,
            conv_output_size(h, self.pool_h, self.stride, self.pad),
            conv_output_size(w, self.pool_w, self.stride, self.pad),
        )
