"""How much memory a job needs: a pure function of its `JobSpec`, used twice.

At submission the estimate is checked against the server's cap (`max_job_memory_bytes`): a job that could
never run anywhere is refused with a 422. On the worker, right after the claim, it is checked against the
memory the device has free now: a job that cannot fit fails at once with a clear error instead of dying of
an out-of-memory kill half-way (which the reconciler would then retry, uselessly, `max_attempts` times).

The estimate is deliberately a little generous (about 1.5x what the engine holds at its peak), and counts:
- parameters, their gradients and the optimizer's state (SGD none, Momentum/Nesterov/AdaGrad/RMSprop one
  copy, Adam two);
- activations kept for the backward pass, for one batch: for every layer its input, its output and the
  gradient flowing back (convolution: the im2col matrix too), and those of one accuracy chunk (1,000);
- the dataset held in memory (train and test arrays), and for `gemm` the three largest matrices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from services.jobs.spec import JobSpec, count_parameters

DTYPE_BYTES = {"float32": 4, "float64": 8}
OPTIMIZER_STATE_COPIES = {"sgd": 0, "momentum": 1, "nesterov": 1, "adagrad": 1, "rmsprop": 1, "adam": 2}
DATASET_SAMPLES = {"mnist5k": 5_000, "mnist": 70_000, "digits": 1_797, "spiral": 300}
SAFETY_FACTOR = 1.5
# The interpreter, NumPy and the engine's own code, whatever the job.
BASE_BYTES = 64 * 1024**2
# simple_convnet's fixed shape (engine/networks.py): 30 filters of 5x5, no padding, stride 1, 2x2 pooling.
CONV_FILTERS, CONV_SIZE = 30, 5
EVAL_CHUNK = 1000  # Network.accuracy's batch


class JobTooLarge(ValueError):
    """The job's estimated memory exceeds what is allowed or available; the message gives both figures."""


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


def _input_size(spec: JobSpec) -> int:
    layers = spec.model.resolved_layers()
    return 784 if spec.model.name == "simple_convnet" else layers[0]


def _dataset_bytes(spec: JobSpec, item: int) -> int:
    samples = spec.synthetic_samples if spec.dataset == "synthetic" else DATASET_SAMPLES[spec.dataset]
    width = 2 if spec.dataset == "spiral" else _input_size(spec)
    return samples * (width * item + 8)  # features + an int64 label


def _network_bytes(spec: JobSpec, item: int) -> dict[str, int]:
    """Parameters (+ gradients + optimizer state), one batch's activations, and one evaluation chunk's."""
    parts = _batch_bytes(spec, item, spec.batch_size)
    # Accuracy is measured in forward passes of up to EVAL_CHUNK samples, which keep their activations too.
    samples = spec.synthetic_samples if spec.dataset == "synthetic" else DATASET_SAMPLES[spec.dataset]
    parts["evaluation"] = _batch_bytes(spec, item, min(EVAL_CHUNK, samples))["activations"]
    return parts


def _batch_bytes(spec: JobSpec, item: int, batch: int) -> dict[str, int]:
    layers = spec.model.resolved_layers()
    if spec.model.name == "simple_convnet":
        side = math.isqrt(784)
        conv_side = side - CONV_SIZE + 1
        pooled = CONV_FILTERS * (conv_side // 2) ** 2
        hidden, classes = layers[-2], layers[-1]
        n_params = CONV_FILTERS * (CONV_SIZE**2 + 1) + pooled * hidden + hidden + hidden * classes + classes
        col = batch * conv_side**2 * CONV_SIZE**2  # im2col of the input
        per_sample = side * side + 3 * CONV_FILTERS * conv_side**2 + 2 * pooled + 3 * hidden + 3 * classes
        activations = (batch * per_sample + 2 * col) * item
    else:
        n_params = count_parameters(layers)
        # Affine keeps its input; activation, batchnorm and dropout each keep an array of the width; the
        # backward pass holds one gradient of the width alive at a time, plus the softmax output.
        extra = 1 + int(spec.model.batchnorm) * 3 + int(spec.model.dropout > 0)
        activations = batch * (layers[0] + sum(w * (2 + extra) for w in layers[1:])) * item
    copies = 2 + OPTIMIZER_STATE_COPIES[spec.optimizer.name]  # parameters, gradients, optimizer state
    return {"parameters": n_params * item * copies, "activations": activations}


def estimate_job_memory(spec: JobSpec) -> MemoryEstimate:
    """The estimated peak memory of running `spec` (see the module docstring)."""
    item = DTYPE_BYTES[spec.dtype]
    parts: dict[str, int] = {"runtime": BASE_BYTES}
    if spec.kind == "gemm":
        n = max(spec.gemm_sizes)
        parts["matrices"] = 3 * n * n * item
    elif spec.kind == "train":
        parts.update(_network_bytes(spec, item))
        parts["dataset"] = _dataset_bytes(spec, item)
    elif spec.kind == "gradcheck":
        # A small float64 network on a few samples; the numerical gradient copies each parameter array.
        parts.update(_batch_bytes(spec, 8, min(spec.batch_size, 16)))
        parts["dataset"] = _dataset_bytes(spec, 8)
    else:  # backprop_vs_numerical: small nets of the listed widths, in float64
        widest = max(spec.bvn_widths)
        parts["networks"] = 4 * count_parameters([_input_size(spec), widest, 10]) * 8
        parts["dataset"] = _dataset_bytes(spec, 8)
    total = int(sum(parts.values()) * SAFETY_FACTOR)
    return MemoryEstimate(total_bytes=total, parts=parts)


def check_memory_cap(spec: JobSpec, cap_bytes: int) -> MemoryEstimate:
    """The estimate, or `JobTooLarge` if it exceeds the server's cap (at submission)."""
    estimate = estimate_job_memory(spec)
    if estimate.total_bytes > cap_bytes:
        raise JobTooLarge(
            f"the job needs an estimated {estimate.describe()}; this server accepts at most {mib(cap_bytes)} "
            "per job (reduce batch_size, the layer widths, gemm_sizes or synthetic_samples)"
        )
    return estimate


def check_fits(spec: JobSpec, free_bytes: int, where: str) -> MemoryEstimate:
    """The estimate, or `JobTooLarge` if it exceeds `free_bytes` free on `where` (on the worker)."""
    estimate = estimate_job_memory(spec)
    if estimate.total_bytes > free_bytes:
        raise JobTooLarge(
            f"the job needs an estimated {estimate.describe()} but {where} has {mib(free_bytes)} free "
            "(reduce batch_size, the layer widths, gemm_sizes or synthetic_samples, or use a bigger device)"
        )
    return estimate
