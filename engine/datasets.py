"""Datasets as plain NumPy arrays: inputs scaled to [0, 1] in the requested dtype, integer labels.

`load_dataset(name, ...)` knows five sets:

- `mnist5k`: 5,000 MNIST digits shipped inside the package (`engine/data/mnist5k.npz`, see
  `engine/data/README.md`), checksum verified on load, a fixed stratified 4000/1000 split.
- `mnist`: the four standard IDX files (gzipped or not) from a directory the user gives.
- `digits`: scikit-learn's bundled 8x8 digits (optional dependency), a fixed stratified split.
- `synthetic`: random inputs of any shape and class count, for pure throughput.
- `spiral`: the CS231n spiral, 2 features, any number of classes.

The splits of `mnist5k` and `digits` do not depend on any random generator: within each class, in
file order, every fifth sample is a test sample. So they are the same on every machine and NumPy version.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.backend import draw_as
from engine.spec import DATASETS

# Train and test samples and features per sample of the sets whose size is fixed (`mnist` as published;
# its real files may hold other counts, read from their headers when they are at hand).
FIXED_SPLITS: dict[str, tuple[int, int, int]] = {
    "mnist5k": (4_000, 1_000, 784),
    "mnist": (60_000, 10_000, 784),
    "digits": (1_442, 355, 64),
}
FIXED_SIZES: dict[str, tuple[int, int]] = {
    name: (train + test, features) for name, (train, test, features) in FIXED_SPLITS.items()
}
FIXED_CLASSES: dict[str, int] = {"mnist5k": 10, "mnist": 10, "digits": 10}
SPIRAL_FEATURES = 2
DATA_DIR = Path(__file__).resolve().parent / "data"
MNIST5K_FILE = DATA_DIR / "mnist5k.npz"
# sha256 of engine/data/mnist5k.npz as written by scripts/build_mnist5k.py.
MNIST5K_SHA256 = "4272d9557978479a159f1012f6d25fbc449bb89b8462a614358d1a7c10d85a42"
MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "t_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "t_test": "t10k-labels-idx1-ubyte",
}
SYNTHETIC_LABEL_CHUNK_BYTES = 16 * 2**20  # rows of the synthetic set labelled at a time
# What importing scikit-learn (and SciPy under it) adds to a process for `digits`: 87 MiB measured with
# scikit-learn 1.7 and SciPy 1.16 on Linux (VmHWM), rounded up.
SCIKIT_LEARN_BYTES = 96 * 2**20
SPIRAL_TEMPORARIES = 4  # float64 arrays of one arm alive at once while it is drawn: radius, angle, noise, x
TEST_EVERY = 5  # every fifth sample of a class is a test sample: a 80/20 stratified split


class DatasetError(ValueError):
    """A dataset cannot be loaded as asked (unknown name, missing file, bad checksum, shape mismatch)."""


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays plus the per-sample input shape and the number of classes."""

    x_train: np.ndarray
    t_train: np.ndarray
    x_test: np.ndarray
    t_test: np.ndarray
    input_shape: tuple[int, ...]
    n_classes: int
    name: str

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])


def load_dataset(
    name: str,
    *,
    path: str | Path | None = None,
    dtype: str = "float32",
    input_shape: tuple[int, ...] | None = None,
    n_classes: int | None = None,
    samples: int = 4096,
    seed: int = 0,
) -> Dataset:
    """Load dataset `name` with float inputs of `dtype` in [0, 1] and int64 labels.

    `input_shape`, when given, is the per-sample shape the model wants: image sets are reshaped to it
    (e.g. `(784,)` or `(1, 28, 28)`; the element count must match), and `synthetic` generates it.
    `n_classes` is checked against the set's classes, or chosen for `synthetic`/`spiral`.
    `samples` (train + test) and `seed` only matter for the generated sets, `synthetic` and `spiral`.
    """
    loaders: dict[str, Callable[..., Dataset]] = {
        "mnist5k": _load_mnist5k,
        "mnist": _load_mnist,
        "digits": _load_digits,
        "synthetic": _make_synthetic,
        "spiral": _make_spiral,
    }
    if name not in loaders:
        raise DatasetError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    np_dtype = np.dtype(dtype)
    if np_dtype.kind != "f":
        raise DatasetError(f"dtype must be a float type (float32 or float64), got {dtype!r}")
    dataset: Dataset = loaders[name](
        path=path, dtype=np_dtype, input_shape=input_shape, n_classes=n_classes, samples=samples, seed=seed
    )
    return dataset


