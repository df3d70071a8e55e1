"""Optimizers with the textbook's `common/optimizer.py` semantics, updating parameters in place.

`update(params, grads)` takes the network's name -> array dicts. State (velocities, squared-gradient
sums) is created on the first update, one array per parameter, shaped and placed like it.

Every step returns the updated parameter and stores its state back: on NumPy the very arrays it was
given, changed in place; on JAX (a jitted step, `engine.jit_step`) new ones. `state()`/`load_state()`
hand that state to and from a functional step.

L2 weight decay (`weight_decay` = lambda) adds lambda * W to the gradient of every weight matrix,
i.e. the gradient of (lambda / 2) * sum(W**2) added to the loss. It applies to parameters whose
name starts with "W" (Affine and Convolution weights), never to biases or BatchNorm's gamma/beta,
as in the textbook's MultiLayerNet. The gradient arrays themselves are not modified.

Against PyTorch (tests/engine/test_optimizers_reference.py, float64, 20 steps): SGD, Momentum, Nesterov,
AdaGrad and RMSprop take the same steps as `torch.optim` (AdaGrad and RMSprop with eps=1e-7, which torch
defaults to 1e-10 and 1e-8; RMSprop's `decay_rate` is torch's `alpha`). Weight decay is torch's
`weight_decay` on a parameter group of the weights only. Adam differs in where eps goes: see `Adam`.
"""

from __future__ import annotations

import math
from typing import Any

from engine.backend import get_array_module
from engine.layers import Array, fused_form
from engine.openblas import axpy

EPS = 1e-7  # the textbook's guard against dividing by sqrt(0)


def decays(name: str) -> bool:
    """Whether weight decay applies to the parameter `name` (weights "W1", "W2", ...; not b, gamma, beta)."""
    return name.startswith("W")


class Optimizer:
    """Shared bookkeeping: the learning rate, weight decay and per-parameter scratch buffers."""

    #: The attributes holding state kept between steps (dicts name -> array, or Adam's step count).
    state_names: tuple[str, ...] = ()

    def __init__(self, lr: float = 0.01, weight_decay: float = 0.0) -> None:
        self.lr = lr
        self.weight_decay = weight_decay
        self._scratch: dict[str, Array] = {}

    def state(self, params: dict[str, Array] | None = None) -> dict[str, Any]:
        """The state kept between steps, by attribute name; with `params`, made for each first (zeros)."""
        if params is not None:
            for name in self.state_names:
                store = getattr(self, name)
                if isinstance(store, dict):
                    for key, param in params.items():
                        self._buffer(store, key, param)
        return {name: _copy_dict(getattr(self, name)) for name in self.state_names}

    def load_state(self, state: dict[str, Any]) -> None:
        """Take `state()`'s arrays as this optimizer's (scratch buffers are dropped: a step remakes them)."""
        for name, value in state.items():
            setattr(self, name, _copy_dict(value))
        self._scratch = {}

    def _buffer(self, store: dict[str, Array], key: str, like: Array) -> Array:
        buf = store.get(key)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = get_array_module(like).zeros_like(like)
            store[key] = buf
        return buf

    def _grad(self, key: str, param: Array, grad: Array) -> Array:
        """The gradient with weight decay added (in a scratch buffer, so `grads` stays untouched)."""
        if self.weight_decay == 0.0 or not decays(key):
            return grad
        g = self._buffer(self._scratch, "wd:" + key, param)
        g = get_array_module(param).multiply(param, self.weight_decay, out=g)
        g += grad
        return g

    def update(self, params: dict[str, Array], grads: dict[str, Array]) -> None:
        """One step of every parameter of `params` (in place on NumPy; new arrays in the dict on JAX)."""
        for key, param in params.items():
            params[key] = self.step(key, param, self._grad(key, param, grads[key]))

    def step(self, key: str, param: Array, grad: Array) -> Array:
        """The updated parameter (`param` itself, changed in place, on NumPy)."""
        raise NotImplementedError


