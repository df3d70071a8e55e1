"""JobSpec, the service's boundary, says what the engine's vocabulary says; moving it kept every fact.

The hashes below were computed on the code before the vocabulary moved into `engine/spec.py` and the
kinds into `engine/kinds/`: stored results still compare with new ones. The estimates were recomputed
when they became bounds of measured peaks (`tests/engine/test_memory_estimate.py`): they pin the parts.
"""

from __future__ import annotations

from typing import Any, get_args

import pytest
from pydantic import ValidationError

from engine import spec as engine_spec
from services.jobs import spec as job_spec
from services.jobs.models import Job
from services.jobs.resources import estimate_job_memory
from services.jobs.spec import JobSpec
from services.jobs.suites import smoke_suite, standard_suite
from services.results.service import build_result

STANDARD_HASHES = {
    "gemm calibration": "3f71bd21e8465f5c",
    "textbook net on mnist5k": "654291fee75057e8",
    "large MLP on synthetic data": "37de7020dff26984",
    "simple_convnet on mnist5k": "2a9970e740c429ee",
    "gradient check": "1dcdd2109e694621",
    "backprop vs numerical": "1ce19286d99ea16f",
}
SMOKE_HASHES = {
    "gemm calibration": "af77fbfe68ce1385",
    "textbook net": "732c5d9761d98d3a",
    "MLP on synthetic data": "f3b65da4d9153fa3",
    "simple_convnet": "e38ee50645c309dd",
    "gradient check": "c9ac9887a13f6f8e",
    "backprop vs numerical": "e3bd53cdb596c1c3",
}
RUNTIME = 64 * 1024**2
KERNELS = 160 * 1024**2  # Numba's runtime, where a ReLU reaches engine.kernels' threshold
STANDARD_TRAIN_ESTIMATES = {
    "textbook net on mnist5k": {
        "activations": 59400, "batches": 15720000, "dataset": 15720000, "evaluation": 306000,
        "loading": 9533606, "parameters": 477120, "runtime": RUNTIME,
    },
    "large MLP on synthetic data": {
        "activations": 4755456, "batches": 4024320, "dataset": 6438912, "evaluation": 14754168,
        "loading": 16924672, "parameters": 22364280, "runtime": RUNTIME, "compiled_kernels": KERNELS,
    },
    "simple_convnet on mnist5k": {
        "activations": 28628400, "batches": 1572000, "dataset": 15720000, "evaluation": 80918000,
        "loading": 9533606, "parameters": 10413360, "runtime": RUNTIME, "compiled_kernels": KERNELS,
    },
}  # fmt: skip


@pytest.mark.parametrize(
    ("literal", "values"),
    [
        (job_spec.JobKind, engine_spec.KINDS),
        (job_spec.ModelName, engine_spec.MODEL_NAMES),
        (job_spec.DatasetName, engine_spec.DATASETS),
        (job_spec.Activation, engine_spec.ACTIVATIONS),
        (job_spec.Init, engine_spec.INITS),
        (job_spec.OptimizerName, engine_spec.OPTIMIZERS),
        (job_spec.DType, engine_spec.DTYPES),
    ],
)
def test_each_literal_of_the_job_spec_is_the_engines_tuple(literal: Any, values: tuple[str, ...]) -> None:
    assert get_args(literal) == values


# A GPU's calibration measures its own sizes (up to 8192), so its gemm spec is another one than a CPU's.
GPU_GEMM_CALIBRATION_HASH = "76b3924230d23d07"


@pytest.mark.parametrize("device", ["cpu", "gpu", "gpu:3"])
def test_the_standard_suite_keeps_every_spec_hash(device: str) -> None:
    expected = dict(STANDARD_HASHES)
    if device != "cpu":
        expected["gemm calibration"] = GPU_GEMM_CALIBRATION_HASH
    assert {name: spec.spec_hash() for name, spec in standard_suite(device)} == expected


