"""What every job kind shares: its errors, the reporter it is handed, its device, data and network, the
timing helpers, and the arithmetic of the memory estimate.

A kind is one module `engine/kinds/<kind>.py` that defines `KIND = JobKind(...)`: how to run it, how much
memory it needs (from the same network builder and data set sizes the run uses), and which of its metrics
become a stored result's columns.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.backend import Device, DeviceError, Stopwatch, check_float64, resolve_device, synchronize
from engine.datasets import Dataset, DatasetError, dataset_split, load_dataset, loading_bytes
from engine.networks import CONVNET_FILTER_SIZE, CONVNET_FILTERS, Network, build_network
from engine.optimizers import make_optimizer
from engine.spec import (
    CONVNET_HIDDEN,
    CONVNET_SYNTHETIC_IMAGE,
    JobError,
    count_parameters,
    image_shape,
    model_input,
)
from engine.stats import repeat_until_stable

MIN_TRIAL_S = 0.01  # tiny operations are repeated inside one trial until it lasts this long
WARMUP_S = 0.05  # untimed calls before a series of trials
# The last data set a job loaded is kept for the next job of this process (a worker runs the same set job
# after job; making or reading it costs more than a tiny job's 20 steps). Only sets whose content follows
# from the arguments (no user path), and only up to this size.
DATASET_CACHE_MAX_BYTES = 32 * 2**20

DTYPE_BYTES = {"float32": 4, "float64": 8}
# Arrays of each parameter's size an optimizer keeps besides the parameter and its gradient: its state
# (velocity, squares, moments) and its scratch buffers (engine/optimizers.py); weight decay adds one.
OPTIMIZER_STATE_COPIES = {"sgd": 1, "momentum": 2, "nesterov": 2, "adagrad": 3, "rmsprop": 3, "adam": 4}
SAFETY_FACTOR = 1.5
BASE_BYTES = 64 * 1024**2  # the interpreter, NumPy and the engine's code, whatever the job (34 MiB measured)
EVAL_CHUNK = 1000  # Network.accuracy's batch
LABEL_BYTES = 8  # an int64 label per sample


class JobCancelled(RuntimeError):
    """`should_stop()` turned true; the job stopped between steps."""


class JobDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message is `diverged at step N`."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"diverged at step {step}")
        self.step = step
        self.loss = loss


class Reporter(Protocol):
    """What a kind is handed to say how far it is and to learn whether to stop."""

    def report(self, fraction: float, message: str, force: bool = False) -> None: ...

    def check_stop(self, where: str) -> None: ...


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak bytes of a job, and how they break down."""

    total_bytes: int
    parts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: the total and its largest parts, in MiB."""
        largest = sorted(self.parts.items(), key=lambda item: -item[1])[:3]
        detail = ", ".join(f"{name} {mib(value)}" for name, value in largest)
        return f"{mib(self.total_bytes)} ({detail})"


def mib(n_bytes: int) -> str:
    """Bytes as a human figure: `12.3 MiB` or `4.50 GiB`."""
    if n_bytes >= 1024**3:
        return f"{n_bytes / 1024**3:.2f} GiB"
    return f"{n_bytes / 1024**2:.1f} MiB"


def model_columns(spec: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The result columns of a kind that runs a model on a data set: model, data set and batch size."""
    return {
        "model_name": (spec.get("model") or {}).get("name"),
        "dataset": spec.get("dataset"),
        "batch_size": spec.get("batch_size"),
        "peak_flops_per_s": None,
    }


@dataclass(frozen=True)
class JobKind:
    """One job kind: `run(spec, reporter)` gives the result body (`metrics`, `statistics`, `trials`,
    `timing`); `estimate_memory(spec)` its peak bytes; `result_columns(spec, metrics)` the values of the
    result columns `model_name`, `dataset`, `batch_size` and `peak_flops_per_s`. `spec` is fully resolved.
    """

    name: str
    summary: str
    run: Callable[[dict[str, Any], Reporter], dict[str, Any]]
    estimate_memory: Callable[[dict[str, Any]], MemoryEstimate]
    result_columns: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] = model_columns


# --- device, data and network --------------------------------------------------------------------------


def device_of(spec: dict[str, Any], in_place: bool = False) -> Device:
    """The spec's device, or JobError naming what is available (or, for a float64 job on a device without
    float64, what is accepted: the API refuses what the spelling tells, this checks the device itself).

    `in_place`: the kind changes arrays in place (a numerical gradient nudges one weight at a time, a GEMM
    timing writes into its output); JAX's arrays cannot be changed, so such a kind is refused there.
    """
    try:
        device = resolve_device(spec["device"])
        check_float64(device, str(spec.get("dtype", "float32")))
    except DeviceError as exc:
        raise JobError(str(exc)) from None
    if in_place and getattr(device.xp, "immutable", False):
        raise JobError(
            f"kind {spec.get('kind')!r} changes arrays in place, which {device.name!r} ({device.backend}) "
            "cannot; accepted there: kind train (its whole step compiled); this kind runs on cpu or a GPU"
        )
    return device


