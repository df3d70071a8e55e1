"""engine/kinds/: one module per job kind; what each runs, estimates and stores as result columns."""

from __future__ import annotations

from typing import Any

import pytest

from engine import kinds
from engine.jobs import run_job
from engine.kinds import backprop_vs_numerical, gemm, gradcheck, parity, train
from engine.kinds.base import BASE_BYTES, SAFETY_FACTOR, pass_bytes
from engine.kinds.train import TrainingLoop, window_plan
from engine.spec import KINDS, JobError, resolve_spec

QUICK = {"warmup": 1, "window": 2, "min_repeats": 2, "max_repeats": 3, "target_cv": 0.5}

# Computed by the engine before its kinds were split into modules (same seeds, float64): the split must
# reproduce them to within a few ulp. Not to the last bit: the BLAS's kernels differ between CPU models
# (an AVX512 and an AVX2 OpenBLAS kernel sum a product in different orders), and so do the last digits.
ULP_REL = 1e-13
SPIRAL_SPEC: dict[str, Any] = {
    "dataset": "spiral",
    "synthetic_samples": 90,
    "model": {"name": "mlp", "layers": [2, 12, 12, 3], "batchnorm": True, "dropout": 0.1},
    "optimizer": {"name": "adam", "lr": 0.01},
    "steps": 12,
    "batch_size": 10,
    "dtype": "float64",
    "seed": 4,
    "timing": QUICK,
    "loss_samples": 12,
    "target_accuracy": 0.99,
}
SPIRAL_LOSSES = [
    1.5249098758986859, 1.491418957359635, 1.4733459239496618, 1.5303604387987961, 1.3419996205993467,
    1.4774493070192611, 1.5733026981256981, 1.6392738678169425, 1.39522753696725, 1.2690204786697996,
    1.1622300166916948, 0.8273938906529492,
]  # fmt: skip
CONVNET_SPEC: dict[str, Any] = {
    "model": {"name": "simple_convnet", "layers": [784, 8, 10]},
    "dataset": "synthetic",
    "synthetic_samples": 40,
    "steps": 3,
    "batch_size": 4,
    "dtype": "float64",
    "seed": 2,
    "timing": QUICK,
    "loss_samples": 3,
}
CONVNET_LOSSES = [2.595165656197594, 8.11086162503714, 2.304999449764704]


class Silent:
    """A reporter that says nothing and never stops."""

    def report(self, fraction: float, message: str, force: bool = False) -> None:
        pass

    def check_stop(self, where: str) -> None:
        pass


def test_every_kind_of_the_vocabulary_has_one_module_in_order() -> None:
    assert tuple(kinds.KINDS_BY_NAME) == KINDS
    modules = (train, gradcheck, backprop_vs_numerical, gemm, parity)
    assert [module.KIND.name for module in modules] == list(KINDS)
    assert all(module.__name__ == f"engine.kinds.{module.KIND.name}" for module in modules)
    with pytest.raises(JobError, match="unknown job kind 'fit'; accepted: train, gradcheck"):
        kinds.kind_of("fit")


def test_training_reproduces_the_losses_and_accuracies_of_the_engine_before_the_split() -> None:
    metrics = run_job(SPIRAL_SPEC)["metrics"]
    assert [step for step, _ in metrics["loss_curve"]] == list(range(1, len(SPIRAL_LOSSES) + 1))
    assert [loss for _, loss in metrics["loss_curve"]] == pytest.approx(SPIRAL_LOSSES, rel=ULP_REL, abs=0)
    # Evaluation runs BatchNorm on its running statistics, which follow PyTorch's convention since the
    # split (running variance from 1, unbiased updates): before, this net evaluated at 0.347 / 0.167.
    assert (metrics["train_accuracy"], metrics["test_accuracy"]) == (0.5, 0.3333333333333333)
    assert (metrics["steps_to_target"], metrics["target_checks"]) == (None, 2)


def test_the_convnet_reproduces_its_losses_from_before_the_split() -> None:
    metrics = run_job(CONVNET_SPEC)["metrics"]
    assert [step for step, _ in metrics["loss_curve"]] == list(range(1, len(CONVNET_LOSSES) + 1))
    assert [loss for _, loss in metrics["loss_curve"]] == pytest.approx(CONVNET_LOSSES, rel=ULP_REL, abs=0)
    assert (metrics["train_accuracy"], metrics["test_accuracy"]) == (0.09375, 0.125)


def test_the_window_plan_fits_a_short_job_into_one_timed_window() -> None:
    assert window_plan(100, 5, 10) == (5, 10)
    assert window_plan(8, 5, 10) == (4, 4)
    assert window_plan(1, 5, 10) == (0, 1)