@pytest.mark.parametrize(
    ("device", "sizes"),
    [("cpu", [256, 512, 1024]), ("gpu", [1024, 2048, 4096, 8192]), ("gpu:3", [1024, 2048, 4096, 8192])],
)
def test_a_gemm_job_without_sizes_measures_its_device_classs(device: str, sizes: list[int]) -> None:
    spec = JobSpec.model_validate({"kind": "gemm", "device": device})

    assert spec.gemm_sizes == sizes
    assert spec.engine_dict() == engine_spec.resolve_spec({"kind": "gemm", "device": device})
    assert [s.gemm_sizes for _, s in standard_suite(device) if s.kind == "gemm"] == [sizes]


def test_a_gemm_job_keeps_the_sizes_it_names_on_any_device() -> None:
    assert JobSpec.model_validate({"kind": "gemm", "device": "gpu", "gemm_sizes": [64, 128]}).gemm_sizes == [
        64,
        128,
    ]
    assert engine_spec.resolve_spec({"device": "gpu", "gemm_sizes": [64]})["gemm_sizes"] == [64]


def test_the_smoke_suite_keeps_every_spec_hash() -> None:
    assert {name: spec.spec_hash() for name, spec in smoke_suite("cpu")} == SMOKE_HASHES


def test_the_job_spec_defaults_are_the_engines_for_every_model() -> None:
    for name in engine_spec.MODEL_NAMES:
        doc = {"model": {"name": name}}
        assert JobSpec.model_validate(doc).engine_dict() == engine_spec.resolve_spec(doc)


def test_the_standard_training_jobs_keep_their_memory_estimates() -> None:
    estimates = {name: estimate_job_memory(spec).parts for name, spec in standard_suite("cpu")}
    assert {name: estimates[name] for name in STANDARD_TRAIN_ESTIMATES} == STANDARD_TRAIN_ESTIMATES


def test_a_misspelt_device_is_refused_with_the_grammars_words() -> None:
    with pytest.raises(ValidationError) as refused:
        JobSpec.model_validate({"device": "gpu:100"})
    assert refused.value.errors()[0]["msg"] == (
        "Value error, device must be cpu, gpu, gpu:N, cuda:N, rocm:N, oneapi:<SYCL filter>, "
        "xla:<platform>:<N> or opencl:<platform>:<device> (N = 0..99), "
        "got 'gpu:100'"
    )
    assert JobSpec.model_validate({"device": "gpu:7"}).device_class == "gpu"


@pytest.mark.parametrize(
    ("device", "queue_class"),
    [
        ("cpu", "cpu"),
        ("gpu", "gpu"),
        ("gpu:7", "gpu"),
        ("cuda:0", "cuda"),
        ("rocm:1", "rocm"),
        ("xla:cpu:0", "xla"),
    ],
)
def test_a_specs_queue_class_is_one_of_the_engines_device_classes(device: str, queue_class: str) -> None:
    assert JobSpec.model_validate({"device": device}).device_class == queue_class
    assert queue_class in engine_spec.DEVICE_CLASSES


def test_a_result_takes_its_columns_from_its_kind() -> None:
    def result_of(kind: str, metrics: dict[str, Any]) -> Any:
        spec = JobSpec.model_validate({"kind": kind})
        job = Job(id=f"job-{kind}", kind=kind, spec=spec.engine_dict(), spec_hash=spec.spec_hash())
        return build_result(job, {"metrics": metrics, "trials": [], "engine_time_s": 1.0})

    gemm = result_of("gemm", {"peak_flops_per_s": 3.5e10})
    trained = result_of("train", {"peak_flops_per_s": 3.5e10})

    assert (gemm.model_name, gemm.dataset, gemm.batch_size, gemm.peak_flops_per_s) == (
        None,
        None,
        None,
        3.5e10,
    )
    assert (trained.model_name, trained.dataset, trained.batch_size) == ("two_layer_net", "mnist5k", 100)
    assert trained.peak_flops_per_s is None
