"""Datasets: shapes, scaling, fixed stratified splits, checksums and the errors users see."""

from __future__ import annotations

import contextlib
import gzip
import shutil
import struct
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from engine import datasets
from engine.datasets import DatasetError, load_dataset, verify_mnist5k


@pytest.fixture(scope="module")
def mnist5k() -> datasets.Dataset:
    return load_dataset("mnist5k")


def test_mnist5k_has_a_stratified_4000_1000_split(mnist5k: datasets.Dataset) -> None:
    assert mnist5k.x_train.shape == (4000, 784) and mnist5k.x_test.shape == (1000, 784)
    assert np.bincount(mnist5k.t_train).tolist() == [400] * 10
    assert np.bincount(mnist5k.t_test).tolist() == [100] * 10
    assert mnist5k.input_shape == (784,) and mnist5k.n_classes == 10


def test_mnist5k_inputs_are_float32_in_unit_range_and_labels_integers(mnist5k: datasets.Dataset) -> None:
    assert mnist5k.x_train.dtype == np.float32
    assert mnist5k.x_train.min() == 0.0 and mnist5k.x_train.max() == 1.0
    assert mnist5k.t_train.dtype == np.int64


def test_mnist5k_train_and_test_images_are_disjoint(mnist5k: datasets.Dataset) -> None:
    train = {row.tobytes() for row in mnist5k.x_train}
    assert not any(row.tobytes() in train for row in mnist5k.x_test)


def test_mnist5k_split_is_the_same_for_any_seed_and_dtype(mnist5k: datasets.Dataset) -> None:
    other = load_dataset("mnist5k", dtype="float64", seed=123)
    assert other.x_train.dtype == np.float64
    np.testing.assert_array_equal(other.t_train, mnist5k.t_train)
    np.testing.assert_allclose(other.x_test, mnist5k.x_test, atol=1e-7)


def test_mnist5k_reshapes_to_the_models_image_shape() -> None:
    data = load_dataset("mnist5k", input_shape=(1, 28, 28))
    assert data.x_train.shape == (4000, 1, 28, 28) and data.input_shape == (1, 28, 28)


def test_mnist5k_refuses_a_model_of_another_input_width() -> None:
    with pytest.raises(DatasetError, match=r"784 input features .* shape \(100,\)"):
        load_dataset("mnist5k", input_shape=(100,))


def test_mnist5k_refuses_a_model_with_another_class_count() -> None:
    with pytest.raises(DatasetError, match="10 classes; the model's output width is 3"):
        load_dataset("mnist5k", n_classes=3)


def test_a_changed_mnist5k_file_fails_the_checksum(tmp_path: Path) -> None:
    copy = tmp_path / "mnist5k.npz"
    shutil.copy(datasets.MNIST5K_FILE, copy)
    raw = bytearray(copy.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    copy.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=f"expected {datasets.MNIST5K_SHA256}"):
        verify_mnist5k(copy)


def test_load_checks_the_shipped_file_against_the_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "MNIST5K_SHA256", "0" * 64)
    with pytest.raises(DatasetError, match="corrupt or was changed"):
        load_dataset("mnist5k")


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def _write_mnist(directory: Path, compress: bool, skip: str | None = None) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(20) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(10),
    }
    for name, array in arrays.items():
        if name != skip:
            _write_idx(directory / (name + (".gz" if compress else "")), array, compress)


@pytest.mark.parametrize("compress", [True, False], ids=["gzipped", "plain"])
def test_mnist_reads_the_four_idx_files(tmp_path: Path, compress: bool) -> None:
    _write_mnist(tmp_path, compress)
    data = load_dataset("mnist", path=tmp_path)
    assert data.x_train.shape == (20, 784) and data.x_test.shape == (10, 784)
    assert data.t_test.tolist() == list(range(10))
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0


def test_mnist_names_the_missing_file(tmp_path: Path) -> None:
    _write_mnist(tmp_path, compress=True, skip="t10k-labels-idx1-ubyte")
    with pytest.raises(DatasetError, match="missing file t10k-labels-idx1-ubyte"):
        load_dataset("mnist", path=tmp_path)


def test_mnist_refuses_a_path_that_is_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="is not a directory"):
        load_dataset("mnist", path=tmp_path / "nowhere")


def test_digits_are_64_features_in_unit_range_with_a_stratified_split() -> None:
    pytest.importorskip("sklearn")
    data = load_dataset("digits")
    assert data.input_shape == (64,) and data.n_train + data.n_test == 1797
    assert data.x_train.max() == 1.0 and data.x_train.min() == 0.0
    test_share = np.bincount(data.t_test) / (np.bincount(data.t_train) + np.bincount(data.t_test))
    assert np.all(np.abs(test_share - 0.2) < 0.01)  # every class split 80/20


def test_digits_without_scikit_learn_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(DatasetError, match=r"pip install 'bpbench\[digits\]'"):
        load_dataset("digits")


