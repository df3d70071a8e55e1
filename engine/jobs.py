"""Job kinds: each a function from a spec (a plain dict, `JobSpec.engine_dict()`) to a JSON-able result.

`run_job(spec, progress, should_stop)` dispatches on `spec["kind"]`:

- `train`: trains `steps` steps; times windows of steps after a warm-up (adaptive: until the CV of the
  window throughputs is under target or the repeat cap is hit); reports throughput statistics, a loss
  curve, accuracies, time to a target accuracy, peak memory and FLOP rates.
- `gradcheck`: backprop against central differences on a small version of the model.
- `backprop_vs_numerical`: what a full gradient costs by backprop and by numerical differentiation.
- `gemm`: the device's square matrix-multiply rate.

Every result is `{kind, spec, metrics, statistics, trials, timing, fingerprint, engine_time_s,
started_at, finished_at, schema_version}`; see the README's "Result schema".
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from engine.backend import (
    Device,
    DeviceError,
    Stopwatch,
    as_numpy,
    fingerprint,
    memory_probe,
    resolve_device,
    seed_everything,
    synchronize,
)
from engine.datasets import Dataset, DatasetError, load_dataset
from engine.gradients import gradient_check, numerical_gradient
from engine.networks import Network, build_network
from engine.optimizers import make_optimizer
from engine.stats import AdaptiveRepeats, headline, repeat_until_stable, summarize

SCHEMA_VERSION = 1
KINDS = ("train", "gradcheck", "backprop_vs_numerical", "gemm")
PROGRESS_INTERVAL_S = 0.2  # the progress callback is called at most this often (plus start and end)
STOP_CHECK_INTERVAL_S = 0.05  # should_stop() is asked at most this often (it may query a database)
GRADCHECK_SAMPLES = 3  # as the textbook
# Central-difference steps tried; each parameter reports the better (1e-5 when 1e-4 straddles a ReLU kink).
GRADCHECK_STEPS: dict[str, tuple[float, ...]] = {"float64": (1e-4, 1e-5), "float32": (1e-2, 1e-3)}
GRADCHECK_MAX_ELEMENTS = 1000  # elements checked per parameter (a seeded random subset of larger ones)
GRADCHECK_MAX_PARAMETERS = 50_000  # above this, gradcheck shrinks the hidden widths
GRADCHECK_CONV_INPUT = (1, 8, 8)  # simple_convnet on an 8x8 image: 5x5 conv -> 4x4 -> pool -> 2x2
# Pass/fail only in float64: float32 central differences are rounding-bound (relative errors of 1e-2..0.5).
GRADCHECK_THRESHOLDS: dict[str, float | None] = {"float64": 1e-7, "float32": None}
BVN_INPUT, BVN_CLASSES, BVN_SAMPLES = 16, 4, 8  # small enough that numerical differentiation stays feasible
MIN_TRIAL_S = 0.01  # tiny operations are repeated inside one trial until it lasts this long
WARMUP_S = 0.05  # untimed calls before a series of trials
# The last data set a job loaded is kept for the next job of this process (a worker runs the same set job
# after job; making or reading it cost more than a tiny job's 20 steps, issue 7 target 3). Only sets whose
# content follows from the arguments (no user path), and only up to this size.
DATASET_CACHE_MAX_BYTES = 32 * 2**20

# What `JobSpec().engine_dict()` gives (a test keeps them equal); the engine imports nothing of services.
DEFAULT_SPEC: dict[str, Any] = {
    "kind": "train",
    "device": "cpu",
    "model": {
        "name": "two_layer_net",
        "layers": [784, 50, 10],
        "activation": "relu",
        "init": "std",
        "weight_init_std": 0.01,
        "batchnorm": False,
        "dropout": 0.0,
    },
    "dataset": "mnist5k",
    "dataset_path": None,
    "synthetic_samples": 4096,
    "steps": 1000,
    "batch_size": 100,
    "optimizer": {
        "name": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "beta1": 0.9,
        "beta2": 0.999,
        "decay_rate": 0.99,
        "weight_decay": 0.0,
    },
    "dtype": "float32",
    "seed": 0,
    "target_accuracy": None,
    "loss_samples": 100,
    "eval_samples": None,
    "timing": {"warmup": 5, "window": 10, "min_repeats": 5, "max_repeats": 50, "target_cv": 0.05},
    "gemm_sizes": [256, 512, 1024],
    "bvn_widths": [2, 4, 8, 16, 32],
    "time_limit_s": None,
}

ProgressFn = Callable[[float, str], None]
StopFn = Callable[[], bool]


class JobError(ValueError):
    """The spec cannot be run as given (bad value, missing dataset file, unusable device)."""


class JobCancelled(RuntimeError):
    """`should_stop()` turned true; the job stopped between steps."""


class JobDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message is `diverged at step N`."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"diverged at step {step}")
        self.step = step
        self.loss = loss


# --- plumbing ---------------------------------------------------------------------------------------


class _Progress:
    """Rate-limited progress reports and cancellation checks."""

    def __init__(self, progress: ProgressFn | None, should_stop: StopFn | None) -> None:
        self._progress = progress
        self._should_stop = should_stop
        self._last_report = -math.inf
        self._last_check = -math.inf

    def report(self, fraction: float, message: str, force: bool = False) -> None:
        """Call the callback if `PROGRESS_INTERVAL_S` has passed since the last call (or `force`)."""
        if self._progress is None:
            return
        now = time.perf_counter()
        if force or now - self._last_report >= PROGRESS_INTERVAL_S:
            self._last_report = now
            self._progress(min(max(float(fraction), 0.0), 1.0), message)

    def check_stop(self, where: str) -> None:
        """Raise JobCancelled if `should_stop()` says so (asked at most every `STOP_CHECK_INTERVAL_S`)."""
        if self._should_stop is None:
            return
        now = time.perf_counter()
        if now - self._last_check < STOP_CHECK_INTERVAL_S:
            return
        self._last_check = now
        if self._should_stop():
            raise JobCancelled(f"cancelled {where}")


def _merge_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with every missing field (and nested field) taken from DEFAULT_SPEC."""
    merged: dict[str, Any] = {}
    for key, default in DEFAULT_SPEC.items():
        value = spec.get(key, default)
        if isinstance(default, dict) and isinstance(value, dict):
            value = {**default, **value}
        merged[key] = value
    model, given = merged["model"], spec.get("model") or {}
    # As JobSpec resolves them: the textbook's std-0.01 init only for two_layer_net, He for the others.
    if given.get("init") is None:
        model["init"] = "std" if model["name"] == "two_layer_net" else "he"
    if given.get("layers") is None and model["name"] == "simple_convnet":
        model["layers"] = [784, 100, 10]
    unknown = sorted(set(spec) - set(DEFAULT_SPEC))
    if unknown:
        raise JobError(f"unknown spec field(s) {', '.join(unknown)}; accepted: {', '.join(DEFAULT_SPEC)}")
    return merged


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays become Python numbers/lists, tuples lists, NaN/inf None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _device(spec: dict[str, Any]) -> Device:
    try:
        return resolve_device(spec["device"])
    except DeviceError as exc:
        raise JobError(str(exc)) from None