_last_dataset: tuple[tuple[Any, ...], Dataset] | None = None


def _load_cached(name: str, path: str | None, **options: Any) -> Dataset:
    """`load_dataset`, reusing the last set this process loaded with the same arguments.

    The arrays are made read-only, so no job can change what the next one trains on.
    """
    global _last_dataset
    key = (name, path, *sorted(options.items()))
    if _last_dataset is not None and _last_dataset[0] == key:
        return _last_dataset[1]
    _last_dataset = None  # let the previous set go before the next one is made
    data = load_dataset(name, path=path, **options)
    for array in (data.x_train, data.t_train, data.x_test, data.t_test):
        array.flags.writeable = False
    size = sum(a.nbytes for a in (data.x_train, data.t_train, data.x_test, data.t_test))
    if path is None and size <= DATASET_CACHE_MAX_BYTES:
        _last_dataset = (key, data)
    return data


def load_data(spec: dict[str, Any], dtype: str) -> Dataset:
    """The spec's data set in `dtype`, shaped as its model reads it (the convnet gets images)."""
    input_shape, n_classes = model_input(spec)
    name = spec["dataset"]
    try:
        data = _load_cached(
            name,
            spec.get("dataset_path"),
            dtype=dtype,
            input_shape=input_shape,
            n_classes=n_classes,
            samples=int(spec["synthetic_samples"]),
            seed=int(spec["seed"]),
        )
    except DatasetError as exc:
        raise JobError(str(exc)) from None
    if spec["model"]["name"] == "simple_convnet" and len(data.input_shape) == 1:
        shape = image_shape(data.input_shape)
        if shape is None:
            raise JobError(f"simple_convnet needs image inputs; dataset {name} has shape {data.input_shape}")
        data = Dataset(
            data.x_train.reshape((-1, *shape)),
            data.t_train,
            data.x_test.reshape((-1, *shape)),
            data.t_test,
            shape,
            data.n_classes,
            data.name,
        )
    return data


def build(
    model: dict[str, Any], input_shape: tuple[int, ...], n_classes: int, dtype: str, device: Device, seed: int
) -> Network:
    """`build_network`, with its ValueError (bad widths, activations, inits) as a JobError."""
    try:
        return build_network(model, input_shape, n_classes, dtype, device, seed)
    except ValueError as exc:
        raise JobError(f"model: {exc}") from None


def optimizer_of(spec: dict[str, Any]) -> Any:
    """The spec's optimizer, or JobError."""
    try:
        return make_optimizer(spec["optimizer"])
    except (ValueError, KeyError) as exc:
        raise JobError(f"optimizer: {exc}") from None


# --- timing --------------------------------------------------------------------------------------------


def calibrated_trial(
    fn: Callable[[], Any], device: Device, reporter: Reporter, label: str
) -> tuple[Callable[[], float], int]:
    """A trial function returning seconds per call of `fn`, with inner repeats so it lasts >= MIN_TRIAL_S.

    Warms up for `WARMUP_S` first (caches, clocks, allocator), so the first size measured is not penalised.
    """
    started = time.perf_counter()
    while time.perf_counter() - started < WARMUP_S:
        fn()
        synchronize(device)  # on a GPU, count device time, not how fast the host can queue launches
    stopwatch = Stopwatch(device)
    stopwatch.start()
    fn()
    inner = max(1, math.ceil(MIN_TRIAL_S / max(stopwatch.stop(), 1e-9)))

    def trial() -> float:
        reporter.check_stop(label)
        stopwatch.start()
        for _ in range(inner):
            fn()
        return stopwatch.stop() / inner

    return trial, inner


def repeat_trials(trial: Callable[[], float], timing: dict[str, Any]) -> tuple[list[float], str]:
    """The adaptive repeat loop with the spec's timing settings (one untimed warm-up trial)."""
    return repeat_until_stable(
        trial,
        warmup=1,
        min_repeats=int(timing["min_repeats"]),
        max_repeats=int(timing["max_repeats"]),
        target_cv=float(timing["target_cv"]),
    )


