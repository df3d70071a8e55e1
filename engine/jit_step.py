"""The engine's own training step as one XLA computation: `jax.jit` over the same layers and optimizer.

No second model: `CompiledStep` traces `Network.gradient` and `Optimizer.update` with JAX's tracers bound
into the network's layers and the optimizer, as a pure function

    (params, state, x, t) -> (new params, new state, loss)

where `params` are the network's (name -> array), and `state` the optimizer's (`Optimizer.state`) and
the layers' (`Network.state`: BatchNorm's running statistics, each Dropout's PRNG key). The incoming
params and state are donated, so XLA updates them in place. After each call the new arrays are bound
into the network again, so `network.params`, `accuracy` and `last_loss` read the trained values.

Dropout draws from `engine.backends.jax_numpy.KeyGenerator`: the same seed gives the same masks in every run,
not NumPy's masks (another generator).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from engine.layers import Array


class CompiledStep:
    """One training step of `network` with `optimizer`, compiled once per input shape."""

    def __init__(self, network: Any, optimizer: Any) -> None:
        self.network, self.optimizer = network, optimizer
        self.params: dict[str, Array] = dict(network.params)
        self.state: dict[str, Any] = {"optimizer": optimizer.state(self.params), "layers": network.state()}
        self._train = jax.jit(self._train_function, donate_argnums=(0, 1))
        self._gradient = jax.jit(self._gradient_function)

    def _bind(self, params: dict[str, Array], state: dict[str, Any]) -> None:
        self.network.bind(params)
        self.network.load_state(state["layers"])
        self.optimizer.load_state(state["optimizer"])

    def _gradient_function(
        self, params: dict[str, Array], state: dict[str, Any], x: Array, t: Array
    ) -> tuple[dict[str, Array], dict[str, Any], Array]:
        self._bind(params, state)
        grads = dict(self.network.gradient(x, t))
        return grads, {"layers": self.network.state()}, self.network.last_layer.loss

    def _train_function(
        self, params: dict[str, Array], state: dict[str, Any], x: Array, t: Array
    ) -> tuple[dict[str, Array], dict[str, Any], Array]:
        grads, layers, loss = self._gradient_function(params, state, x, t)
        params = dict(params)
        self.optimizer.update(params, grads)
        return params, {"optimizer": self.optimizer.state(), **layers}, loss

    def __call__(self, x: Array, t: Array) -> Array:
        """Train one step on the batch; its loss (a device scalar, not waited for)."""
        self.params, self.state, loss = self._train(self.params, self.state, x, t)
        self._bind(self.params, self.state)
        self.network.last_layer.set_loss(loss)
        return loss

    def gradient(self, x: Array, t: Array) -> tuple[dict[str, Array], Array]:
        """The gradients and the loss of the batch (compiled; the parameters stay; the layers' state, a
        Dropout key or BatchNorm's running statistics, moves on as in a training step)."""
        grads, layers, loss = self._gradient(self.params, self.state, x, t)
        self.state = {**self.state, **layers}
        self._bind(self.params, self.state)
        self.network.last_layer.set_loss(loss)
        return grads, loss

    def pending(self, x: Array, t: Array) -> Callable[[], Array]:
        """`Network.stepper`'s form: train one step, return a function that gives its loss."""
        loss = self(x, t)
        return lambda: loss


def compile_step(network: Any, optimizer: Any) -> Callable[[Array, Array], Callable[[], Array]]:
    """`Network.stepper` on JAX: the compiled step's `pending`."""
    return CompiledStep(network, optimizer).pending
