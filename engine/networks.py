"""Networks: an ordered list of layers plus a loss layer; backward walks the list in reverse.

Parameters are named as in the textbook: the k-th Affine or Convolution layer owns "Wk" and "bk",
the k-th BatchNorm owns "gammak" and "betak". `Network.params` and `Network.grads` map those names
to the layers' own arrays, so an optimizer updating `params` in place updates the layers, and the
gradient arrays are refilled in place by every `gradient` call (copy them to keep them).

FLOP convention (`training_flops`): only the matrix products of one training step are counted,
2*m*k*n for each (m x k) @ (k x n) product: the forward product of every Affine/Convolution, the
weight gradient, and the input gradient for every such layer except the first (the engine does not
compute the data's gradient). Elementwise work, softmax, im2col, pooling and the update are not
counted. Dividing by the measured matmul rate of the same shapes gives the GEMM-bound limit.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine.backend import CPU, Device, draw_as, get_array_module, put, random_generator, resolve_dtype
from engine.blas_threads import POOL as BLAS_POOL
from engine.layers import (
    Affine,
    Array,
    BatchNorm,
    Convolution,
    Dropout,
    Layer,
    Pooling,
    Relu,
    Sigmoid,
    SoftmaxWithLoss,
    Tanh,
)
from engine.spec import CONVNET_HIDDEN, INITS, MODEL_NAMES, default_init, default_layers, image_shape

ACTIVATIONS: dict[str, type[Layer]] = {"relu": Relu, "sigmoid": Sigmoid, "tanh": Tanh}
# simple_convnet's fixed geometry (the textbook's): 30 filters of 5x5, no padding, stride 1, 2x2 pooling.
CONVNET_FILTERS, CONVNET_FILTER_SIZE = 30, 5


class Network:
    """Ordered layers plus a SoftmaxWithLoss; the textbook's TwoLayerNet/MultiLayerNet shape.

    `layers` maps a display name ("Affine1", "Relu1", ...) to the layer. Inputs are cast to the
    network's dtype and moved to its device when needed (no copy when they already match) and
    reshaped to `(N, *input_shape)`.
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        input_shape: tuple[int, ...],
        device: Device = CPU,
        dtype: str = "float32",
        name: str = "network",
    ) -> None:
        self.name = name
        self.device = device
        self.dtype = resolve_dtype(dtype)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.layers: dict[str, Layer] = {}
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self._owners: dict[str, tuple[Layer, str]] = {}  # parameter name -> (its layer, the layer's key)
        counts: dict[str, int] = {}
        weight_index = 0
        batchnorm_index = 0
        for layer in layers:
            kind = type(layer).__name__
            suffix = 0
            counts[kind] = counts.get(kind, 0) + 1
            self.layers[f"{kind}{counts[kind]}"] = layer
            if isinstance(layer, Affine | Convolution):
                weight_index += 1
                suffix = weight_index
            elif isinstance(layer, BatchNorm):
                batchnorm_index += 1
                suffix = batchnorm_index
            for key, value in layer.params.items():
                self.params[f"{key}{suffix}"] = value
                self.grads[f"{key}{suffix}"] = layer.grads[key]
                self._owners[f"{key}{suffix}"] = (layer, key)
        self._sequence = list(self.layers.values())
        if self._sequence:
            self._sequence[0].need_dx = False  # nobody uses the gradient with respect to the data
        for before, layer in itertools.pairwise(self._sequence):
            # Their outputs are their own buffers, unused by their backward: a ReLU may overwrite them
            # (and the gradient handed back to a ReLU inside a network is always a layer's buffer).
            if isinstance(layer, Relu) and isinstance(before, Affine | Convolution):
                layer.in_place = True
        self.last_layer = SoftmaxWithLoss()
        self.xp = get_array_module(*self.params.values()) if self.params else device.xp
        # JAX: the layers' arrays are replaced, not changed, so the dicts are refreshed from them.
        self._immutable = bool(getattr(self.xp, "immutable", False))

    # --- inputs ---------------------------------------------------------------------------------------
    def _inputs(self, x: Any) -> Array:
        x = self.xp.asarray(x, dtype=self.dtype)
        if x.shape[1:] != self.input_shape:
            x = x.reshape((x.shape[0], *self.input_shape))
        return x

    def _labels(self, t: Any) -> Array:
        t = self.xp.asarray(t)
        if t.ndim == 1:
            return t if t.dtype.kind in "iu" else t.astype(np.int64)
        return t.astype(self.dtype, copy=False)

    # --- the textbook API -------------------------------------------------------------------------
    def forward(self, x: Array, train: bool = False) -> Array:
        """Scores (pre-softmax) for prepared input; the array is a layer buffer (see `predict`)."""
        sizing = self.xp is np and BLAS_POOL.begin()  # BLAS threads by product size (engine.blas_threads)
        try:
            for layer in self._sequence:
                x = layer.forward(x, train)
        finally:
            if sizing:
                BLAS_POOL.end()
        return x

    def predict(self, x: Any, train: bool = False) -> Array:
        """Class scores (before softmax) for a batch, as a fresh array."""
        return self.forward(self._inputs(x), train).copy()

    def loss(self, x: Any, t: Any, train: bool = False) -> float:
        """Mean cross-entropy of the batch (the data loss; weight decay lives in the optimizer)."""
        scores = self.forward(self._inputs(x), train)
        return float(self.last_layer.forward(scores, self._labels(t)))

    def gradient(self, x: Any, t: Any) -> dict[str, Array]:
        """Backprop: forward in training mode, then backward through the layers in reverse.

        Returns `self.grads` (name -> gradient array), refilled in place on every call.
        """
        sizing = self.xp is np and BLAS_POOL.begin()
        try:
            scores = self.forward(self._inputs(x), train=True)
            self.last_layer.forward(scores, self._labels(t), compute_loss=False)  # read lazily: last_loss
            dout = self.last_layer.backward(1.0)
            for layer in reversed(self._sequence):
                dout = layer.backward(dout)
        finally:
            if sizing:
                BLAS_POOL.end()
        if self._immutable:
            self.grads = {name: getattr(layer, "d" + key) for name, (layer, key) in self._owners.items()}
        return self.grads

    def train_step(self, x: Any, t: Any, optimizer: Any) -> None:
        """One step of training: `gradient`, then `optimizer.update(params, grads)` in place.

        Returns nothing so that a GPU step needs no synchronisation; read `last_loss` when wanted.
        """
        optimizer.update(self.params, self.gradient(x, t))
        if self._immutable:
            self.bind(self.params)

    def stepper(self, optimizer: Any) -> Callable[[Any, Any], Callable[[], Any]]:
        """`step(x, t)`: one training step, returning a function that gives its loss (a device scalar).

        `train_step` and the last layer's `pending_loss` here; where the array library compiles whole
        steps (JAX: `engine.jit_step.CompiledStep`), the compiled step.
        """
        compile_step = getattr(self.xp, "compile_step", None)
        if compile_step is not None:
            return compile_step(self, optimizer)

        def step(x: Any, t: Any) -> Callable[[], Any]:
            self.train_step(x, t, optimizer)
            return self.last_layer.pending_loss()

        return step

    # --- the arrays a functional (compiled) step passes in and out ----------------------------------
    def bind(self, params: dict[str, Array]) -> None:
        """Make `params` (name -> array) the network's parameters: the layers' own attributes and dicts."""
        for name, value in params.items():
            layer, key = self._owners[name]
            setattr(layer, key, value)
            layer.params[key] = value
            self.params[name] = value

    def state(self) -> dict[str, dict[str, Any]]:
        """What training changes besides the parameters, by layer name: `Layer.state_names`."""
        return {
            name: {attr: getattr(layer, attr) for attr in layer.state_names}
            for name, layer in self.layers.items()
            if layer.state_names
        }

    def load_state(self, state: dict[str, dict[str, Any]]) -> None:
        """Take `state()`'s values as the layers'."""
        for name, values in state.items():
            for attr, value in values.items():
                setattr(self.layers[name], attr, value)

    @property
    def last_loss(self) -> float:
        """The loss of the batch seen by the last `gradient`/`train_step`/`loss` call."""
        return float(self.last_layer.loss)

    def accuracy(self, x: Any, t: Any, batch_size: int = 1000) -> float:
        """Fraction of samples whose highest score is the true class (labels: integers or one-hot)."""
        xp = self.xp
        n = len(x)
        if n == 0:
            return 0.0
        correct = 0
        for start in range(0, n, batch_size):
            xb = self._inputs(x[start : start + batch_size])
            tb = xp.asarray(t[start : start + batch_size])
            if tb.ndim != 1:
                tb = tb.argmax(axis=1)
            correct += int((self.forward(xb, train=False).argmax(axis=1) == tb).sum())
        return correct / n

    # --- bookkeeping ----------------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        """Number of trainable scalars."""
        return int(sum(int(p.size) for p in self.params.values()))

    def load_params(self, params: dict[str, Any]) -> None:
        """Copy values into the existing parameter arrays (keeps the layers' references valid)."""
        for key, value in params.items():
            if key not in self.params:
                raise KeyError(f"unknown parameter {key!r}; this network has {', '.join(self.params)}")
            self.bind({key: put(self.params[key], ..., self.xp.asarray(value, dtype=self.dtype))})

    def set_hold_dropout_masks(self, hold: bool) -> None:
        """Freeze (or release) every Dropout layer's current mask, e.g. for a gradient check."""
        for layer in self._sequence:
            if isinstance(layer, Dropout):
                layer.hold_mask = hold

    def gemm_shapes(self, batch_size: int) -> list[tuple[int, int, int]]:
        """The (m, k, n) matrix products of one training step at this batch size, in order."""
        shapes: list[tuple[int, int, int]] = []
        shape = self.input_shape
        for layer in self._sequence:
            shapes += layer.gemm_shapes(batch_size, shape)
            shape = layer.output_shape(shape)
        return shapes

    def flops_per_step(self, batch_size: int) -> int:
        """Matrix-product FLOPs of one training step (see the module docstring for the convention)."""
        return training_flops(self, batch_size)

    def __repr__(self) -> str:
        return (
            f"Network({self.name}, {' -> '.join(self.layers)}, params={self.n_params}, "
            f"dtype={self.dtype.name}, device={self.device.name})"
        )