# --- memory --------------------------------------------------------------------------------------------
#
# An estimate bounds the peak resident memory of a fresh process that imports the engine and runs the job
# (`python -m harness.memory_peak`: VmHWM after `engine.jobs.run_job`). It is the sum of its parts, which
# never all live at once (the data set's loading temporaries are gone before training starts), times
# SAFETY_FACTOR; the parts include `runtime`, the interpreter, NumPy and the engine's code (34 MiB
# measured). In a worker the pool process already holds that baseline before the job starts, so the
# worker's check against free memory counts it twice: on the safe side.
# `tests/engine/test_memory_estimate.py` runs a grid of real jobs and checks estimate >= peak.


def data_split(spec: dict[str, Any]) -> tuple[int, int, tuple[int, ...]]:
    """(train samples, test samples, per-sample input shape as the model reads it) of the spec's data set,
    without loading it (`mnist` reads its files' headers when `dataset_path` is set)."""
    input_shape, n_classes = model_input(spec)
    train, test, features = dataset_split(
        spec["dataset"],
        samples=int(spec["synthetic_samples"]),
        n_classes=n_classes,
        input_shape=input_shape,
        path=spec.get("dataset_path"),
    )
    if spec["model"]["name"] == "simple_convnet":
        return train, test, input_shape or image_shape((features,)) or CONVNET_SYNTHETIC_IMAGE
    return train, test, (features,)


def data_size(spec: dict[str, Any]) -> tuple[int, tuple[int, ...]]:
    """(samples, per-sample input shape as the model reads it) of the spec's data set, without loading it."""
    train, test, shape = data_split(spec)
    return train + test, shape


def dataset_bytes(samples: int, input_shape: tuple[int, ...], item: int) -> int:
    """Train and test arrays of a data set held in memory: features plus an int64 label per sample."""
    return samples * (math.prod(input_shape) * item + LABEL_BYTES)


def data_loading_bytes(spec: dict[str, Any], item: int) -> dict[str, int]:
    """What loading the spec's data set holds besides the set (`engine.datasets.loading_bytes`)."""
    samples, input_shape = data_size(spec)
    _, n_classes = model_input(spec)
    return loading_bytes(spec["dataset"], samples, math.prod(input_shape), item, n_classes)


def optimizer_copies(optimizer: dict[str, Any]) -> int:
    """Arrays of each parameter's size the optimizer keeps (its state, its scratch, weight decay's)."""
    decay = float(optimizer.get("weight_decay") or 0.0) > 0.0
    return OPTIMIZER_STATE_COPIES[optimizer["name"]] + int(decay)


def _dense_pass(model: dict[str, Any], item: int, train: bool) -> tuple[int, int]:
    """(kept, transient) bytes per sample of one pass through `mlp`/`two_layer_net` (see `pass_bytes`)."""
    widths = [int(w) for w in model["layers"]]
    activation = model.get("activation", "relu")
    batchnorm, dropout = bool(model.get("batchnorm")), float(model.get("dropout") or 0) > 0
    kept = transient = 0
    for index, (fan_in, width) in enumerate(itertools.pairwise(widths)):
        kept += width * item  # Affine's output
        if train and index > 0:
            kept += fan_in * item  # and the gradient of its input (none for the data)
        if index == len(widths) - 2:
            break
        if batchnorm:  # training keeps the centred and normalised inputs; both passes make temporaries
            kept += 2 * width * item if train else 0
            transient = max(transient, (5 if train else 3) * width * item)
        if activation == "relu":  # a mask; in place after Affine, its own output (and gradient) after BN
            kept += width + (2 if train else 1) * width * item * int(batchnorm)
        else:  # sigmoid keeps e, s, its output (and gradient); tanh its output (and gradient)
            kept += ((4 if train else 3) if activation == "sigmoid" else (2 if train else 1)) * width * item
        if dropout:  # its output (the next Affine keeps it) and mask; training draws float32 and a gradient
            kept += width * item + (width if train else 0)
            if train:
                transient = max(transient, width * item + 4 * width)
    classes = widths[-1]
    kept += 2 * classes * item + 3 * LABEL_BYTES if train else 2 * LABEL_BYTES  # softmax; argmax
    return kept, transient


