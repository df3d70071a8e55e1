"""`train`: trains `steps` steps and times windows of steps after a warm-up.

Adaptive: windows are timed until the CV of their throughputs is under target or the repeat cap is hit.
Reports throughput statistics, a loss curve, accuracies, time to a target accuracy, peak memory and FLOP
rates. `TrainingLoop` keeps the parts apart: chunk planning, timing, loss recording and evaluation.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from engine.backend import (
    Stopwatch,
    as_numpy,
    get_array_module,
    memory_probe,
    seed_everything,
    synchronize,
    take_rows,
)
from engine.backends import backend_of
from engine.kinds.base import (
    DTYPE_BYTES,
    JobDiverged,
    JobKind,
    MemoryEstimate,
    Reporter,
    build,
    data_loading_bytes,
    data_split,
    dataset_bytes,
    device_of,
    estimate,
    evaluation_bytes,
    evaluation_chunks,
    load_data,
    network_bytes,
    optimizer_copies,
    optimizer_of,
    relu_values,
)
from engine.spec import parse_device
from engine.stats import AdaptiveRepeats, headline, summarize
from engine.telemetry import TelemetrySource, WindowReading


def window_plan(steps: int, warmup: int, window: int) -> tuple[int, int]:
    """Warm-up and window lengths that fit into `steps` (a short job still gets one timed window)."""
    if steps >= warmup + window:
        return warmup, window
    warm = min(warmup, steps // 2)
    return warm, steps - warm


# The progress message of a running train job, and its reading (a worker keeps the points as the job's
# running loss curve): one format, owned here.
PROGRESS_PATTERN = re.compile(r"^step (\d+)/(\d+), loss (\S+)$")


def progress_message(step: int, steps: int, loss: float) -> str:
    """`step 120/300, loss 0.4183`: how far a train job is and its latest sampled loss."""
    return f"step {step}/{steps}, loss {loss:.4f}"


def parse_progress(message: str) -> tuple[int, int, float] | None:
    """(step, steps, loss) of a `progress_message`, or None for any other message."""
    match = PROGRESS_PATTERN.match(message)
    if match is None:
        return None
    try:
        return int(match.group(1)), int(match.group(2)), float(match.group(3))
    except ValueError:
        return None


class TrainingLoop:
    """One training run: the network, its data and optimizer, and what is recorded while it trains."""

    def __init__(self, spec: dict[str, Any], reporter: Reporter) -> None:
        self.reporter = reporter
        self.device = device = device_of(spec)
        # First: the GPU's peak counts from here, so it holds this job's arrays and nothing of earlier work.
        self.probe = memory_probe(device)
        dtype, seed = spec["dtype"], int(spec["seed"])
        self.steps, self.batch_size = int(spec["steps"]), int(spec["batch_size"])
        timing = spec["timing"]
        reporter.report(0.0, f"loading {spec['dataset']}", force=True)
        self.data = data = load_data(spec, dtype)
        seed_everything(seed, device)
        self.network = build(spec["model"], data.input_shape, data.n_classes, dtype, device, seed)
        self.optimizer = optimizer_of(spec)
        # One training step: the network's own (NumPy, CuPy), or the whole step compiled (JAX).
        self.step = self.network.stepper(self.optimizer)
        xp = device.xp
        self.x_train, self.t_train = xp.asarray(data.x_train), xp.asarray(data.t_train)
        self.x_test, self.t_test = xp.asarray(data.x_test), xp.asarray(data.t_test)
        self.batch_rng = np.random.default_rng(
            seed
        )  # minibatch indices drawn on the host: same on CPU and GPU
        self.warmup, self.window = window_plan(self.steps, int(timing["warmup"]), int(timing["window"]))
        # A chunk's batches are gathered into these before its timed steps (no chunk exceeds a window).
        self.x_chunk = xp.empty(
            (self.window, self.batch_size, *self.x_train.shape[1:]), dtype=self.x_train.dtype
        )
        self.t_chunk = xp.empty(
            (self.window, self.batch_size, *self.t_train.shape[1:]), dtype=self.t_train.dtype
        )
        self.gather_time = 0.0  # seconds spent gathering batches, outside the timed steps
        self.repeats = AdaptiveRepeats(
            int(timing["min_repeats"]), int(timing["max_repeats"]), float(timing["target_cv"])
        )
        self.step_times: list[float] = []
        self.loss_stride = max(1, self.steps // int(spec["loss_samples"]))
        self.loss_curve: list[list[float]] = []
        self.target = spec.get("target_accuracy")
        self.eval_cap = spec.get("eval_samples")
        self.eval_every = max(1, data.n_train // self.batch_size)  # once per epoch, as the textbook does
        self.next_eval = self.eval_every
        self.time_to_target: float | None = None
        self.steps_to_target: int | None = None
        self.target_checks = 0
        self.peak: dict[str, int] = self.probe()
        self.train_time = 0.0  # seconds spent in training steps only (no evaluation, no bookkeeping)
        self.stopwatch = Stopwatch(device)
        meter = device.energy_meter()  # a GPU's own meter (CuPy's or JAX's GPU); None: the host's RAPL
        self.telemetry = TelemetrySource(meter[0], vendor=meter[1]) if meter else TelemetrySource()
        self.readings: list[WindowReading] = []  # one per timed window, clean or marked
        self.done = 0

    # --- the parts of a chunk ----------------------------------------------------------------------

    def chunks(self) -> Iterator[tuple[int, bool]]:
        """(steps, timed?) of each chunk in turn; asked lazily, so `timed` sees the windows so far."""
        while self.done < self.steps:
            in_warmup = self.done < self.warmup
            # Warm-up runs in window-sized pieces too, so no chunk's index array grows with the step count.
            chunk = (
                min(self.warmup - self.done, self.window)
                if in_warmup
                else min(self.window, self.steps - self.done)
            )
            yield chunk, not in_warmup and chunk == self.window and not self.repeats.done

    def gather(self, chunk: int) -> tuple[Any, Any]:
        """The chunk's minibatches: indices drawn on the host for all its steps at once (the same on CPU
        and GPU), rows gathered in one pass into the loop's buffers; the seconds are kept apart."""
        started = time.perf_counter()
        indices = self.device.xp.asarray(
            self.batch_rng.integers(0, self.data.n_train, size=(chunk, self.batch_size))
        )
        x = take_rows(self.x_train, indices, out=self.x_chunk[:chunk])
        t = take_rows(self.t_train, indices, out=self.t_chunk[:chunk])
        self.gather_time += time.perf_counter() - started
        return x, t

    def train_chunk(self, chunk: int, timed: bool = False) -> tuple[float, list[Any]]:
        """Train `chunk` steps; the seconds they took and their losses (device scalars, not synchronised).

        Only the steps are timed: the batches are gathered before, the losses computed after (each step
        keeps what its loss needs). A timed chunk is also read by the telemetry: counters before the
        first step and after the last (the device synchronised at both ends), nothing in between."""
        x, t = self.gather(chunk)
        step, done = self.step, self.done
        check_stop = self.reporter.check_stop
        pending: list[Callable[[], Any]] = []
        synchronize(self.device)
        if timed:
            self.telemetry.begin()
        self.stopwatch.start()
        for i, (x_i, t_i) in enumerate(
            zip(x, t, strict=True)
        ):  # JAX: one split of the chunk, not one per step
            check_stop(f"at step {done + i + 1}")
            pending.append(step(x_i, t_i))  # the loss is computed after the window (or by the compiled step)
        seconds = self.stopwatch.stop()
        if timed:
            self.readings.append(self.telemetry.end())
        return seconds, [loss() for loss in pending]

    def record_timing(self, chunk: int, seconds: float, timed: bool) -> None:
        """Count the chunk's time; a timed window also becomes a throughput trial, marked if the telemetry
        saw bad conditions during it (then the repeat loop keeps it apart and takes another)."""
        self.train_time += seconds
        if timed:
            marks = self.readings[-1].marks if self.readings else ()
            self.repeats.add(chunk * self.batch_size / seconds, marks)
            if not marks:
                self.step_times.append(seconds / chunk)

    def record_losses(self, losses: list[Any], first_step: int) -> None:
        """Move a chunk's losses to the host (one sync), check them, keep the sampled points."""
        xp = get_array_module(*losses)  # a GPU's or JAX's scalars: one transfer
        values = np.array([float(v) for v in losses]) if xp is np else as_numpy(xp.stack(losses))
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise JobDiverged(first_step + int(bad[0]), float(values[bad[0]]))
        for offset, value in enumerate(values):
            step = first_step + offset
            if step % self.loss_stride == 0 or step == 1 or step == self.steps:
                self.loss_curve.append([step, float(value)])

    def record_memory(self) -> None:
        for key, value in self.probe().items():
            self.peak[key] = max(self.peak.get(key, 0), value)

    def accuracy(self, x: Any, t: Any) -> float:
        n = len(x) if self.eval_cap is None else min(self.eval_cap, len(x))
        return float(self.network.accuracy(x[:n], t[:n]))

    def evaluate_target(self) -> None:
        """Once an epoch (and at the end) until reached: has the test accuracy reached the target?"""
        if self.target is None or self.steps_to_target is not None:
            return
        if self.done >= self.next_eval or self.done == self.steps:
            self.next_eval = self.done + self.eval_every
            self.target_checks += 1
            if self.accuracy(self.x_test, self.t_test) >= float(self.target):
                self.time_to_target, self.steps_to_target = self.train_time, self.done

    # --- the run -----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Train every step, then evaluate; the result body."""
        for chunk, timed in self.chunks():
            seconds, losses = self.train_chunk(chunk, timed)
            self.record_timing(chunk, seconds, timed)
            self.record_losses(losses, self.done + 1)
            self.done += chunk
            self.record_memory()
            self.evaluate_target()
            self.reporter.report(
                self.done / self.steps, progress_message(self.done, self.steps, self.loss_curve[-1][1])
            )
        self.reporter.report(1.0, "evaluating", force=True)
        return self.body()

    def body(self) -> dict[str, Any]:
        """Metrics, statistics, trials and timing of the finished run."""
        steps, batch_size, network, data = self.steps, self.batch_size, self.network, self.data
        train_accuracy = self.accuracy(self.x_train, self.t_train)
        test_accuracy = self.accuracy(self.x_test, self.t_test)
        throughput = summarize(self.repeats.trials)
        step_time = summarize(self.step_times or [1.0 / t * batch_size for t in self.repeats.trials])
        flops_per_step = int(network.flops_per_step(batch_size))
        median_rate = throughput["median"]
        train_time, peak = self.train_time, self.peak
        metrics: dict[str, Any] = {
            "samples_per_s": headline(throughput),
            "step_time_s": headline(step_time),
            "train_accuracy": train_accuracy,
            "test_accuracy": test_accuracy,
            "final_loss": self.loss_curve[-1][1],
            "loss_curve": self.loss_curve,
            "steps": steps,
            "batch_size": batch_size,
            "train_time_s": train_time,
            "overall_samples_per_s": steps * batch_size / train_time if train_time > 0 else None,
            "target_accuracy": self.target,
            "time_to_target_s": self.time_to_target,
            "steps_to_target": self.steps_to_target,
            "target_checks": self.target_checks,
            "peak_memory_bytes": peak.get("gpu_pool_bytes", peak["host_rss_bytes"]),
            "peak_memory_source": "cupy_pool" if self.device.is_gpu else "host_rss",
            "peak_host_rss_bytes": peak["host_rss_bytes"],
            "flops_per_step": flops_per_step,
            "flops_per_s": flops_per_step * median_rate / batch_size if median_rate else None,
            "parameters": network.n_params,
            "train_samples": data.n_train,
            "test_samples": data.n_test,
            "eval_samples": self.eval_cap,
            "input_shape": list(data.input_shape),
            "n_classes": data.n_classes,
        }
        if self.device.is_gpu:
            metrics["peak_gpu_pool_bytes"] = peak.get("gpu_pool_bytes")
        metrics["energy"] = self.energy(median_rate)
        metrics["conditions"] = self.conditions()
        return {
            "metrics": metrics,
            "statistics": {"samples_per_s": throughput, "step_time_s": step_time},
            "trials": list(self.repeats.trials),
            "timing": {
                "warmup_steps": self.warmup,
                "window_steps": self.window,
                "windows": len(self.repeats.trials),
                "stop_reason": self.repeats.stop_reason(),
                "target_cv": self.repeats.target_cv,
                "achieved_cv": throughput["cv"],
                "eval_every_steps": self.eval_every,
                "gather_time_s": self.gather_time,
                "dropped_windows": len(self.repeats.dropped),
                "dropped_reasons": self.repeats.dropped_reasons(),
                "all_windows_marked": self.repeats.all_marked,
            },
        }

    def _figure_readings(self) -> list[WindowReading]:
        """The readings of the windows the figures are made of (the clean ones, unless all were marked)."""
        if self.repeats.all_marked:
            return self.readings
        return [reading for reading in self.readings if not reading.marks]

    def energy(self, median_rate: float | None) -> dict[str, Any]:
        """Mean power, energy per sample and samples per joule over the figures' windows, where a sensor
        exists; else `null`s and the reason there is none."""
        readings = [r for r in self._figure_readings() if r.energy_j is not None and r.seconds > 0]
        telemetry = self.telemetry
        if not readings:
            return {
                "source": telemetry.energy_source,
                "reason": telemetry.energy_reason or "no timed window was read",
                "mean_power_w": None,
                "energy_per_sample_j": None,
                "samples_per_j": None,
                "windows": 0,
            }
        joules = sum(float(r.energy_j or 0.0) for r in readings)
        seconds = sum(r.seconds for r in readings)
        power = joules / seconds
        samples_per_j = median_rate / power if median_rate and power > 0 else None
        return {
            "source": telemetry.energy_source,
            "reason": None,
            "mean_power_w": power,
            "energy_per_sample_j": 1.0 / samples_per_j if samples_per_j else None,
            "samples_per_j": samples_per_j,
            "windows": len(readings),
        }

    def conditions(self) -> dict[str, Any]:
        """The host's load and the CPU clock around the timed windows, and the windows set aside."""
        loads = [value for r in self.readings for value in (r.load_before, r.load_after)]
        clocks = [r.clock_mhz for r in self.readings if r.clock_mhz is not None]
        return {
            "load_min": min(loads) if loads else None,
            "load_max": max(loads) if loads else None,
            "cpu_count": os.cpu_count(),
            "clock_mhz": sum(clocks) / len(clocks) if clocks else None,
            "nominal_clock_mhz": self.telemetry.nominal_clock_mhz,
            "dropped_windows": len(self.repeats.dropped),
            "dropped_reasons": self.repeats.dropped_reasons(),
            "all_windows_marked": self.repeats.all_marked,
            "gpu": self.readings[-1].gpu if self.readings and self.readings[-1].gpu else None,
        }