def training_flops(network: Network, batch_size: int) -> int:
    """FLOPs of one training step: 2*m*k*n summed over the step's matrix products.

    Counted: forward products, weight gradients and input gradients (except the first layer's,
    which the engine skips). Not counted: elementwise ops, softmax, im2col/col2im, the update.
    """
    return sum(2 * m * k * n for m, k, n in network.gemm_shapes(batch_size))


# --- construction ---------------------------------------------------------------------------------


def _init_std(init: str, fan_in: int, weight_init_std: float) -> float:
    if init == "std":
        return weight_init_std
    if init == "xavier":
        return math.sqrt(1.0 / fan_in)
    if init == "he":
        return math.sqrt(2.0 / fan_in)
    raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")


class _Params:
    """Draws weights with a NumPy generator (same seed -> same weights on CPU and GPU, any dtype)."""

    def __init__(self, seed: int, dtype: str, device: Device) -> None:
        self.rng = np.random.default_rng(seed)
        self.dtype = resolve_dtype(dtype)
        self.device = device

    def _put(self, a: np.ndarray) -> Array:
        with self.device.use():
            return self.device.xp.asarray(a.astype(self.dtype, copy=False))

    def normal(self, shape: tuple[int, ...], std: float) -> Array:
        # Drawn in float64 and rounded as always, block by block: no float64 copy of a large weight matrix.
        return self._put(draw_as(lambda block: std * self.rng.standard_normal(block), shape, self.dtype))

    def const(self, shape: tuple[int, ...], value: float) -> Array:
        return self._put(np.full(shape, value))