def _convnet_sizes(model: dict[str, Any], input_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """`simple_convnet`'s (input channels, convolution output height and width, hidden width)."""
    widths = [int(w) for w in model["layers"]]
    channels, height, width = image_shape(input_shape) or CONVNET_SYNTHETIC_IMAGE
    hidden = widths[1] if len(widths) >= 3 else CONVNET_HIDDEN
    return channels, height - CONVNET_FILTER_SIZE + 1, width - CONVNET_FILTER_SIZE + 1, hidden


def _convnet_pass(model: dict[str, Any], input_shape: tuple[int, ...], item: int, train: bool) -> int:
    """Bytes per sample `simple_convnet`'s layers keep in one pass (its temporaries are per batch)."""
    channels, conv_h, conv_w, hidden = _convnet_sizes(model, input_shape)
    patch = channels * CONVNET_FILTER_SIZE**2
    conv = CONVNET_FILTERS * conv_h * conv_w
    pooled = CONVNET_FILTERS * (conv_h // 2) * (conv_w // 2)
    classes = int(model["layers"][-1])
    # Convolution: unfolded patches and output; ReLU: its mask; Pooling, Affine, ReLU, Affine: outputs.
    kept = (patch * conv_h * conv_w + conv + pooled + hidden + classes) * item + conv + hidden
    if not train:
        return kept + 2 * LABEL_BYTES
    kept += CONVNET_FILTERS * patch * item  # the convolution's weight gradient per sample
    kept += (conv + pooled) * item + 4 * pooled  # pooling's gradient and share; its index and masks
    kept += (pooled + hidden) * item  # the Affine layers' input gradients
    return kept + 2 * classes * item + 3 * LABEL_BYTES


def pass_bytes(
    model: dict[str, Any], input_shape: tuple[int, ...], item: int, train: bool
) -> tuple[int, int]:
    """(kept, transient) bytes per sample of one pass of the model: a training step (`train`: forward and
    backward) or an evaluation's forward pass.

    `kept`: what the layers hold until their next pass at that batch size (their buffers are kept per
    shape, so every batch size a job uses holds its own); `transient`: the largest set of temporaries one
    layer makes and drops within the pass (BatchNorm's, Dropout's).
    """
    if model["name"] == "simple_convnet":
        return _convnet_pass(model, input_shape, item, train), 0
    return _dense_pass(model, item, train)


def relu_values(model: dict[str, Any], input_shape: tuple[int, ...]) -> int:
    """The most values per sample one ReLU layer of the model takes (0 without one): times the batch, what
    decides whether the CPU's compiled kernels run (`engine.kernels.MIN_VALUES`)."""
    if model["name"] == "simple_convnet":  # conv -> ReLU -> pool -> Affine -> ReLU -> Affine
        _, conv_h, conv_w, hidden = _convnet_sizes(model, input_shape)
        return max(CONVNET_FILTERS * conv_h * conv_w, hidden)
    widths = [int(w) for w in model["layers"]]
    return max(widths[1:-1], default=0) if model.get("activation", "relu") == "relu" else 0


def parameter_count(model: dict[str, Any], input_shape: tuple[int, ...]) -> int:
    """The model's trainable scalars, as `build_network` makes them."""
    widths = [int(w) for w in model["layers"]]
    if model["name"] != "simple_convnet":
        return count_parameters(widths) + 2 * sum(widths[1:-1]) * int(bool(model.get("batchnorm")))
    channels, conv_h, conv_w, hidden = _convnet_sizes(model, input_shape)
    pooled = CONVNET_FILTERS * (conv_h // 2) * (conv_w // 2)
    filters = CONVNET_FILTERS * (channels * CONVNET_FILTER_SIZE**2 + 1)
    return filters + count_parameters([pooled, hidden, widths[-1]])


def network_bytes(
    model: dict[str, Any], input_shape: tuple[int, ...], item: int, batch: int, state_copies: int
) -> dict[str, int]:
    """Parameters (with gradients and `state_copies` more arrays of their size) and one training batch's
    activations (`pass_bytes`)."""
    kept, transient = pass_bytes(model, input_shape, item, train=True)
    n_params = parameter_count(model, input_shape)
    return {"parameters": n_params * item * (2 + state_copies), "activations": batch * (kept + transient)}


def evaluation_chunks(n_train: int, n_test: int, cap: int | None) -> list[int]:
    """The batch sizes `Network.accuracy` runs on train and test sets of these sizes (EVAL_CHUNK, and the
    last partial chunk of each), the largest first."""
    sizes: set[int] = set()
    for n in (n_train, n_test):
        n = n if cap is None else min(int(cap), n)
        if n > 0:
            sizes.add(min(EVAL_CHUNK, n))
            if n % EVAL_CHUNK:
                sizes.add(n % EVAL_CHUNK)
    return sorted(sizes, reverse=True)


def evaluation_bytes(
    model: dict[str, Any], input_shape: tuple[int, ...], item: int, chunks: list[int]
) -> int:
    """The buffers of the evaluation passes at each of these batch sizes, and one pass's temporaries."""
    kept, transient = pass_bytes(model, input_shape, item, train=False)
    return sum(chunks) * kept + max(chunks, default=0) * transient


def estimate(parts: dict[str, int]) -> MemoryEstimate:
    """The estimate from its parts: the runtime added, then the safety factor (about 1.5x the peak)."""
    parts = {"runtime": BASE_BYTES, **parts}
    return MemoryEstimate(total_bytes=int(sum(parts.values()) * SAFETY_FACTOR), parts=parts)