def run_job(
    spec: dict[str, Any],
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict[str, Any]:
    """Run one job and return its result document (JSON-serialisable).

    `spec` is `JobSpec.engine_dict()`; missing fields take the JobSpec defaults. `progress(fraction,
    message)` is called at most every 0.2 s; `should_stop()` is asked between steps (at most every
    0.05 s) and a true answer raises JobCancelled. Raises JobDiverged on a NaN/inf loss and JobError
    (a ValueError) on a spec that cannot run.
    """
    if not isinstance(spec, dict):
        raise JobError(f"spec must be a dict, got {type(spec).__name__}")
    kind = spec.get("kind", "train")
    runners: dict[str, Callable[[dict[str, Any], _Progress], dict[str, Any]]] = {
        "train": _run_train,
        "gradcheck": _run_gradcheck,
        "backprop_vs_numerical": _run_backprop_vs_numerical,
        "gemm": _run_gemm,
    }
    if kind not in runners:
        raise JobError(f"unknown job kind {kind!r}; accepted: {', '.join(KINDS)}")
    full = _merge_defaults(spec)
    device = _device(full)
    reporter = _Progress(progress, should_stop)
    started_at = _now()
    t0 = time.perf_counter()
    reporter.report(0.0, f"{kind}: starting", force=True)
    # A diverging run overflows; JobDiverged reports that, so NumPy's warnings would only be noise.
    with device.use(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        body = runners[kind](full, reporter)
        document = {
            "schema_version": SCHEMA_VERSION,
            "kind": kind,
            "spec": full,
            "metrics": body["metrics"],
            "statistics": body.get("statistics", {}),
            "trials": body.get("trials", []),
            "timing": body.get("timing", {}),
            "fingerprint": fingerprint(device),
            "engine_time_s": time.perf_counter() - t0,
            "started_at": started_at,
            "finished_at": _now(),
        }
    reporter.report(1.0, f"{kind}: done", force=True)
    jsonable: dict[str, Any] = to_jsonable(document)
    return jsonable


# --- data and model ---------------------------------------------------------------------------------


def _model_input(spec: dict[str, Any]) -> tuple[tuple[int, ...] | None, int]:
    """The per-sample input shape the model asks of the dataset (None: the dataset's own) and its classes."""
    model = spec["model"]
    layers = [int(w) for w in model["layers"]]
    if model["name"] == "simple_convnet":
        # The convnet takes images; the generated sets get a 28x28 single-channel image.
        shape = (1, 28, 28) if spec["dataset"] == "synthetic" else None
        return shape, layers[-1]
    return (layers[0],), layers[-1]


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


def _load(spec: dict[str, Any], dtype: str) -> Dataset:
    input_shape, n_classes = _model_input(spec)
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
        side = math.isqrt(data.input_shape[0])
        if side * side != data.input_shape[0]:
            raise JobError(f"simple_convnet needs image inputs; dataset {name} has shape {data.input_shape}")
        data = _reshape(data, (1, side, side))
    return data


def _reshape(data: Dataset, shape: tuple[int, ...]) -> Dataset:
    return Dataset(
        data.x_train.reshape((-1, *shape)),
        data.t_train,
        data.x_test.reshape((-1, *shape)),
        data.t_test,
        shape,
        data.n_classes,
        data.name,
    )


def _build(
    model: dict[str, Any], input_shape: tuple[int, ...], n_classes: int, dtype: str, device: Device, seed: int
) -> Network:
    try:
        return build_network(model, input_shape, n_classes, dtype, device, seed)
    except ValueError as exc:  # the builders refuse bad widths, activations and inits with a ValueError
        raise JobError(f"model: {exc}") from None


def _make_optimizer(spec: dict[str, Any]) -> Any:
    try:
        return make_optimizer(spec["optimizer"])
    except (ValueError, KeyError) as exc:
        raise JobError(f"optimizer: {exc}") from None


# --- train ------------------------------------------------------------------------------------------


def _loss_array(network: Network) -> Any:
    """The last batch's loss as a device scalar, without synchronising (`last_loss` would)."""
    return network.last_layer.loss


def _accuracy(network: Network, x: Any, t: Any, cap: int | None) -> float:
    n = len(x) if cap is None else min(cap, len(x))
    return float(network.accuracy(x[:n], t[:n]))


def _window_plan(steps: int, warmup: int, window: int) -> tuple[int, int]:
    """Warm-up and window lengths that fit into `steps` (a short job still gets one timed window)."""
    if steps >= warmup + window:
        return warmup, window
    warm = min(warmup, steps // 2)
    return warm, steps - warm


def _run_train(spec: dict[str, Any], reporter: _Progress) -> dict[str, Any]:
    device = _device(spec)
    dtype = spec["dtype"]
    seed = int(spec["seed"])
    steps, batch_size = int(spec["steps"]), int(spec["batch_size"])
    timing = spec["timing"]
    reporter.report(0.0, f"loading {spec['dataset']}", force=True)
    data = _load(spec, dtype)
    seed_everything(seed, device)
    network = _build(spec["model"], data.input_shape, data.n_classes, dtype, device, seed)
    optimizer = _make_optimizer(spec)
    xp = device.xp
    x_train, t_train = xp.asarray(data.x_train), xp.asarray(data.t_train)
    x_test, t_test = xp.asarray(data.x_test), xp.asarray(data.t_test)
    n_train = data.n_train
    batch_rng = np.random.default_rng(seed)  # minibatch indices drawn on the host: same on CPU and GPU

    warmup, window = _window_plan(steps, int(timing["warmup"]), int(timing["window"]))
    repeats = AdaptiveRepeats(
        int(timing["min_repeats"]), int(timing["max_repeats"]), float(timing["target_cv"])
    )
    step_times: list[float] = []
    loss_stride = max(1, steps // int(spec["loss_samples"]))
    loss_curve: list[list[float]] = []
    target = spec.get("target_accuracy")
    eval_cap = spec.get("eval_samples")
    eval_every = max(1, n_train // batch_size)  # once per epoch, as the textbook does
    next_eval = eval_every
    time_to_target: float | None = None
    steps_to_target: int | None = None
    target_checks = 0
    probe = memory_probe(device)
    peak: dict[str, int] = probe()
    train_time = 0.0  # seconds spent in training steps only (no evaluation, no bookkeeping)
    stopwatch = Stopwatch(device)
    done = 0

    def flush(losses: list[Any], first_step: int) -> None:
        """Move a chunk's losses to the host (one sync), check them, keep the sampled points."""
        values = as_numpy(xp.stack(losses)) if device.is_gpu else np.array([float(v) for v in losses])
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise JobDiverged(first_step + int(bad[0]), float(values[bad[0]]))
        for offset, value in enumerate(values):
            step = first_step + offset
            if step % loss_stride == 0 or step == 1 or step == steps:
                loss_curve.append([step, float(value)])

    while done < steps:
        in_warmup = done < warmup
        # Warm-up runs in window-sized pieces too, so no chunk's index array grows with the step count.
        chunk = min(warmup - done, window) if in_warmup else min(window, steps - done)
        timed = not in_warmup and chunk == window and not repeats.done
        indices = xp.asarray(batch_rng.integers(0, n_train, size=(chunk, batch_size)))
        losses: list[Any] = []
        synchronize(device)
        stopwatch.start()
        for i in range(chunk):
            reporter.check_stop(f"at step {done + i + 1}")
            batch = indices[i]
            network.train_step(x_train[batch], t_train[batch], optimizer)
            losses.append(_loss_array(network))
        seconds = stopwatch.stop()
        train_time += seconds
        if timed:
            repeats.add(chunk * batch_size / seconds)
            step_times.append(seconds / chunk)
        flush(losses, done + 1)
        done += chunk
        for key, value in probe().items():
            peak[key] = max(peak.get(key, 0), value)
        if target is not None and steps_to_target is None and (done >= next_eval or done == steps):
            next_eval = done + eval_every
            target_checks += 1
            if _accuracy(network, x_test, t_test, eval_cap) >= float(target):
                time_to_target, steps_to_target = train_time, done
        reporter.report(done / steps, f"step {done}/{steps}, loss {loss_curve[-1][1]:.4f}")

    reporter.report(1.0, "evaluating", force=True)
    train_accuracy = _accuracy(network, x_train, t_train, eval_cap)
    test_accuracy = _accuracy(network, x_test, t_test, eval_cap)
    throughput = summarize(repeats.trials)
    step_time = summarize(step_times)
    flops_per_step = int(network.flops_per_step(batch_size))
    median_rate = throughput["median"]
    metrics: dict[str, Any] = {
        "samples_per_s": headline(throughput),
        "step_time_s": headline(step_time),
        "train_accuracy": train_accuracy,
        "test_accuracy": test_accuracy,
        "final_loss": loss_curve[-1][1],
        "loss_curve": loss_curve,
        "steps": steps,
        "batch_size": batch_size,
        "train_time_s": train_time,
        "overall_samples_per_s": steps * batch_size / train_time if train_time > 0 else None,
        "target_accuracy": target,
        "time_to_target_s": time_to_target,
        "steps_to_target": steps_to_target,
        "target_checks": target_checks,
        "peak_memory_bytes": peak.get("gpu_pool_bytes", peak["host_rss_bytes"]),
        "peak_memory_source": "cupy_pool" if device.is_gpu else "host_rss",
        "peak_host_rss_bytes": peak["host_rss_bytes"],
        "flops_per_step": flops_per_step,
        "flops_per_s": flops_per_step * median_rate / batch_size if median_rate else None,
        "parameters": network.n_params,
        "train_samples": data.n_train,
        "test_samples": data.n_test,
        "eval_samples": eval_cap,
        "input_shape": list(data.input_shape),
        "n_classes": data.n_classes,
    }
    if device.is_gpu:
        metrics["peak_gpu_pool_bytes"] = peak.get("gpu_pool_bytes")
    return {
        "metrics": metrics,
        "statistics": {"samples_per_s": throughput, "step_time_s": step_time},
        "trials": list(repeats.trials),
        "timing": {
            "warmup_steps": warmup,
            "window_steps": window,
            "windows": len(repeats.trials),
            "stop_reason": repeats.stop_reason(),
            "target_cv": repeats.target_cv,
            "achieved_cv": throughput["cv"],
            "eval_every_steps": eval_every,
        },
    }


# --- gradcheck --------------------------------------------------------------------------------------


def _gradcheck_network(
    spec: dict[str, Any], dtype: str, device: Device
) -> tuple[Network, tuple[int, ...], int]:
    """A small network of the spec's model: the model as given if small, else narrower hidden layers."""
    model = dict(spec["model"])
    layers = [int(w) for w in model["layers"]]
    n_classes = layers[-1]
    if model["name"] == "simple_convnet":
        model["layers"] = [layers[0], min(layers[1], 32) if len(layers) >= 3 else 32, n_classes]
        shape: tuple[int, ...] = GRADCHECK_CONV_INPUT
    else:
        size = sum(a * b + b for a, b in itertools.pairwise(layers))
        if size > GRADCHECK_MAX_PARAMETERS:
            layers = [min(layers[0], 64), *(min(w, 16) for w in layers[1:-1]), n_classes]
        model["layers"] = layers
        shape = (layers[0],)
    return _build(model, shape, n_classes, dtype, device, int(spec["seed"])), shape, n_classes


def _run_gradcheck(spec: dict[str, Any], reporter: _Progress) -> dict[str, Any]:
    device = _device(spec)
    dtype = spec["dtype"]
    seed = int(spec["seed"])
    seed_everything(seed, device)
    network, shape, n_classes = _gradcheck_network(spec, dtype, device)
    rng = np.random.default_rng(seed)
    # Random inputs: the check is about the derivative, not the data; a few samples keep it cheap.
    x = device.xp.asarray(rng.random((GRADCHECK_SAMPLES, *shape)).astype(dtype))
    t = device.xp.asarray(rng.integers(0, n_classes, GRADCHECK_SAMPLES))
    t0 = time.perf_counter()
    checks = []
    steps = GRADCHECK_STEPS[dtype]
    for index, h in enumerate(steps):
        reporter.report(index / len(steps), f"gradcheck: {network.n_params} parameters, h={h:g}", force=True)
        reporter.check_stop("during the gradient check")
        checks.append(
            gradient_check(network, x, t, h, max_elements=GRADCHECK_MAX_ELEMENTS, seed=seed, richardson=True)
        )
    seconds = time.perf_counter() - t0
    threshold = GRADCHECK_THRESHOLDS[dtype]
    # A wrong backward is wrong at every step; the best step only drops the approximation's own error
    # (a large step may straddle a ReLU kink, a small one loses digits to rounding).
    parameters: dict[str, dict[str, Any]] = {}
    for name in checks[0]["parameters"]:
        best = min(checks, key=lambda check: check["parameters"][name]["max_rel"])
        errors = best["parameters"][name]
        passed = None if threshold is None else errors["max_rel"] <= threshold
        parameters[name] = {**errors, "h": best["h"], "passed": passed}
    max_rel = max((p["max_rel"] for p in parameters.values()), default=0.0)
    return {
        "metrics": {
            "max_relative_error": max_rel,
            "max_abs_error": max((p["max_abs"] for p in parameters.values()), default=0.0),
            "parameters": parameters,
            "threshold": threshold,
            "passed": None if threshold is None else max_rel <= threshold,
            "dtype": dtype,
            "method": "central differences, Richardson-extrapolated; per parameter the better of the steps",
            "steps_tried": list(steps),
            "floor": checks[0]["floor"],
            "network": repr(network),
            "n_parameters": network.n_params,
            "input_shape": list(shape),
            "samples": GRADCHECK_SAMPLES,
            "check_time_s": seconds,
        },
        "trials": [],
    }


# --- backprop vs numerical --------------------------------------------------------------------------


def _calibrated_trial(
    fn: Callable[[], Any], device: Device, reporter: _Progress, label: str
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


def _repeat(trial: Callable[[], float], timing: dict[str, Any]) -> tuple[list[float], str]:
    """The adaptive repeat loop with the spec's timing settings (one untimed warm-up trial)."""
    return repeat_until_stable(
        trial,
        warmup=1,
        min_repeats=int(timing["min_repeats"]),
        max_repeats=int(timing["max_repeats"]),
        target_cv=float(timing["target_cv"]),
    )


def _paired_trials(
    first: Callable[[], float], second: Callable[[], float], timing: dict[str, Any]
) -> tuple[list[float], list[float], list[float], str]:
    """Trials of `first` and `second` back to back, and their ratios second/first, until the ratios settle.

    Back to back, so a burst of load on a shared machine slows both sides of a ratio alike.
    """
    firsts: list[float] = []
    seconds: list[float] = []

    def pair() -> float:
        firsts.append(first())
        seconds.append(second())
        return seconds[-1] / firsts[-1]

    ratios, reason = _repeat(pair, timing)
    return firsts[1:], seconds[1:], ratios, reason  # [1:]: the untimed warm-up pair


def _count_passes(network: Network, fn: Callable[[], Any]) -> tuple[int, int]:
    """(forward passes, backward passes) that one call of `fn` makes through `network`, counted."""
    counts = [0, 0]
    forward, backward = network.forward, network.last_layer.backward

    def counted_forward(x: Any, train: bool = False) -> Any:
        counts[0] += 1
        return forward(x, train)

    def counted_backward(dout: float = 1.0) -> Any:
        counts[1] += 1
        return backward(dout)

    # Instance attributes shadow the methods for this one call; deleting them restores the originals.
    network.forward = counted_forward  # type: ignore[method-assign]
    network.last_layer.backward = counted_backward  # type: ignore[method-assign]
    try:
        fn()
    finally:
        del network.forward, network.last_layer.backward
    return counts[0], counts[1]


def _run_backprop_vs_numerical(spec: dict[str, Any], reporter: _Progress) -> dict[str, Any]:
    device = _device(spec)
    dtype = spec["dtype"]
    seed = int(spec["seed"])
    widths = [int(w) for w in spec["bvn_widths"]]
    model = spec["model"]
    rng = np.random.default_rng(seed)
    x = device.xp.asarray(rng.random((BVN_SAMPLES, BVN_INPUT)).astype(dtype))
    t = device.xp.asarray(rng.integers(0, BVN_CLASSES, BVN_SAMPLES))
    rows: list[dict[str, Any]] = []
    statistics: dict[str, Any] = {}
    trials: dict[str, list[float]] = {}
    reasons: dict[str, str] = {}
    for index, width in enumerate(sorted(widths)):
        reporter.report(index / len(widths), f"width {width}: timing", force=True)
        small = {**model, "name": "mlp", "layers": [BVN_INPUT, width, BVN_CLASSES], "dropout": 0.0}
        network = _build(small, (BVN_INPUT,), BVN_CLASSES, dtype, device, seed)

        def loss(_: Any, net: Network = network) -> float:
            return net.loss(x, t, train=True)

        def numerical(net: Network = network) -> dict[str, Any]:
            return {name: numerical_gradient(loss, p) for name, p in net.params.items()}

        def backprop(net: Network = network) -> dict[str, Any]:
            return net.gradient(x, t)

        backprop_passes = _count_passes(network, backprop)
        numerical_passes = _count_passes(network, numerical)
        numerical_grads = numerical()
        bp_trials, num_trials, ratios, reason = _paired_trials(
            _calibrated_trial(backprop, device, reporter, f"at width {width}")[0],
            _calibrated_trial(numerical, device, reporter, f"at width {width}")[0],
            spec["timing"],
        )
        backprop_grads = {name: as_numpy(g) for name, g in backprop().items()}
        a = np.concatenate([backprop_grads[name].ravel() for name in numerical_grads])
        b = np.concatenate([as_numpy(g).ravel() for g in numerical_grads.values()])
        # Whole-vector agreement ||a - b|| / (||a|| + ||b||): elements near a ReLU kink do not dominate.
        scale = float(np.linalg.norm(a) + np.linalg.norm(b))
        difference = float(np.linalg.norm(a - b)) / max(scale, 1e-30)
        bp, num, ratio = summarize(bp_trials), summarize(num_trials), summarize(ratios)
        statistics[f"width_{width}"] = {"backprop_s": bp, "numerical_s": num, "time_ratio": ratio}
        trials[f"width_{width}/backprop_s"] = bp_trials
        trials[f"width_{width}/numerical_s"] = num_trials
        trials[f"width_{width}/time_ratio"] = ratios
        reasons[f"width_{width}"] = reason
        rows.append(
            {
                "width": width,
                "layers": [BVN_INPUT, width, BVN_CLASSES],
                "parameters": network.n_params,
                "backprop_s": bp["median"],
                "numerical_s": num["median"],
                "time_ratio": ratio["median"],
                "time_ratio_ci95": ratio["ci95"],
                "backprop_forward_evaluations": backprop_passes[0],
                "backprop_backward_passes": backprop_passes[1],
                "numerical_forward_evaluations": numerical_passes[0],
                "numerical_backward_passes": numerical_passes[1],
                "evaluation_ratio": numerical_passes[0] / backprop_passes[0],
                "relative_difference": difference,
            }
        )
    return {
        "metrics": {
            "sizes": rows,
            "input_width": BVN_INPUT,
            "n_classes": BVN_CLASSES,
            "samples": BVN_SAMPLES,
            "ratio_grows_with_parameters": all(
                b["time_ratio"] > a["time_ratio"] for a, b in itertools.pairwise(rows)
            ),
        },
        "statistics": statistics,
        "trials": trials,
        "timing": {"stop_reasons": reasons},
    }


# --- gemm ---------------------------------------------------------------------------------------------


def _run_gemm(spec: dict[str, Any], reporter: _Progress) -> dict[str, Any]:
    device = _device(spec)
    dtype = spec["dtype"]
    xp = device.xp
    rng = np.random.default_rng(int(spec["seed"]))
    sizes = [int(n) for n in spec["gemm_sizes"]]
    rows: list[dict[str, Any]] = []
    statistics: dict[str, Any] = {}
    trials: dict[str, list[float]] = {}
    reasons: dict[str, str] = {}
    for index, n in enumerate(sizes):
        reporter.report(index / len(sizes), f"gemm {n}x{n}", force=True)
        a = xp.asarray(rng.random((n, n)).astype(dtype))
        b = xp.asarray(rng.random((n, n)).astype(dtype))
        c = xp.empty((n, n), dtype=dtype)

        def matmul(a: Any = a, b: Any = b, c: Any = c) -> None:
            xp.matmul(a, b, out=c)

        trial, inner = _calibrated_trial(matmul, device, reporter, f"at gemm {n}")
        seconds, reason = _repeat(trial, spec["timing"])
        rates = [2.0 * n**3 / s for s in seconds]
        summary = summarize(rates)
        statistics[str(n)] = {"flops_per_s": summary, "seconds": summarize(seconds)}
        trials[str(n)] = rates
        reasons[str(n)] = reason
        rows.append(
            {
                "n": n,
                "flops": 2 * n**3,
                "flops_per_s": headline(summary),
                "seconds_per_matmul": float(np.median(seconds)),
                "matmuls_per_trial": inner,
            }
        )
        del a, b, c
    best = max(rows, key=lambda row: row["flops_per_s"]["median"])
    return {
        "metrics": {
            "peak_flops_per_s": best["flops_per_s"]["median"],
            "peak_size": best["n"],
            "dtype": dtype,
            "sizes": rows,
        },
        "statistics": statistics,
        "trials": trials,
        "timing": {"stop_reasons": reasons},
    }
