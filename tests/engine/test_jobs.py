"""Job kinds: result documents, reproducibility, cancellation, divergence, and the measured figures."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

import engine.backend
import engine.jobs
import engine.kinds.base
import engine.optimizers
import engine.spec
from engine.datasets import load_dataset
from engine.jobs import JobCancelled, JobDiverged, JobError, run_job

FAST_TIMING = {"warmup": 1, "window": 5, "min_repeats": 3, "max_repeats": 5, "target_cv": 0.5}


def _train(**fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": "train", "steps": 60, "batch_size": 50, "timing": FAST_TIMING, **fields}
    return run_job(spec)


@pytest.fixture(scope="module")
def train_result() -> dict[str, Any]:
    return _train(target_accuracy=0.5, loss_samples=10, steps=150)


def test_train_result_has_the_documented_keys(train_result: dict[str, Any]) -> None:
    for key in ("kind", "spec", "metrics", "statistics", "trials", "timing", "fingerprint", "engine_time_s"):
        assert key in train_result
    assert train_result["kind"] == "train"
    assert set(train_result["metrics"]["samples_per_s"]) == {"median", "iqr", "ci95", "mean", "cv", "n"}
    json.dumps(train_result, allow_nan=False)  # plain, strict JSON


def test_train_runs_exactly_the_asked_steps(train_result: dict[str, Any]) -> None:
    curve = train_result["metrics"]["loss_curve"]
    assert curve[0][0] == 1 and curve[-1][0] == 150
    assert 10 <= len(curve) <= 12  # about loss_samples points


def test_train_trials_are_the_window_throughputs(train_result: dict[str, Any]) -> None:
    timing, metrics = train_result["timing"], train_result["metrics"]
    assert len(train_result["trials"]) == timing["windows"] == metrics["samples_per_s"]["n"]
    assert 3 <= timing["windows"] <= 5 and timing["window_steps"] == 5
    lo, hi = metrics["samples_per_s"]["ci95"]
    assert lo <= metrics["samples_per_s"]["median"] <= hi
    assert metrics["flops_per_s"] == pytest.approx(
        metrics["flops_per_step"] * metrics["samples_per_s"]["median"] / 50
    )


def test_train_counts_the_textbook_nets_matmul_flops(train_result: dict[str, Any]) -> None:
    # forward 2*50*784*50 + 2*50*50*10, weight grads the same, input grad of layer 2 only: 2*50*10*50
    assert (
        train_result["metrics"]["flops_per_step"]
        == 2 * (2 * 50 * 784 * 50 + 2 * 50 * 50 * 10) + 2 * 50 * 10 * 50
    )


def test_train_learns_and_reports_time_to_target(train_result: dict[str, Any]) -> None:
    metrics = train_result["metrics"]
    assert metrics["loss_curve"][-1][1] < metrics["loss_curve"][0][1]
    assert metrics["test_accuracy"] > 0.5 and metrics["steps_to_target"] is not None
    assert 0 < metrics["time_to_target_s"] <= metrics["train_time_s"]
    assert metrics["peak_memory_source"] == "host_rss" and metrics["peak_memory_bytes"] > 10_000_000


def test_a_short_job_still_reports_one_timed_window() -> None:
    result = _train(steps=3, timing={**FAST_TIMING, "warmup": 5, "window": 10})
    assert result["timing"]["windows"] == 1 and result["metrics"]["loss_curve"][-1][0] == 3


def test_seeded_training_is_reproducible() -> None:
    a, b = _train(seed=7, steps=20), _train(seed=7, steps=20)
    c = _train(seed=8, steps=20)
    assert a["metrics"]["loss_curve"] == b["metrics"]["loss_curve"]
    assert a["metrics"]["loss_curve"] != c["metrics"]["loss_curve"]


def _synthetic_spec(seed: int = 0) -> dict[str, Any]:
    return engine.spec.resolve_spec(
        {
            "dataset": "synthetic",
            "synthetic_samples": 64,
            "seed": seed,
            "model": {"name": "mlp", "layers": [784, 8, 10]},
        }
    )


def test_the_next_job_reuses_the_last_data_set_read_only_with_the_same_numbers() -> None:
    first = engine.kinds.base.load_data(_synthetic_spec(), "float32")
    second = engine.kinds.base.load_data(_synthetic_spec(), "float32")
    fresh = load_dataset("synthetic", dtype="float32", input_shape=(784,), n_classes=10, samples=64, seed=0)

    assert second is first
    assert not any(a.flags.writeable for a in (first.x_train, first.t_train, first.x_test, first.t_test))
    np.testing.assert_array_equal(first.x_train, fresh.x_train)
    np.testing.assert_array_equal(first.t_test, fresh.t_test)
    with pytest.raises(ValueError, match="read-only"):
        first.x_train[0, 0] = 1.0


def test_a_job_with_other_arguments_gets_its_own_data_set_and_only_the_last_is_kept() -> None:
    seed0 = engine.kinds.base.load_data(_synthetic_spec(seed=0), "float32")
    seed1 = engine.kinds.base.load_data(_synthetic_spec(seed=1), "float32")
    as_float64 = engine.kinds.base.load_data(_synthetic_spec(seed=1), "float64")

    assert not np.array_equal(seed0.x_train, seed1.x_train)
    assert as_float64.x_train.dtype == np.float64 and as_float64 is not seed1
    assert engine.kinds.base.load_data(_synthetic_spec(seed=0), "float32") is not seed0


def test_a_data_set_over_the_cache_cap_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.kinds.base, "DATASET_CACHE_MAX_BYTES", 1000)
    first = engine.kinds.base.load_data(_synthetic_spec(seed=5), "float32")

    assert engine.kinds.base.load_data(_synthetic_spec(seed=5), "float32") is not first


def test_mlp_on_digits_reaches_095_test_accuracy() -> None:
    result = _train(
        model={"name": "mlp", "layers": [64, 50, 10]}, dataset="digits", steps=1000, batch_size=100, seed=0
    )
    assert result["metrics"]["test_accuracy"] >= 0.95


def test_nan_loss_raises_diverged_with_the_step() -> None:
    with pytest.raises(JobDiverged, match=r"^diverged at step 2$"):
        _train(optimizer={"name": "sgd", "lr": 1e30}, steps=20)


def test_should_stop_cancels_between_steps() -> None:
    with pytest.raises(JobCancelled, match="at step 1"):
        run_job({"kind": "train", "steps": 50}, should_stop=lambda: True)


def test_progress_is_rate_limited_and_runs_from_zero_to_one(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[float, str]] = []
    monkeypatch.setattr(engine.jobs, "PROGRESS_INTERVAL_S", 3600.0)  # nothing but the forced reports
    run_job({"kind": "train", "steps": 200, "batch_size": 10}, progress=lambda f, m: calls.append((f, m)))
    assert [f for f, _ in calls] == [0.0, 0.0, 1.0, 1.0]  # starting, loading, evaluating, done


def test_progress_is_reported_between_windows_never_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    monkeypatch.setattr(engine.jobs, "PROGRESS_INTERVAL_S", 0.0)  # every opportunity
    spec = {
        "kind": "train",
        "steps": 200,
        "batch_size": 10,
        "timing": {**FAST_TIMING, "warmup": 10, "window": 10},
    }
    run_job(spec, progress=lambda f, m: calls.append(f))
    assert len(calls) == 4 + 200 // 10 and calls == sorted(calls)  # one per 10-step chunk


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "sing"}, "unknown job kind 'sing'"),
        ({"kind": "train", "dataset": "mnist", "dataset_path": "/nonexistent"}, "is not a directory"),
        ({"kind": "train", "stepz": 3}, "unknown spec field"),
        ({"kind": "train", "model": {"name": "mlp", "layers": [100, 10]}}, "784 input features"),
    ],
)
def test_bad_specs_raise_job_error(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(JobError, match=message):
        run_job(spec)


def test_gradcheck_result_lists_every_parameter_under_threshold() -> None:
    result = run_job(
        {"kind": "gradcheck", "dtype": "float64", "model": {"name": "two_layer_net", "layers": [30, 10, 4]}}
    )
    metrics = result["metrics"]
    assert set(metrics["parameters"]) == {"W1", "b1", "W2", "b2"}
    for errors in metrics["parameters"].values():
        assert errors["max_rel"] <= 1e-7 and errors["max_abs"] < 1e-8
    assert metrics["max_relative_error"] == max(p["max_rel"] for p in metrics["parameters"].values())
    assert metrics["passed"] is True and metrics["threshold"] == 1e-7


def test_gradcheck_of_simple_convnet_uses_a_small_image() -> None:
    model = {"name": "simple_convnet", "layers": [784, 8, 10]}
    result = run_job({"kind": "gradcheck", "dtype": "float64", "model": model})
    assert result["metrics"]["input_shape"] == [1, 8, 8]
    assert result["metrics"]["max_relative_error"] <= 1e-7


def test_gradcheck_passes_for_a_batchnorm_mlp_in_float64() -> None:
    model = {"name": "mlp", "layers": [12, 8, 8, 4], "activation": "tanh", "batchnorm": True}
    result = run_job({"kind": "gradcheck", "dtype": "float64", "model": model})
    assert {"gamma1", "beta1", "gamma2", "beta2"} <= set(result["metrics"]["parameters"])
    assert result["metrics"]["passed"] is True


def test_gradcheck_in_float32_reports_errors_without_a_verdict() -> None:
    result = run_job(
        {"kind": "gradcheck", "dtype": "float32", "model": {"name": "mlp", "layers": [12, 8, 4]}}
    )
    assert result["metrics"]["threshold"] is None and result["metrics"]["passed"] is None
    assert result["metrics"]["max_relative_error"] < 1.0


def test_gradcheck_shrinks_a_large_model() -> None:
    model = {"name": "mlp", "layers": [784, 300, 100, 10], "activation": "tanh"}
    result = run_job({"kind": "gradcheck", "dtype": "float64", "model": model})
    assert result["metrics"]["n_parameters"] == 64 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10


def test_backprop_vs_numerical_ratio_grows_with_the_parameter_count() -> None:
    result = run_job({"kind": "backprop_vs_numerical", "bvn_widths": [2, 8, 32], "timing": FAST_TIMING})
    rows = result["metrics"]["sizes"]
    assert [row["parameters"] for row in rows] == [46, 172, 676]
    # Numerical differentiation costs two forward passes per parameter; backprop one forward + one backward.
    assert [row["numerical_forward_evaluations"] for row in rows] == [92, 344, 1352]
    assert all(row["backprop_forward_evaluations"] == row["backprop_backward_passes"] == 1 for row in rows)
    assert all(row["numerical_backward_passes"] == 0 for row in rows)
    # The cost ratio in forward evaluations grows with the parameter count, exactly; the measured time
    # ratio grows with it too (14.7x more parameters; only its direction is asserted, times are noisy).
    evaluation_ratios = [row["numerical_forward_evaluations"] / 2 for row in rows]
    assert evaluation_ratios == sorted(evaluation_ratios) and evaluation_ratios[0] < evaluation_ratios[-1]
    assert rows[-1]["time_ratio"] > rows[0]["time_ratio"]
    assert all(row["relative_difference"] < 0.05 for row in rows)  # the same gradient, to float32 precision


def test_gemm_reports_the_rate_per_size_and_the_peak() -> None:
    result = run_job({"kind": "gemm", "gemm_sizes": [32, 64], "timing": FAST_TIMING})
    metrics = result["metrics"]
    assert [row["n"] for row in metrics["sizes"]] == [32, 64]
    assert metrics["peak_flops_per_s"] == max(row["flops_per_s"]["median"] for row in metrics["sizes"])
    assert set(result["trials"]) == {"32", "64"} and all(rate > 0 for rate in result["trials"]["64"])


@pytest.mark.gpu
def test_train_on_a_gpu_reports_the_cupy_pool_and_starts_like_the_cpu(gpu: Any) -> None:
    spec = {"kind": "train", "steps": 30, "batch_size": 50, "timing": FAST_TIMING, "seed": 4}
    on_gpu = run_job({**spec, "device": gpu.name})
    on_cpu = run_job(spec)
    assert on_gpu["metrics"]["peak_memory_source"] == "cupy_pool" and "gpu" in on_gpu["fingerprint"]
    # Same seed, same weights and minibatches: the first loss agrees to float32 rounding.
    assert on_gpu["metrics"]["loss_curve"][0][1] == pytest.approx(
        on_cpu["metrics"]["loss_curve"][0][1], rel=1e-5
    )


@pytest.mark.gpu
def test_a_gpu_jobs_peak_memory_is_its_own_not_what_the_pool_kept_from_earlier_work(gpu: Any) -> None:
    spec = {
        "kind": "train",
        "device": gpu.name,
        "dataset": "spiral",
        "synthetic_samples": 300,
        "model": {"name": "mlp", "layers": [2, 32, 3]},
        "steps": 20,
        "batch_size": 30,
        "timing": FAST_TIMING,
    }
    alone = run_job(spec)["metrics"]["peak_gpu_pool_bytes"]
    earlier = gpu.xp.ones(256 * 1024**2 // 4, dtype=np.float32)  # 256 MiB that the pool keeps once freed
    del earlier
    after = run_job(spec)["metrics"]["peak_gpu_pool_bytes"]

    # Kilobytes of data and weights: no cached block, and no cuRAND state of a generator the job never
    # draws from (about 12 MiB on an H200).
    assert 0 < alone < 8 * 1024**2
    assert after == pytest.approx(alone, rel=0.05)


@pytest.mark.gpu
def test_a_gpu_network_with_dropout_draws_its_masks_on_the_gpu(gpu: Any) -> None:
    from engine.layers import Dropout
    from engine.networks import mlp

    net = mlp([20, 16, 3], dropout=0.5, device=gpu, seed=1)
    unseeded = Dropout(0.5)  # no generator given: one of the input's array module
    x = gpu.xp.ones((8, 20), dtype=np.float32)
    net.train_step(x, gpu.xp.zeros(8, dtype=np.int64), engine.optimizers.SGD(0.1))
    out = unseeded.forward(x)

    assert engine.backend.get_array_module(net.layers["Dropout1"].mask) is gpu.xp
    assert engine.backend.get_array_module(out, unseeded.mask) is gpu.xp


@pytest.mark.gpu
def test_gemm_on_a_gpu_measures_up_to_8192_and_peaks_above_1024(gpu: Any) -> None:
    result = run_job({"kind": "gemm", "device": gpu.name, "timing": FAST_TIMING})
    metrics = result["metrics"]

    assert result["spec"]["gemm_sizes"] == [1024, 2048, 4096, 8192]
    # At 1024 a product takes microseconds and the launch shows; the device's rate needs larger ones.
    assert metrics["peak_size"] >= 2048
    rates = {row["n"]: row["flops_per_s"]["median"] for row in metrics["sizes"]}
    assert rates[8192] > rates[1024]


@pytest.mark.gpu
def test_gemm_and_backprop_vs_numerical_run_on_a_gpu(gpu: Any) -> None:
    gemm = run_job({"kind": "gemm", "device": gpu.name, "gemm_sizes": [256, 1024], "timing": FAST_TIMING})
    assert gemm["metrics"]["peak_flops_per_s"] > 0
    bvn = run_job(
        {"kind": "backprop_vs_numerical", "device": gpu.name, "bvn_widths": [2, 8], "timing": FAST_TIMING}
    )
    assert [row["numerical_forward_evaluations"] for row in bvn["metrics"]["sizes"]] == [92, 344]