def test_training_is_planned_as_warm_up_chunks_then_timed_windows_then_the_rest() -> None:
    spec = resolve_spec({**SPIRAL_SPEC, "steps": 27, "timing": {**QUICK, "warmup": 13, "window": 5}})
    loop = TrainingLoop(spec, Silent())
    planned = []
    for chunk, timed in loop.chunks():
        planned.append((chunk, timed))
        loop.done += chunk

    # Warm-up in window-sized pieces (5, 5, 3), then full windows (timed), then the short rest (untimed).
    assert planned == [(5, False), (5, False), (3, False), (5, True), (5, True), (4, False)]


def test_a_diverging_chunk_reports_its_first_bad_step_and_records_none_of_its_losses() -> None:
    loop = TrainingLoop(resolve_spec(SPIRAL_SPEC), Silent())
    loop.record_losses([1.5, 1.25], first_step=1)
    with pytest.raises(train.JobDiverged, match="diverged at step 12") as diverged:
        loop.record_losses([1.0, 2.0, float("nan"), float("inf")], first_step=10)
    assert diverged.value.step == 12
    assert loop.loss_curve == [[1, 1.5], [2, 1.25]]


def _spiral(samples: int) -> dict[str, Any]:
    return resolve_spec({**SPIRAL_SPEC, "synthetic_samples": samples})


def test_the_spiral_set_is_estimated_at_the_size_the_engine_makes() -> None:
    small, huge = train.estimate_memory(_spiral(90)), train.estimate_memory(_spiral(1_000_000))

    assert small.parts["dataset"] == 90 * (2 * 8 + 8)
    assert huge.parts["dataset"] == 999_999 * (2 * 8 + 8)  # 333,333 points per arm, as _make_spiral draws
    # Accuracy runs in chunks of 1,000 and the last partial chunk of each set: 72 + 18 points, against
    # 1,000 and 999 (train 800,000, test 199,999); the chunks' temporaries once, at the largest.
    kept, transient = pass_bytes(resolve_spec(SPIRAL_SPEC)["model"], (2,), 8, train=False)
    assert small.parts["evaluation"] == 90 * kept + 72 * transient
    assert huge.parts["evaluation"] == 1999 * kept + 1000 * transient
    assert huge.total_bytes > small.total_bytes


def test_an_estimate_is_its_parts_plus_the_runtime_times_the_safety_factor() -> None:
    estimate = gemm.estimate_memory(
        resolve_spec({"kind": "gemm", "gemm_sizes": [64, 512], "dtype": "float64"})
    )
    assert estimate.parts == {"runtime": BASE_BYTES, "matrices": 3 * 512 * 512 * 8}
    assert estimate.total_bytes == int((BASE_BYTES + 3 * 512 * 512 * 8) * SAFETY_FACTOR)


def test_kinds_that_draw_random_inputs_count_no_data_set() -> None:
    check = gradcheck.estimate_memory(resolve_spec({"kind": "gradcheck", "dtype": "float64"}))
    bvn = backprop_vs_numerical.estimate_memory(resolve_spec({"kind": "backprop_vs_numerical"}))

    assert "dataset" not in check.parts and "dataset" not in bvn.parts
    # The checked two_layer_net 784-50-10 in float64: parameters, gradients and the numerical gradient.
    assert check.parts["parameters"] == 39_760 * 8 * 3
    assert bvn.parts["networks"] == 4 * (16 * 32 + 32 + 32 * 4 + 4) * 4


def test_gemm_stores_its_peak_and_no_model_while_the_others_store_their_model() -> None:
    spec = resolve_spec({"kind": "gemm"})
    assert gemm.KIND.result_columns(spec, {"peak_flops_per_s": 2.5e9}) == {
        "model_name": None,
        "dataset": None,
        "batch_size": None,
        "peak_flops_per_s": 2.5e9,
    }
    for kind in (train.KIND, gradcheck.KIND, backprop_vs_numerical.KIND):
        assert kind.result_columns(resolve_spec({"kind": kind.name}), {"peak_flops_per_s": 1.0}) == {
            "model_name": "two_layer_net",
            "dataset": "mnist5k",
            "batch_size": 100,
            "peak_flops_per_s": None,
        }


def test_the_train_progress_message_reads_back_as_step_steps_and_loss() -> None:
    assert train.progress_message(120, 300, 0.41834) == "step 120/300, loss 0.4183"
    assert train.parse_progress(train.progress_message(120, 300, 0.41834)) == (120, 300, 0.4183)
    assert train.parse_progress("evaluating") is None
    assert train.parse_progress("step 3/9, loss nan") is not None  # a diverged loss still reads (as NaN)
