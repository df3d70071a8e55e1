"""Every job kind's memory estimate bounds the peak of a real run, and not absurdly loosely; the data sets,
weights and matrices are made without a float64 copy of themselves, and are the same numbers as before.

The grid (`harness.memory_peak.memory_grid`) covers every kind, model, data set and dtype. Each job runs in
a fresh interpreter (`python -m harness.memory_peak`), which reports its own peak resident set (VmHWM)
after the job: the interpreter, NumPy and the engine included, as the estimate counts them (its `runtime`
part; `libraries` for scikit-learn). Two jobs at a time; the grid takes 30-80 s on a loaded 2-core machine.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.backend import draw_as, resolve_device
from engine.datasets import dataset_split, load_dataset, loading_bytes
from engine.kinds import estimate_memory
from engine.kinds.base import BASE_BYTES, MemoryEstimate, dataset_bytes, mib
from engine.networks import build_network
from engine.spec import DATASETS, DTYPES, KINDS, MODEL_NAMES, resolve_spec
from harness.memory_peak import IDX_TEST, IDX_TRAIN, PeakMemory, measure_peak, memory_grid, write_idx_set
from services.jobs.resources import estimate_job_memory
from services.jobs.spec import JobSpec

GRID = memory_grid(Path("/idx"))  # the case names (the directory only enters the specs)
LOOSE_FACTOR = 3  # an estimate above 3x the peak plus the runtime part would refuse jobs that fit


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[MemoryEstimate, PeakMemory]]:
    """Each case of the grid: its estimate and the peak of a real run of it."""
    grid = memory_grid(write_idx_set(tmp_path_factory.mktemp("idx")))
    with ThreadPoolExecutor(max_workers=2) as pool:
        peaks = dict(zip(grid, pool.map(measure_peak, grid.values()), strict=True))
    return {name: (estimate_memory(resolve_spec(spec)), peaks[name]) for name, spec in grid.items()}


def test_the_grid_covers_every_kind_model_data_set_and_dtype() -> None:
    specs = [resolve_spec(spec) for spec in GRID.values()]
    trained = [spec for spec in specs if spec["kind"] == "train"]
    assert {spec["kind"] for spec in specs} == set(KINDS)
    assert {spec["model"]["name"] for spec in trained} == set(MODEL_NAMES)
    assert {spec["dataset"] for spec in trained} == set(DATASETS)
    for kind in KINDS:
        assert {spec["dtype"] for spec in specs if spec["kind"] == kind} == set(DTYPES), kind


@pytest.mark.parametrize("case", list(GRID))
def test_the_estimate_bounds_the_peak_of_a_real_run(
    case: str, measured: dict[str, tuple[MemoryEstimate, PeakMemory]]
) -> None:
    estimate, peak = measured[case]
    assert estimate.total_bytes >= peak.peak_bytes, (
        f"{case}: estimated {estimate.describe()}, peaked at {mib(peak.peak_bytes)} "
        f"(baseline {mib(peak.baseline_bytes)})"
    )


@pytest.mark.parametrize("case", list(GRID))
def test_the_estimate_is_at_most_three_times_the_peak_plus_the_runtime(
    case: str, measured: dict[str, tuple[MemoryEstimate, PeakMemory]]
) -> None:
    estimate, peak = measured[case]
    assert estimate.total_bytes <= LOOSE_FACTOR * peak.peak_bytes + BASE_BYTES, (
        f"{case}: estimated {estimate.describe()}, peaked at only {mib(peak.peak_bytes)}"
    )


# --- making the data without a float64 copy ------------------------------------------------------------


def _old_spiral(samples: int, classes: int, seed: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The spiral as it was made before: the whole set in float64, shuffled, mapped, then cast."""
    per_class = samples // classes
    rng = np.random.default_rng(seed)
    x = np.empty((per_class * classes, 2))
    t = np.repeat(np.arange(classes, dtype=np.int64), per_class)
    radius = np.linspace(0.0, 1.0, per_class)
    for k in range(classes):
        theta = np.linspace(k * 4.0, (k + 1) * 4.0, per_class) + rng.standard_normal(per_class) * 0.2
        x[k * per_class : (k + 1) * per_class] = np.c_[radius * np.sin(theta), radius * np.cos(theta)]
    order = rng.permutation(x.shape[0])
    return ((x[order] + 1.0) / 2.0).astype(dtype), t[order]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("samples", "classes"), [(3_000, 3), (1_001, 2), (77, 5)])
def test_the_spiral_is_the_same_numbers_as_when_it_was_made_in_float64(
    dtype: str, samples: int, classes: int
) -> None:
    data = load_dataset("spiral", dtype=dtype, n_classes=classes, samples=samples, seed=7)
    x, t = _old_spiral(samples, classes, 7, dtype)
    assert np.array_equal(np.concatenate([data.x_train, data.x_test]), x)
    assert np.array_equal(np.concatenate([data.t_train, data.t_test]), t)
    assert data.x_train.dtype == np.dtype(dtype) and data.t_train.dtype == np.int64


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_synthetic_set_is_the_same_numbers_as_before(dtype: str) -> None:
    data = load_dataset("synthetic", dtype=dtype, input_shape=(3000,), n_classes=7, samples=2_000, seed=3)
    rng = np.random.default_rng(3)
    x = rng.random((2_000, 3000), dtype=np.dtype(dtype).type)
    teacher = rng.standard_normal((3000, 7)).astype(dtype)  # as it was drawn: a float64 copy, then cast
    rows = (16 * 2**20) // (3000 * x.itemsize)  # labelled in chunks of 16 MiB, as before
    t = np.concatenate(
        [np.argmax((x[i : i + rows] - x.dtype.type(0.5)) @ teacher, axis=1) for i in range(0, 2_000, rows)]
    )
    assert np.array_equal(np.concatenate([data.x_train, data.x_test]), x)
    assert np.array_equal(np.concatenate([data.t_train, data.t_test]), t)


