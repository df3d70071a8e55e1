"""What every job kind shares: its errors, the reporter it is handed, its device, data and network, the
timing helpers, and the arithmetic of the memory estimate.

A kind is one module `engine/kinds/<kind>.py` that defines `KIND = JobKind(...)`: how to run it, how much
memory it needs (from the same network builder and data set sizes the run uses), and which of its metrics
become a stored result's columns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.backend import Device, DeviceError, Stopwatch, resolve_device, synchronize
from engine.datasets import Dataset, DatasetError, dataset_size, load_dataset
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
OPTIMIZER_STATE_COPIES = {"sgd": 0, "momentum": 1, "nesterov": 1, "adagrad": 1, "rmsprop": 1, "adam": 2}
SAFETY_FACTOR = 1.5
BASE_BYTES = 64 * 1024**2  # the interpreter, NumPy and the engine's own code, whatever the job
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


def device_of(spec: dict[str, Any]) -> Device:
    """The spec's device, or JobError naming what is available."""
    try:
        return resolve_device(spec["device"])
    except DeviceError as exc:
        raise JobError(str(exc)) from None


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


def data_size(spec: dict[str, Any]) -> tuple[int, tuple[int, ...]]:
    """(samples, per-sample input shape as the model reads it) of the spec's data set, without loading it."""
    input_shape, n_classes = model_input(spec)
    samples, features = dataset_size(
        spec["dataset"], samples=int(spec["synthetic_samples"]), n_classes=n_classes, input_shape=input_shape
    )
    if spec["model"]["name"] == "simple_convnet":
        return samples, input_shape or image_shape((features,)) or CONVNET_SYNTHETIC_IMAGE
    return samples, (features,)


def dataset_bytes(samples: int, input_shape: tuple[int, ...], item: int) -> int:
    """Train and test arrays of a data set held in memory: features plus an int64 label per sample."""
    return samples * (math.prod(input_shape) * item + LABEL_BYTES)


def network_bytes(
    model: dict[str, Any], input_shape: tuple[int, ...], item: int, batch: int, state_copies: int
) -> dict[str, int]:
    """Parameters (with gradients and `state_copies` more) and one batch's activations of the model.

    Dense: Affine keeps its input; activation, batchnorm and dropout each keep an array of the width; the
    backward pass holds one gradient of the width alive at a time, plus the softmax output. Convnet: the
    layers of `simple_convnet`'s fixed geometry, plus the im2col matrix of the input.
    """
    layers = [int(w) for w in model["layers"]]
    if model["name"] == "simple_convnet":
        channels, height, width = image_shape(input_shape) or CONVNET_SYNTHETIC_IMAGE
        conv_h, conv_w = height - CONVNET_FILTER_SIZE + 1, width - CONVNET_FILTER_SIZE + 1
        pooled = CONVNET_FILTERS * (conv_h // 2) * (conv_w // 2)
        hidden = layers[1] if len(layers) >= 3 else CONVNET_HIDDEN
        classes = layers[-1]
        filters = CONVNET_FILTERS * (channels * CONVNET_FILTER_SIZE**2 + 1)
        n_params = filters + pooled * hidden + hidden + hidden * classes + classes
        col = batch * conv_h * conv_w * channels * CONVNET_FILTER_SIZE**2
        per_sample = (
            channels * height * width + 3 * CONVNET_FILTERS * conv_h * conv_w + 2 * pooled + 3 * hidden
        ) + 3 * classes
        activations = (batch * per_sample + 2 * col) * item
    else:
        n_params = count_parameters(layers)
        extra = 1 + int(bool(model.get("batchnorm"))) * 3 + int(float(model.get("dropout") or 0) > 0)
        activations = batch * (layers[0] + sum(w * (2 + extra) for w in layers[1:])) * item
    return {"parameters": n_params * item * (2 + state_copies), "activations": activations}


def estimate(parts: dict[str, int]) -> MemoryEstimate:
    """The estimate from its parts: the runtime added, then the safety factor (about 1.5x the peak)."""
    parts = {"runtime": BASE_BYTES, **parts}
    return MemoryEstimate(total_bytes=int(sum(parts.values()) * SAFETY_FACTOR), parts=parts)
