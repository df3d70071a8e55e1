"""Named suites of benchmark jobs, submitted together by `POST /api/v1/suites` and `bpbench up`.

`standard` covers what the seed is about: the device's measured GEMM peak (the yardstick for efficiency), the
textbook's 784-50-10 net on mnist5k, a large MLP on synthetic data (where a GPU pulls ahead), the textbook's
simple_convnet, a gradient check of backprop against numerical differentiation, and the cost of both methods
as the network grows. Sizes are chosen so the whole suite finishes within 3 minutes on a 2-core CPU.

`runnable_suite` leaves out what a device is known not to run (the float64 gradient check where the device
has no float64) and says why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from services.devices.service import float64_refusal_of_registered
from services.jobs.spec import JobSpec

# A quick but stable timing recipe: the suite measures throughput, it does not hunt for the last percent.
_SUITE_TIMING: dict[str, Any] = {
    "warmup": 2,
    "window": 5,
    "min_repeats": 3,
    "max_repeats": 8,
    "target_cv": 0.1,
}


def standard_suite(device: str) -> list[tuple[str, JobSpec]]:
    """The standard suite for one device class or device (`cpu`, `gpu`, `gpu:N`), as (name, spec) pairs."""
    documents: list[tuple[str, dict[str, Any]]] = [
        (
            "gemm calibration",
            # The peak is the yardstick of every efficiency figure: timed more carefully than the rest. Its
            # sizes are the device class's (`engine.spec.GEMM_SIZES`): up to 8192 on a GPU.
            {
                "kind": "gemm",
                "timing": {"warmup": 2, "min_repeats": 5, "max_repeats": 20, "target_cv": 0.05},
            },
        ),
        (
            "textbook net on mnist5k",
            {
                "kind": "train",
                "model": {"name": "two_layer_net", "layers": [784, 50, 10]},
                "dataset": "mnist5k",
                "steps": 1000,
                "batch_size": 100,
                "optimizer": {"name": "sgd", "lr": 0.1},
                # A step of this small net takes about a millisecond: longer windows keep timer noise out.
                "timing": {
                    "warmup": 10,
                    "window": 50,
                    "min_repeats": 5,
                    "max_repeats": 15,
                    "target_cv": 0.05,
                },
            },
        ),
        (
            "large MLP on synthetic data",
            {
                "kind": "train",
                "model": {"name": "mlp", "layers": [784, 1024, 1024, 10]},
                "dataset": "synthetic",
                "synthetic_samples": 2048,
                "steps": 60,
                "batch_size": 256,
                "optimizer": {"name": "sgd", "lr": 0.05},
                "eval_samples": 1024,
                "timing": _SUITE_TIMING,
            },
        ),
        (
            "simple_convnet on mnist5k",
            {
                "kind": "train",
                "model": {"name": "simple_convnet"},
                "dataset": "mnist5k",
                "steps": 40,
                "batch_size": 100,
                "optimizer": {"name": "adam", "lr": 0.001},
                "eval_samples": 500,
                "timing": _SUITE_TIMING,
            },
        ),
        (
            "gradient check",
            {
                # float64, as the textbook's check: float32 rounding swamps the finite differences.
                "kind": "gradcheck",
                "model": {"name": "two_layer_net", "layers": [784, 10, 10]},
                "dtype": "float64",
            },
        ),
        (
            "backprop vs numerical",
            {"kind": "backprop_vs_numerical", "bvn_widths": [4, 16, 64, 256], "timing": _SUITE_TIMING},
        ),
    ]
    return [(name, JobSpec.model_validate({**doc, "device": device})) for name, doc in documents]


def smoke_suite(device: str) -> list[tuple[str, JobSpec]]:
    """The same six benchmarks at toy sizes (seconds in all): for tests and for checking a new worker."""
    quick: dict[str, Any] = {"warmup": 1, "window": 2, "min_repeats": 2, "max_repeats": 3, "target_cv": 0.5}
    documents: list[tuple[str, dict[str, Any]]] = [
        ("gemm calibration", {"kind": "gemm", "gemm_sizes": [64], "timing": quick}),
        (
            "textbook net",
            {"kind": "train", "dataset": "spiral", "synthetic_samples": 64, "model": {"layers": [2, 8, 3]}},
        ),
        (
            "MLP on synthetic data",
            {"kind": "train", "dataset": "synthetic", "synthetic_samples": 64, "model": {"name": "mlp"}},
        ),
        (
            "simple_convnet",
            {"kind": "train", "model": {"name": "simple_convnet"}, "steps": 4, "batch_size": 4},
        ),
        ("gradient check", {"kind": "gradcheck", "model": {"layers": [784, 4, 10]}, "dtype": "float64"}),
        ("backprop vs numerical", {"kind": "backprop_vs_numerical", "bvn_widths": [2, 4], "timing": quick}),
    ]
    train = {"steps": 10, "batch_size": 8, "eval_samples": 64, "timing": quick}
    specs = []
    for name, doc in documents:
        if doc["kind"] == "train":
            doc = {**train, **doc}
        specs.append((name, JobSpec.model_validate({**doc, "device": device})))
    return specs


SUITES: dict[str, Callable[[str], list[tuple[str, JobSpec]]]] = {
    "standard": standard_suite,
    "smoke": smoke_suite,
}


def runnable_suite(
    session: Session, name: str, spec_device: str, target: str | None
) -> tuple[list[tuple[str, JobSpec]], list[str]]:
    """The suite's entries for one place (a spelling, or a registered device `target` spelled so), and why
    each entry left out was: a float64 entry where every registered device that would take it has no
    float64 (submitted, it could only fail on the worker)."""
    kept, left_out = [], []
    for item, spec in SUITES[name](spec_device):
        refusal = float64_refusal_of_registered(
            session, spec.device, spec.device_class, spec.dtype, target=target
        )
        if refusal is None:
            kept.append((item, spec))
        else:
            left_out.append(f"{item} on {target or spec_device}: {refusal}")
    return kept, left_out