def dataset_split(
    name: str,
    *,
    samples: int,
    n_classes: int,
    input_shape: tuple[int, ...] | None,
    path: str | Path | None = None,
) -> tuple[int, int, int]:
    """(train samples, test samples, features per sample) that `load_dataset` with these arguments holds,
    without loading it. `mnist` with a `path` reads the four files' headers (a few bytes each); without
    one, or when they cannot be read, it is the published 60,000/10,000."""
    if name == "synthetic":
        return (*_generated_split(samples), math.prod(input_shape or (784,)))
    if name == "spiral":
        return (*_generated_split(samples // max(n_classes, 1) * n_classes), SPIRAL_FEATURES)
    if name not in FIXED_SPLITS:
        raise DatasetError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    if name == "mnist" and path is not None:
        declared = _idx_split(Path(path).expanduser())
        if declared is not None:
            return declared
    return FIXED_SPLITS[name]


def dataset_size(
    name: str,
    *,
    samples: int,
    n_classes: int,
    input_shape: tuple[int, ...] | None,
    path: str | Path | None = None,
) -> tuple[int, int]:
    """(samples, features per sample) that `load_dataset` with these arguments holds, without loading it."""
    train, test, features = dataset_split(
        name, samples=samples, n_classes=n_classes, input_shape=input_shape, path=path
    )
    return train + test, features


def loading_bytes(name: str, samples: int, features: int, item: int, n_classes: int) -> dict[str, int]:
    """What making or reading a set of `samples` x `features` (`item` bytes each) holds besides the set
    itself, at its peak: parts of a memory estimate (`libraries`, `loading`), as the code below works.

    - synthetic: one chunk of rows being labelled (`SYNTHETIC_LABEL_CHUNK_BYTES`) and its scores;
    - spiral: the features once more (drawn in arm order, then shuffled into place), and the float64
      temporaries of one arm;
    - mnist5k: the file's bytes and its uint8 images twice (as stored, then split);
    - mnist: the files' uint8 payload;
    - digits: scikit-learn's import, and its float64 arrays (data and images, then the split copy).
    """
    if name == "synthetic":
        chunk_rows = max(1, SYNTHETIC_LABEL_CHUNK_BYTES // (features * item))
        return {"loading": SYNTHETIC_LABEL_CHUNK_BYTES + min(chunk_rows, samples) * (8 + 16 * item)}
    if name == "spiral":
        arm = samples // max(n_classes, 1)
        return {"loading": samples * features * item + arm * SPIRAL_TEMPORARIES * 8}
    if name == "mnist5k":
        return {"loading": MNIST5K_FILE.stat().st_size * 2 + 2 * samples * (features + 8)}
    if name == "mnist":
        return {"loading": samples * (features + 1)}
    if name == "digits":
        return {"libraries": SCIKIT_LEARN_BYTES, "loading": 3 * samples * (features + 1) * 8}
    raise DatasetError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")


def _generated_split(samples: int) -> tuple[int, int]:
    n_test = max(1, samples // TEST_EVERY)  # as `_split_generated` cuts
    return samples - n_test, n_test


# --- image sets -------------------------------------------------------------------------------


def _stratified_split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every fifth sample of each class (in file order) goes to test; both sides interleave the classes."""
    order = np.argsort(labels, kind="stable")
    rank = np.empty_like(order)
    sorted_labels = labels[order]
    # Position of each sample within its class, in file order.
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank[order] = np.arange(labels.size) - starts
    is_test = rank % TEST_EVERY == TEST_EVERY - 1
    # Interleave classes (round robin by rank) so neither side is sorted by label.
    interleaved = np.lexsort((labels, rank))
    return interleaved[~is_test[interleaved]], interleaved[is_test[interleaved]]


def _finish_images(
    name: str,
    images: dict[str, np.ndarray],
    native_shape: tuple[int, ...],
    n_set_classes: int,
    scale: float,
    dtype: np.dtype[Any],
    input_shape: tuple[int, ...] | None,
    n_classes: int | None,
) -> Dataset:
    """Scale to [0, 1] in `dtype`, reshape to the model's input shape and check the class count."""
    shape = tuple(input_shape) if input_shape is not None else native_shape
    if int(np.prod(shape)) != int(np.prod(native_shape)):
        raise DatasetError(
            f"dataset {name} has {int(np.prod(native_shape))} input features per sample "
            f"(shape {native_shape}); the model asks for shape {shape}"
        )
    if n_classes is not None and n_classes != n_set_classes:
        raise DatasetError(
            f"dataset {name} has {n_set_classes} classes; the model's output width is {n_classes}"
        )

    def scaled(x: np.ndarray) -> np.ndarray:
        out = x.reshape((x.shape[0], *shape)).astype(dtype)
        out *= dtype.type(1.0 / scale)  # in place: no second full-size temporary
        return out

    return Dataset(
        x_train=scaled(images["x_train"]),
        t_train=images["t_train"].astype(np.int64),
        x_test=scaled(images["x_test"]),
        t_test=images["t_test"].astype(np.int64),
        input_shape=shape,
        n_classes=n_set_classes,
        name=name,
    )


def verify_mnist5k(file: Path = MNIST5K_FILE) -> None:
    """Check the shipped npz against `MNIST5K_SHA256`; raise DatasetError naming both digests otherwise."""
    if not file.is_file():
        raise DatasetError(f"mnist5k data file is missing: {file} (rebuild it with scripts/build_mnist5k.py)")
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    if digest != MNIST5K_SHA256:
        raise DatasetError(
            f"mnist5k data file {file} has sha256 {digest}, expected {MNIST5K_SHA256}; "
            "the file is corrupt or was changed (rebuild it with scripts/build_mnist5k.py)"
        )


def _load_mnist5k(
    *, dtype: np.dtype[Any], input_shape: tuple[int, ...] | None, n_classes: int | None, **_: Any
) -> Dataset:
    verify_mnist5k()
    with np.load(MNIST5K_FILE, allow_pickle=False) as archive:
        x, t = archive["images"], archive["labels"]
    train, test = _stratified_split_indices(t)
    arrays = {"x_train": x[train], "t_train": t[train], "x_test": x[test], "t_test": t[test]}
    return _finish_images("mnist5k", arrays, (784,), 10, 255.0, dtype, input_shape, n_classes)


IDX_MAX_VALUES = 2**31  # the largest IDX payload read (2 GiB of bytes): bounds memory before any is read


def _read_idx(file: Path) -> np.ndarray:
    """Read one IDX file (magic 0x0000 08 nd, big-endian dims, then uint8 data), gzipped or not.

    The header is read and checked first, and the payload size it declares is checked against the file's
    size (a gzip file's trailer records its uncompressed size) before any payload is read. Then exactly
    the declared number of bytes is read. So a file that is not IDX costs a few bytes of reading, and no
    file costs more memory than its header declares: a payload longer or shorter than declared is refused.
    """
    with open(file, "rb") as raw_file:
        gzipped = raw_file.read(2) == b"\x1f\x8b"
        if gzipped:
            raw_file.seek(-4, os.SEEK_END)
            stored_size: int | None = struct.unpack("<I", raw_file.read(4))[0]  # ISIZE: size mod 2**32
        else:
            stored_size = raw_file.seek(0, os.SEEK_END)
    try:
        with gzip.open(file, "rb") if gzipped else open(file, "rb") as stream:
            return _read_idx_stream(stream, file, stored_size, gzipped)
    except (OSError, EOFError, struct.error) as exc:  # a broken gzip stream
        raise DatasetError(f"{file} is not a readable IDX file ({type(exc).__name__})") from None


def _read_idx_stream(stream: Any, file: Path, stored_size: int | None, gzipped: bool) -> np.ndarray:
    head = stream.read(4)
    if len(head) < 4 or head[:3] != b"\x00\x00\x08" or not 1 <= head[3] <= 4:
        # The bytes seen are not echoed: an error message must not disclose a file's content.
        raise DatasetError(f"{file} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = head[3]
    dims_bytes = stream.read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise DatasetError(f"{file} is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", dims_bytes)
    declared = int(np.prod(dims, dtype=np.int64))
    if declared > IDX_MAX_VALUES:
        raise DatasetError(
            f"{file}: header declares {dims} = {declared} values, over the limit of {IDX_MAX_VALUES}"
        )
    expected_size = 4 + 4 * ndim + declared
    if stored_size is not None and stored_size != (expected_size % 2**32 if gzipped else expected_size):
        raise DatasetError(
            f"{file} does not hold what its header says: {dims} needs {expected_size} bytes, "
            f"the file has {stored_size}{' uncompressed' if gzipped else ''}"
        )
    data = np.empty(declared, dtype=np.uint8)
    view, filled = data.data, 0
    while filled < declared:  # reads at most the declared size, whatever the file holds
        count = stream.readinto(view[filled:])
        if not count:
            break
        filled += count
    if filled != declared:
        raise DatasetError(f"{file} is truncated: header says {dims}, found {filled} values")
    if stream.read(1):
        raise DatasetError(f"{file} is longer than its header says ({dims})")
    return data.reshape(dims)


def _idx_dims(file: Path) -> tuple[int, ...] | None:
    """The dimensions an IDX file's header declares (gzipped or not), or None if it has no IDX header."""
    try:
        with open(file, "rb") as raw_file:
            gzipped = raw_file.read(2) == b"\x1f\x8b"
        with gzip.open(file, "rb") if gzipped else open(file, "rb") as stream:
            head = stream.read(4)
            if len(head) < 4 or head[:3] != b"\x00\x00\x08" or not 1 <= head[3] <= 4:
                return None
            dims_bytes = stream.read(4 * head[3])
    except (OSError, EOFError):
        return None
    if len(dims_bytes) < 4 * head[3]:
        return None
    return tuple(struct.unpack(f">{head[3]}I", dims_bytes))


def _idx_split(directory: Path) -> tuple[int, int, int] | None:
    """(train, test, features) the four IDX files of `directory` declare, or None if one is unreadable."""
    try:
        dims = {key: _idx_dims(_find_idx(directory, stem)) for key, stem in MNIST_FILES.items()}
    except DatasetError:
        return None
    images = [d for key, d in dims.items() if key.startswith("x")]
    if any(d is None or len(d) != 3 for d in images):
        return None
    x_train, x_test = (d for d in images if d is not None)
    return x_train[0], x_test[0], x_train[1] * x_train[2]


def _find_idx(directory: Path, stem: str) -> Path:
    # Both spellings occur in the wild: train-images-idx3-ubyte and train-images.idx3-ubyte.
    dotted = stem.replace("-idx", ".idx")
    for candidate in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / candidate).is_file():
            return directory / candidate
    raise DatasetError(f"mnist: missing file {stem} (or {stem}.gz) in {directory}")


def _load_mnist(
    *,
    path: str | Path | None,
    dtype: np.dtype[Any],
    input_shape: tuple[int, ...] | None,
    n_classes: int | None,
    **_: Any,
) -> Dataset:
    if path is None:
        raise DatasetError("dataset mnist needs a path: the directory of the four IDX files")
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise DatasetError(f"mnist: {directory} is not a directory (expected the four IDX files in it)")
    arrays = {key: _read_idx(_find_idx(directory, stem)) for key, stem in MNIST_FILES.items()}
    for split in ("train", "test"):
        x, t = arrays[f"x_{split}"], arrays[f"t_{split}"]
        if x.ndim != 3 or t.ndim != 1 or x.shape[0] != t.shape[0]:
            raise DatasetError(f"mnist: {split} images {x.shape} and labels {t.shape} do not match")
    rows, cols = arrays["x_train"].shape[1:]
    arrays = {k: v.reshape(v.shape[0], -1) if k.startswith("x") else v for k, v in arrays.items()}
    return _finish_images("mnist", arrays, (rows * cols,), 10, 255.0, dtype, input_shape, n_classes)


def _load_digits(
    *, dtype: np.dtype[Any], input_shape: tuple[int, ...] | None, n_classes: int | None, **_: Any
) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError(
            "dataset digits needs scikit-learn, which is not installed: pip install 'bpbench[digits]'"
        ) from None
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64)  # 8x8 images, values 0..16
    t = np.asarray(bunch.target, dtype=np.int64)
    train, test = _stratified_split_indices(t)
    arrays = {"x_train": x[train], "t_train": t[train], "x_test": x[test], "t_test": t[test]}
    return _finish_images("digits", arrays, (64,), 10, 16.0, dtype, input_shape, n_classes)


# --- generated sets ---------------------------------------------------------------------------


def _split_generated(
    name: str, x: np.ndarray, t: np.ndarray, shape: tuple[int, ...], n_classes: int
) -> Dataset:
    # The last fifth is the test set (the samples are already in random order).
    n_test = max(1, x.shape[0] // TEST_EVERY)
    return Dataset(x[:-n_test], t[:-n_test], x[-n_test:], t[-n_test:], shape, n_classes, name)


def _make_synthetic(
    *,
    dtype: np.dtype[Any],
    input_shape: tuple[int, ...] | None,
    n_classes: int | None,
    samples: int,
    seed: int,
    **_: Any,
) -> Dataset:
    """Uniform [0, 1) inputs; labels from a random linear teacher, so training can lower the loss."""
    shape = tuple(input_shape) if input_shape is not None else (784,)
    classes = n_classes if n_classes is not None else 10
    if classes < 2 or any(d < 1 for d in shape) or samples < 2:
        raise DatasetError(
            f"synthetic needs >= 2 classes, positive dimensions and >= 2 samples; "
            f"got classes={classes}, shape={shape}, samples={samples}"
        )
    rng = np.random.default_rng(seed)
    # Drawn in the job's dtype (float32 and float64 are both native to the generator), and labelled in
    # chunks: the set itself is the only full-size array, so memory is what the estimate counts.
    x = rng.random((samples, *shape), dtype=dtype.type)
    features = int(np.prod(shape))
    teacher = draw_as(rng.standard_normal, (features, classes), dtype)
    flat = x.reshape(samples, features)
    t = np.empty(samples, dtype=np.int64)
    chunk = max(1, SYNTHETIC_LABEL_CHUNK_BYTES // (features * dtype.itemsize))
    centred = np.empty((min(chunk, samples), features), dtype=dtype)  # one chunk's rows, reused
    for start in range(0, samples, chunk):
        stop = min(start + chunk, samples)
        rows = np.subtract(flat[start:stop], dtype.type(0.5), out=centred[: stop - start])
        np.argmax(rows @ teacher, axis=1, out=t[start:stop])
    return _split_generated("synthetic", x, t, shape, classes)


def _make_spiral(
    *,
    dtype: np.dtype[Any],
    input_shape: tuple[int, ...] | None,
    n_classes: int | None,
    samples: int,
    seed: int,
    **_: Any,
) -> Dataset:
    """CS231n's spiral: K arms of `samples // K` points, radius 0..1, angle noise 0.2; mapped to [0, 1]^2."""
    if input_shape is not None and tuple(input_shape) != (2,):
        raise DatasetError(
            f"dataset spiral has 2 input features; the model asks for shape {tuple(input_shape)}"
        )
    classes = n_classes if n_classes is not None else 3
    per_class = samples // max(classes, 1)
    if classes < 2 or per_class < 2:
        raise DatasetError(
            f"spiral needs >= 2 classes and >= 2 points per class; got {classes} and {per_class}"
        )
    rng = np.random.default_rng(seed)
    # Arm by arm in float64, mapped from [-1, 1] to [0, 1] like every other set and rounded into the
    # job's dtype; then shuffled. The same operations on each element as one float64 pass over the whole
    # set, so the same numbers, with float64 temporaries of one arm only (SPIRAL_TEMPORARIES).
    x = np.empty((per_class * classes, 2), dtype=dtype)
    radius = np.linspace(0.0, 1.0, per_class)
    coordinate = np.empty(per_class)
    for k in range(classes):
        theta = np.linspace(k * 4.0, (k + 1) * 4.0, per_class)
        noise = rng.standard_normal(per_class)
        noise *= 0.2
        theta += noise
        del noise
        arm = x[k * per_class : (k + 1) * per_class]
        for column, curve in enumerate((np.sin, np.cos)):
            curve(theta, out=coordinate)
            coordinate *= radius
            coordinate += 1.0
            coordinate /= 2.0
            arm[:, column] = coordinate
    order = rng.permutation(x.shape[0])
    shuffled = x[order]
    del x
    labels = np.floor_divide(order, per_class, out=order)  # arm k holds samples k*per_class ... in order
    return _split_generated("spiral", shuffled, labels, (2,), classes)