def _copy_dict(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


def _scaled_ratio(xp: Any, numerator: Array, squares: Array, lr: float, out: Array, spare: Array) -> Array:
    """lr * numerator / (sqrt(squares) + 1e-7) into `out`, in that order of operations (the plain
    expression's rounding, bit for bit), through two scratch buffers instead of temporary arrays."""
    spare = xp.sqrt(squares, out=spare)
    spare += EPS
    out = xp.multiply(numerator, lr, out=out)
    out /= spare
    return out


class SGD(Optimizer):
    """W <- W - lr * dW."""

    def update(self, params: dict[str, Array], grads: dict[str, Array]) -> None:
        xp = get_array_module(*params.values()) if params else None
        fused = fused_form(xp, "sgd")
        if fused is None:
            super().update(params, grads)
            return
        # every parameter in one kernel where the array module has one (the same roundings as `step`)
        fused(list(params.values()), [self._grad(key, p, grads[key]) for key, p in params.items()], self.lr)

    def step(self, key: str, param: Array, grad: Array) -> Array:
        if axpy(-self.lr, grad, param):  # NumPy on OpenBLAS: one pass on the BLAS threads (engine.openblas)
            return param
        tmp = self._buffer(self._scratch, key, param)
        param -= get_array_module(param).multiply(grad, self.lr, out=tmp)  # no temporary array per step
        return param


class Momentum(Optimizer):
    """v <- momentum * v - lr * dW;  W <- W + v."""

    state_names = ("v",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        super().__init__(lr, weight_decay)
        self.momentum = momentum
        self.v: dict[str, Array] = {}

    def step(self, key: str, param: Array, grad: Array) -> Array:
        xp = get_array_module(param)
        v, tmp = self._buffer(self.v, key, param), self._buffer(self._scratch, key, param)
        v *= self.momentum
        v -= xp.multiply(grad, self.lr, out=tmp)
        self.v[key] = v
        param += v
        return param


class Nesterov(Optimizer):
    """Nesterov's accelerated gradient in Bengio et al.'s form (http://arxiv.org/abs/1212.0901, eq. 7).

    W <- W + momentum^2 * v - (1 + momentum) * lr * dW, with the velocity v from before this step;
    then v <- momentum * v - lr * dW. The same steps as `torch.optim.SGD(nesterov=True)` at a fixed lr.
    The textbook's code updates v first and uses the new one, which adds momentum^2 * lr * dW too much
    per step (a first step of 2.71 lr dW instead of 1.9 lr dW at momentum 0.9).
    """

    state_names = ("v",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        super().__init__(lr, weight_decay)
        self.momentum = momentum
        self.v: dict[str, Array] = {}

    def step(self, key: str, param: Array, grad: Array) -> Array:
        xp = get_array_module(param)
        v, tmp = self._buffer(self.v, key, param), self._buffer(self._scratch, key, param)
        param += xp.multiply(v, self.momentum * self.momentum, out=tmp)  # the old v: it is updated below
        param -= xp.multiply(grad, (1 + self.momentum) * self.lr, out=tmp)
        v *= self.momentum
        v -= xp.multiply(grad, self.lr, out=tmp)
        self.v[key] = v
        return param


class AdaGrad(Optimizer):
    """h <- h + dW^2;  W <- W - lr * dW / (sqrt(h) + 1e-7)."""

    state_names = ("h",)

    def __init__(self, lr: float = 0.01, weight_decay: float = 0.0) -> None:
        super().__init__(lr, weight_decay)
        self.h: dict[str, Array] = {}

    def step(self, key: str, param: Array, grad: Array) -> Array:
        xp = get_array_module(param)
        h, tmp = self._buffer(self.h, key, param), self._buffer(self._scratch, key, param)
        spare = self._buffer(self._scratch, "spare:" + key, param)
        h += xp.multiply(grad, grad, out=tmp)
        self.h[key] = h
        param -= _scaled_ratio(xp, grad, h, self.lr, tmp, spare)
        return param


class RMSprop(Optimizer):
    """h <- decay_rate * h + (1 - decay_rate) * dW^2;  W <- W - lr * dW / (sqrt(h) + 1e-7)."""

    state_names = ("h",)

    def __init__(self, lr: float = 0.01, decay_rate: float = 0.99, weight_decay: float = 0.0) -> None:
        super().__init__(lr, weight_decay)
        self.decay_rate = decay_rate
        self.h: dict[str, Array] = {}

    def step(self, key: str, param: Array, grad: Array) -> Array:
        xp = get_array_module(param)
        h, tmp = self._buffer(self.h, key, param), self._buffer(self._scratch, key, param)
        spare = self._buffer(self._scratch, "spare:" + key, param)
        h *= self.decay_rate
        tmp = xp.multiply(grad, 1 - self.decay_rate, out=tmp)
        tmp *= grad
        h += tmp
        self.h[key] = h
        param -= _scaled_ratio(xp, grad, h, self.lr, tmp, spare)
        return param


class Adam(Optimizer):
    """Adam (http://arxiv.org/abs/1412.6980v8) in the textbook's form, bias correction folded into lr.

    t <- t + 1;  lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
    m <- m + (1 - beta1) (dW - m);  v <- v + (1 - beta2) (dW^2 - v);  W <- W - lr_t m / (sqrt(v) + 1e-7)

    This is the paper's "more efficient" ordering (end of its section 2), which adds eps to sqrt(v) before
    the bias correction. `torch.optim.Adam` follows the paper's Algorithm 1 and adds eps after it, so the
    engine's eps acts like torch's eps / sqrt(1 - beta2^t): 3.2e-6 at the first step with beta2 = 0.999,
    1e-7 in the long run. The steps differ only where |dW| is not much larger than that.

    In a jitted step the step count is state too: an array of the parameters' dtype (exact up to 2^24
    steps in float32), so the bias correction is computed on the device.
    """

    state_names = ("m", "v", "iter")

    def __init__(
        self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, weight_decay: float = 0.0
    ) -> None:
        super().__init__(lr, weight_decay)
        self.beta1, self.beta2 = beta1, beta2
        self.iter = 0
        self.m: dict[str, Array] = {}
        self.v: dict[str, Array] = {}
        self._lr_t = lr

    def state(self, params: dict[str, Array] | None = None) -> dict[str, Any]:
        if params is not None and isinstance(self.iter, int) and params:
            like = next(iter(params.values()))  # a device scalar: the count is traced with the rest
            self.iter = get_array_module(like).asarray(self.iter, dtype=like.dtype)
        return super().state(params)

    def update(self, params: dict[str, Array], grads: dict[str, Array]) -> None:
        self.iter += 1  # one time step per update, shared by every parameter
        correction = 1.0 - self.beta2**self.iter
        root = (
            math.sqrt(correction)
            if isinstance(correction, float)
            else get_array_module(correction).sqrt(correction)
        )
        self._lr_t = self.lr * root / (1.0 - self.beta1**self.iter)
        super().update(params, grads)

    def step(self, key: str, param: Array, grad: Array) -> Array:
        xp = get_array_module(param)
        m, v = self._buffer(self.m, key, param), self._buffer(self.v, key, param)
        tmp, spare = (
            self._buffer(self._scratch, key, param),
            self._buffer(self._scratch, "spare:" + key, param),
        )
        tmp = xp.subtract(grad, m, out=tmp)
        tmp *= 1 - self.beta1
        m += tmp
        tmp = xp.multiply(grad, grad, out=tmp)
        tmp -= v
        tmp *= 1 - self.beta2
        v += tmp
        self.m[key], self.v[key] = m, v
        param -= _scaled_ratio(xp, m, v, self._lr_t, tmp, spare)
        return param


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adagrad": AdaGrad,
    "rmsprop": RMSprop,
    "adam": Adam,
}


def make_optimizer(spec: dict[str, Any]) -> Optimizer:
    """An optimizer from the OptimizerSpec dict (name, lr, momentum, beta1, beta2, decay_rate, weight_decay).

    Keys an optimizer does not use are ignored; missing keys take the OptimizerSpec defaults.
    """
    name = str(spec.get("name", "sgd")).lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer name must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    lr = float(spec.get("lr", 0.1))
    weight_decay = float(spec.get("weight_decay", 0.0))
    if name == "momentum":
        return Momentum(lr, float(spec.get("momentum", 0.9)), weight_decay)
    if name == "nesterov":
        return Nesterov(lr, float(spec.get("momentum", 0.9)), weight_decay)
    if name == "rmsprop":
        return RMSprop(lr, float(spec.get("decay_rate", 0.99)), weight_decay)
    if name == "adam":
        return Adam(lr, float(spec.get("beta1", 0.9)), float(spec.get("beta2", 0.999)), weight_decay)
    return OPTIMIZERS[name](lr, weight_decay)