def test_synthetic_takes_any_shape_and_class_count_and_is_seeded() -> None:
    a = load_dataset("synthetic", input_shape=(3, 8, 8), n_classes=7, samples=100, seed=5)
    b = load_dataset("synthetic", input_shape=(3, 8, 8), n_classes=7, samples=100, seed=5)
    assert a.x_train.shape == (80, 3, 8, 8) and a.x_test.shape == (20, 3, 8, 8) and a.n_classes == 7
    assert a.t_train.max() < 7
    np.testing.assert_array_equal(a.x_train, b.x_train)


def test_spiral_has_two_features_and_the_asked_classes() -> None:
    data = load_dataset("spiral", n_classes=4, samples=400)
    assert data.input_shape == (2,) and data.n_classes == 4
    assert np.bincount(np.concatenate([data.t_train, data.t_test])).tolist() == [100] * 4
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0


def test_spiral_refuses_a_model_with_another_input_width() -> None:
    with pytest.raises(DatasetError, match="spiral has 2 input features"):
        load_dataset("spiral", input_shape=(784,))


def test_unknown_dataset_lists_the_accepted_names() -> None:
    with pytest.raises(DatasetError, match="accepted: mnist5k, mnist, digits, synthetic, spiral"):
        load_dataset("cifar10")


def _peak_traced_bytes(action: Callable[[], object]) -> int:
    """Peak bytes allocated (Python and NumPy buffers, as tracemalloc sees them) while `action` runs."""
    tracemalloc.start()
    try:
        with contextlib.suppress(DatasetError):
            action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_file_that_is_not_idx_is_refused_after_reading_its_header(tmp_path: Path) -> None:
    big = tmp_path / "train-images-idx3-ubyte"
    with big.open("wb") as f:
        f.write(b"SECRETxx")
        f.truncate(3 * 2**30)  # a sparse 3 GiB file: no disk used, but reading it whole costs 3 GiB
    with pytest.raises(DatasetError, match=r"bad magic number\)$") as refused:
        datasets._read_idx(big)
    assert "SECRET" not in str(refused.value) and "534543" not in str(refused.value)  # no content echoed
    assert _peak_traced_bytes(lambda: datasets._read_idx(big)) < 2**20


def test_a_gzip_bomb_is_refused_without_decompressing_it(tmp_path: Path) -> None:
    bomb = tmp_path / "train-labels-idx1-ubyte.gz"
    header = bytes([0, 0, 8, 1]) + struct.pack(">I", 10)
    bomb.write_bytes(gzip.compress(header + bytes(200 * 2**20)))  # declares 10 bytes, holds 200 MiB
    with pytest.raises(DatasetError, match=r"needs 18 bytes, the file has 209715208 uncompressed"):
        datasets._read_idx(bomb)
    assert _peak_traced_bytes(lambda: datasets._read_idx(bomb)) < 2**20


def test_a_file_longer_than_its_header_says_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "labels"
    plain.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 4) + bytes(5))
    with pytest.raises(DatasetError, match=r"\(4,\) needs 12 bytes, the file has 13$"):
        datasets._read_idx(plain)


def test_a_gzip_file_whose_trailer_lies_is_still_read_only_as_far_as_declared(tmp_path: Path) -> None:
    lying = tmp_path / "labels.gz"
    packed = bytearray(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 4) + bytes(50 * 2**20)))
    packed[-4:] = struct.pack("<I", 12)  # the trailer claims the declared size
    lying.write_bytes(bytes(packed))
    with pytest.raises(DatasetError, match=r"not a readable IDX file|longer than its header says"):
        datasets._read_idx(lying)
    assert _peak_traced_bytes(lambda: datasets._read_idx(lying)) < 2**20


def test_a_header_declaring_more_than_the_limit_is_refused_before_allocating(tmp_path: Path) -> None:
    huge = tmp_path / "images"
    huge.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**20, 2**10, 2**10))
    with pytest.raises(DatasetError, match=r"over the limit of 2147483648"):
        datasets._read_idx(huge)


def test_a_truncated_idx_file_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "images"
    short.write_bytes(bytes([0, 0, 8, 2]) + struct.pack(">2I", 3, 3) + bytes(4))
    with pytest.raises(DatasetError, match=r"\(3, 3\) needs 21 bytes, the file has 16"):
        datasets._read_idx(short)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_synthetic_data_costs_its_own_size_and_no_float64_detour(dtype: str) -> None:
    samples, features = 20_000, 1024
    tracemalloc.start()
    try:
        data = load_dataset("synthetic", input_shape=(features,), n_classes=10, samples=samples, dtype=dtype)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    set_bytes = samples * features * np.dtype(dtype).itemsize
    assert data.x_train.dtype == np.dtype(dtype)
    # The set, plus two label chunks' temporaries (rows minus 0.5, and their product with the teacher).
    assert peak <= set_bytes + 2 * datasets.SYNTHETIC_LABEL_CHUNK_BYTES + 2**20
