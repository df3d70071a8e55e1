"""JAX's `jax.numpy` with NumPy's calling convention, so the engine's layers run on JAX unchanged.

The layers write into buffers they keep (`xp.multiply(x, mask, out=buf)`) and always go on with the
returned array, which on NumPy is the buffer itself. JAX arrays cannot change, so here every function
that NumPy gives an `out=` accepts it, computes a new array and returns it, cast to `out`'s dtype and
broadcast to its shape as NumPy would have written it (`out` itself is left alone). Writes into part of
an array go through `engine.backend.put`/`add_at`/`compute_into`, which use `.at[]` here.

Random numbers: `xp.random.default_rng(seed)` is a `KeyGenerator`, a JAX key that every draw splits.
It is a pytree, so a jitted step takes it as state and hands back the advanced one.

Importing this module imports JAX; nothing on the NumPy path imports it (`engine.backend` does so only
when it sees a JAX array).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_pytree_node_class
class KeyGenerator:
    """The part of `numpy.random.Generator` the engine draws from (`random`), on a JAX PRNG key.

    Each draw splits the key, keeps one half and draws from the other, so the same seed gives the same
    sequence of draws (not NumPy's numbers: JAX's generator is another one).
    """

    def __init__(self, key: Any) -> None:
        self.key = key

    def random(self, shape: tuple[int, ...], dtype: Any = np.float64) -> Any:
        """Uniform draws in [0, 1) of `shape`."""
        self.key, draw = jax.random.split(self.key)
        return jax.random.uniform(draw, shape, dtype=dtype)

    def tree_flatten(self) -> tuple[tuple[Any], None]:
        return (self.key,), None

    @classmethod
    def tree_unflatten(cls, aux: None, children: tuple[Any]) -> KeyGenerator:
        return cls(children[0])


class _Random:
    """`xp.random`: the one constructor the engine uses."""

    @staticmethod
    def default_rng(seed: int | None = None) -> KeyGenerator:
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        return KeyGenerator(jax.random.key(seed))


def _with_out(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` accepting NumPy's `out=` (and `casting=`): the result as NumPy would have written it."""

    @functools.wraps(function)
    def call(*args: Any, out: Any = None, casting: str | None = None, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        if out is None:
            return result
        if result.dtype != out.dtype:
            result = result.astype(out.dtype)
        if result.shape != out.shape:
            result = jnp.broadcast_to(result, out.shape)
        return result

    return call


class JaxNumpy:
    """The array module the layers see for JAX arrays: `jax.numpy`, with `out=` taken as above."""

    __name__ = "jax.numpy"  # as a module's: code that asks `xp.__name__` (dpnp's branches) gets an answer
    #: Arrays of this module cannot be changed: scratch buffers are not worth keeping between calls.
    immutable = True
    random = _Random()

    def __init__(self) -> None:
        self._functions: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        found = self._functions.get(name)
        if found is None:
            found = getattr(jnp, name)
            if callable(found) and not isinstance(found, type) and name not in _NO_OUT:
                found = _with_out(found)
            self._functions[name] = found
        return found

    @staticmethod
    def empty(shape: Any, dtype: Any = None) -> Any:
        """Zeros: JAX has no uninitialised arrays (and a buffer is always overwritten before it is read)."""
        return jnp.zeros(shape, dtype=dtype)

    @staticmethod
    def compile_step(network: Any, optimizer: Any) -> Callable[[Any, Any], Callable[[], Any]]:
        """`Network.stepper` on JAX: the whole step compiled (`engine.jit_step`)."""
        from engine.jit_step import compile_step

        return compile_step(network, optimizer)

    def __repr__(self) -> str:
        return "<array module jax.numpy, with NumPy's out=>"


# Names that are not functions of arrays (dtypes are classes and skipped anyway).
_NO_OUT = frozenset({"asarray", "array", "zeros", "ones", "zeros_like", "ones_like", "arange", "full", "pad"})

xp = JaxNumpy()


def synchronize() -> None:
    """Wait until every array JAX holds is computed (its dispatch is asynchronous)."""
    jax.block_until_ready(jax.live_arrays())