@pytest.mark.parametrize("dtype", DTYPES)
def test_drawing_block_by_block_gives_the_numbers_of_one_float64_draw(dtype: str) -> None:
    # 3,000 rows of 700 float64s span several 8 MiB blocks, the last one partial.
    def draw(rng: np.random.Generator) -> Callable[[tuple[int, ...]], np.ndarray]:
        return lambda shape: 0.05 * rng.standard_normal(shape)

    blocks = draw_as(draw(np.random.default_rng(3)), (3_000, 700), dtype)
    whole = draw(np.random.default_rng(3))((3_000, 700)).astype(dtype)
    assert blocks.dtype == np.dtype(dtype) and np.array_equal(blocks, whole)


def test_initial_weights_are_the_numbers_of_one_float64_draw_per_layer() -> None:
    network = build_network(
        {"name": "mlp", "layers": [784, 2048, 10], "init": "he"},
        (784,),
        10,
        "float32",
        resolve_device("cpu"),
        5,
    )
    rng = np.random.default_rng(5)
    first = (np.sqrt(2.0 / 784) * rng.standard_normal((784, 2048))).astype(np.float32)
    second = (np.sqrt(2.0 / 2048) * rng.standard_normal((2048, 10))).astype(np.float32)
    assert np.array_equal(network.params["W1"], first) and np.array_equal(network.params["W2"], second)


def _traced_peak(make: Callable[[], Any]) -> int:
    """The most bytes NumPy and Python held at once while `make()` ran, beyond what they held before."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        make()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


LOADS: dict[str, dict[str, Any]] = {
    "spiral float32": {"name": "spiral", "dtype": "float32", "samples": 600_000, "n_classes": 3},
    "spiral float64": {"name": "spiral", "dtype": "float64", "samples": 400_000, "n_classes": 2},
    "synthetic float32": {"name": "synthetic", "dtype": "float32", "samples": 12_000, "input_shape": (2048,)},
    "mnist5k float64": {"name": "mnist5k", "dtype": "float64"},
    "mnist float32": {"name": "mnist", "dtype": "float32"},
    "digits float64": {"name": "digits", "dtype": "float64"},
}


@pytest.mark.parametrize("case", list(LOADS))
def test_making_or_reading_a_set_holds_no_more_than_its_estimated_parts(case: str, tmp_path: Path) -> None:
    options = dict(LOADS[case])
    name, dtype = options.pop("name"), options["dtype"]
    path = write_idx_set(tmp_path) if name == "mnist" else None
    n_classes = int(options.get("n_classes", 10))
    train, test, features = dataset_split(
        name,
        samples=int(options.get("samples", 0)),
        n_classes=n_classes,
        input_shape=options.get("input_shape"),
        path=path,
    )
    item = np.dtype(dtype).itemsize
    parts = loading_bytes(name, train + test, features, item, n_classes)
    # Plus 1 MiB of Python objects and file buffers (the runtime part's).
    allowed = dataset_bytes(train + test, (features,), item) + parts["loading"] + 2**20

    if name == "digits":
        load_dataset("digits")  # scikit-learn's import is its own part (`libraries`), not traced here
    peak = _traced_peak(lambda: load_dataset(name, path=path, **options))
    assert peak <= allowed, f"{case}: held {mib(peak)} at once, the estimate counts {mib(allowed)}"


# --- the real size of a named data set -----------------------------------------------------------------


def test_mnist_from_files_is_estimated_at_the_size_their_headers_declare(tmp_path: Path) -> None:
    write_idx_set(tmp_path)
    assert dataset_split("mnist", samples=0, n_classes=10, input_shape=None, path=tmp_path) == (
        IDX_TRAIN,
        IDX_TEST,
        784,
    )
    assert dataset_split("mnist", samples=0, n_classes=10, input_shape=None, path=tmp_path / "none") == (
        60_000,
        10_000,
        784,
    )


def test_the_submitted_estimate_reads_no_file_and_the_workers_reads_the_headers(tmp_path: Path) -> None:
    write_idx_set(tmp_path)
    spec = JobSpec.model_validate(
        {"kind": "train", "dataset": "mnist", "dataset_path": str(tmp_path), "model": {"name": "mlp"}}
    )
    submitted = estimate_job_memory(spec)
    on_the_worker = estimate_job_memory(spec, read_dataset_files=True)
    assert submitted.parts["dataset"] == 70_000 * (784 * 4 + 8)  # as published: the API reads nothing
    assert on_the_worker.parts["dataset"] == (IDX_TRAIN + IDX_TEST) * (784 * 4 + 8)