def run(spec: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Run a `train` job; the result body."""
    return TrainingLoop(spec, reporter).run()


def estimate_memory(spec: dict[str, Any]) -> MemoryEstimate:
    """Parameters (+ gradients + the optimizer's arrays), one batch's activations, the evaluation passes'
    (at each batch size `accuracy` uses), the data set and what loading it takes, and a window's gathered
    batches."""
    item = DTYPE_BYTES[spec["dtype"]]
    model, batch = spec["model"], int(spec["batch_size"])
    n_train, n_test, input_shape = data_split(spec)
    parts = network_bytes(model, input_shape, item, batch, optimizer_copies(spec["optimizer"]))
    chunks = evaluation_chunks(n_train, n_test, spec.get("eval_samples"))
    parts["evaluation"] = evaluation_bytes(model, input_shape, item, chunks)
    parts["dataset"] = dataset_bytes(n_train + n_test, input_shape, item)
    parts.update(data_loading_bytes(spec, item))
    # A window's batches are gathered at once into buffers of the loop (features and labels).
    window = min(int(spec["timing"]["window"]), int(spec["steps"]))
    parts["batches"] = dataset_bytes(window * batch, input_shape, item)
    # JAX adds its runtime and, on a CPU, its copies of the arrays; NumPy, Numba's where its kernels run
    device = parse_device(spec["device"])
    relu = relu_values(model, input_shape) * max(batch, *chunks)
    parts.update(backend_of(device).host_memory_parts(device, parts, relu_values=relu))
    return estimate(parts)


KIND = JobKind(
    name="train",
    summary="trains the model and times windows of steps: throughput, loss curve, accuracy",
    run=run,
    estimate_memory=estimate_memory,
)