def mlp(
    widths: Sequence[int],
    activation: str = "relu",
    init: str = "he",
    weight_init_std: float = 0.01,
    batchnorm: bool = False,
    dropout: float = 0.0,
    dtype: str = "float32",
    device: Device = CPU,
    seed: int = 0,
    input_shape: tuple[int, ...] | None = None,
) -> Network:
    """A fully connected net: (Affine [-> BatchNorm] -> activation [-> Dropout]) x hidden -> Affine.

    `widths` includes the input and output sizes, e.g. [784, 100, 100, 10]. `init` is "std"
    (normal with `weight_init_std`), "xavier" (std sqrt(1/fan_in)) or "he" (sqrt(2/fan_in)).
    """
    widths = [int(w) for w in widths]
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"widths must be at least two positive sizes (input, output), got {widths}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if input_shape is not None and math.prod(input_shape) != widths[0]:
        raise ValueError(
            f"input_shape {input_shape} has {math.prod(input_shape)} values, widths[0] is {widths[0]}"
        )
    draw = _Params(seed, dtype, device)
    dropout_rng = random_generator(seed, device) if dropout > 0 else None
    layers: list[Layer] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        std = _init_std(init, fan_in, weight_init_std)
        layers.append(Affine(draw.normal((fan_in, fan_out), std), draw.const((fan_out,), 0.0)))
        if i == len(widths) - 2:
            break  # the output layer: scores go straight to SoftmaxWithLoss
        if batchnorm:
            layers.append(BatchNorm(draw.const((fan_out,), 1.0), draw.const((fan_out,), 0.0)))
        layers.append(ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(Dropout(dropout, dropout_rng))
    shape = tuple(input_shape) if input_shape is not None else (widths[0],)
    return Network(layers, shape, device=device, dtype=dtype, name="mlp")


def two_layer_net(
    input_size: int = 784,
    hidden_size: int = 50,
    output_size: int = 10,
    weight_init_std: float = 0.01,
    dtype: str = "float32",
    device: Device = CPU,
    seed: int = 0,
) -> Network:
    """The textbook's TwoLayerNet: Affine -> ReLU -> Affine -> SoftmaxWithLoss, weights N(0, 0.01^2)."""
    net = mlp(
        [input_size, hidden_size, output_size],
        activation="relu",
        init="std",
        weight_init_std=weight_init_std,
        dtype=dtype,
        device=device,
        seed=seed,
    )
    net.name = "two_layer_net"
    return net


def simple_convnet(
    input_shape: tuple[int, int, int] = (1, 28, 28),
    filter_num: int = CONVNET_FILTERS,
    filter_size: int = CONVNET_FILTER_SIZE,
    pad: int = 0,
    stride: int = 1,
    hidden_size: int = 100,
    output_size: int = 10,
    init: str = "std",
    weight_init_std: float = 0.01,
    dtype: str = "float32",
    device: Device = CPU,
    seed: int = 0,
) -> Network:
    """The textbook's SimpleConvNet: Conv -> ReLU -> MaxPool 2x2/2 -> Affine -> ReLU -> Affine."""
    if len(input_shape) != 3:
        raise ValueError(f"simple_convnet needs an image input shape (C, H, W), got {input_shape}")
    c, h, w = (int(s) for s in input_shape)
    draw = _Params(seed, dtype, device)
    conv = Convolution(
        draw.normal(
            (filter_num, c, filter_size, filter_size), _init_std(init, c * filter_size**2, weight_init_std)
        ),
        draw.const((filter_num,), 0.0),
        stride=stride,
        pad=pad,
    )
    pool = Pooling(2, 2, stride=2)
    pooled = pool.output_shape(conv.output_shape((c, h, w)))
    if min(pooled) < 1:
        raise ValueError(
            f"input {input_shape} is too small for {filter_size}x{filter_size} filters and 2x2 pooling"
        )
    flat = math.prod(pooled)
    layers: list[Layer] = [
        conv,
        Relu(),
        pool,
        Affine(
            draw.normal((flat, hidden_size), _init_std(init, flat, weight_init_std)),
            draw.const((hidden_size,), 0.0),
        ),
        Relu(),
        Affine(
            draw.normal((hidden_size, output_size), _init_std(init, hidden_size, weight_init_std)),
            draw.const((output_size,), 0.0),
        ),
    ]
    return Network(layers, (c, h, w), device=device, dtype=dtype, name="simple_convnet")


def build_network(
    model: dict[str, Any],
    input_shape: tuple[int, ...],
    n_classes: int,
    dtype: str = "float32",
    device: Device = CPU,
    seed: int = 0,
) -> Network:
    """Build the network a job asks for, from `JobSpec.engine_dict()["model"]`.

    The dataset wins over `model["layers"]` at both ends: the input width is the product of
    `input_shape` and the output width is `n_classes`; `layers[1:-1]` give the hidden widths.
    For `simple_convnet`, `layers[1]` is the hidden Affine width (default 100) and a flat input of a
    square size (784) is read as a (1, 28, 28) image. `two_layer_net` is `mlp` with exactly three
    widths; with the spec's defaults (relu, std 0.01, no batchnorm, no dropout) it is the textbook's.
    """
    name = model.get("name", "two_layer_net")
    input_shape = tuple(int(s) for s in input_shape)
    layers = [int(w) for w in (model.get("layers") or [])]
    activation = model.get("activation", "relu")
    weight_init_std = float(model.get("weight_init_std", 0.01))
    if name == "simple_convnet":
        hidden = layers[1] if len(layers) >= 3 else CONVNET_HIDDEN
        return simple_convnet(
            image_shape(input_shape) or input_shape,  # type: ignore[arg-type]
            hidden_size=hidden,
            output_size=n_classes,
            init=model.get("init") or default_init(name),
            weight_init_std=weight_init_std,
            dtype=dtype,
            device=device,
            seed=seed,
        )
    if name not in MODEL_NAMES:
        raise ValueError(f"model name must be one of {', '.join(MODEL_NAMES)}, got {name!r}")
    hidden_widths = layers[1:-1] if len(layers) >= 2 else default_layers(name)[1:-1]
    if name == "two_layer_net" and len(hidden_widths) != 1:
        raise ValueError(f"two_layer_net takes exactly three widths, got layers={layers}")
    net = mlp(
        [math.prod(input_shape), *hidden_widths, n_classes],
        activation=activation,
        init=model.get("init") or default_init(name),
        weight_init_std=weight_init_std,
        batchnorm=bool(model.get("batchnorm", False)),
        dropout=float(model.get("dropout", 0.0)),
        dtype=dtype,
        device=device,
        seed=seed,
        input_shape=input_shape,
    )
    net.name = name
    return net
