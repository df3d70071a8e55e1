"""The one door to array libraries (DeZero's `dezero/cuda.py` idea), over the backend registry.

Every other engine module takes `xp` from here (or from the arrays it is handed) and never asks "am I on
a GPU?". The stacks themselves are the registered backends (`engine/backends/`: NumPy, CuPy's CUDA and
ROCm builds, ...); this module resolves a device spelling to one of them and dispatches to it. Each
optional library is imported lazily, only when one of its devices is resolved or one of its arrays is
seen, so the CPU path never imports CuPy and forked GPU workers do not initialise CUDA early.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import platform
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from engine.backends import BACKENDS, backend_named, backend_of
from engine.backends.base import Backend, Device, DeviceError, DeviceInfo, Timer
from engine.backends.cupy_common import cupy_if_loaded
from engine.backends.numpy_backend import cpu_model
from engine.openblas import numpy_s_openblas
from engine.spec import DEVICE_SPELLINGS, DTYPES, FLOAT64_ACCEPTED, DeviceSpellingError, parse_device

__all__ = ["BACKENDS", "Backend", "Device", "DeviceError", "DeviceInfo", "backend_named"]

DEFAULT_DTYPE = "float32"
SUPPORTED_DTYPES = DTYPES
_log = logging.getLogger(__name__)


CPU = Device("cpu", None)


def _import_cupy() -> ModuleType:
    """CuPy, imported on first use; missing, a DeviceError naming the extra."""
    return backend_named("cuda").import_library()


def _cupy_if_loaded() -> ModuleType | None:
    return cupy_if_loaded()


def backend_for(device: Device) -> Backend:
    """The registered backend that runs `device`."""
    return backend_named(device.backend)


def resolve_device(spec: str | Device = "cpu") -> Device:
    """Turn a device spelling (any case, spaces around) into a Device of its backend, checking that this
    host has it: `cpu`, `gpu`, `gpu:N`, `cuda:N`, `rocm:N`, `xla:<platform>:<N>`, ..."""
    if isinstance(spec, Device):
        return spec
    try:
        ref = parse_device(spec.strip().lower() if isinstance(spec, str) else spec)
    except DeviceSpellingError:
        raise DeviceError(f"unknown device {spec!r}; accepted: {', '.join(DEVICE_SPELLINGS)}") from None
    backend = backend_of(ref)
    try:
        return backend.resolve(ref)
    except DeviceError as exc:
        message = str(exc)
        if message.startswith(f"device {ref.name!r}"):
            raise
        raise DeviceError(f"device {spec!r} was asked for, but {message}") from None


def check_float64(device: Device, dtype: str) -> None:
    """DeviceError when a float64 job is aimed at a device without float64 (the worker's check at run
    time; the API refuses what the spelling alone tells, `engine.spec.float64_refusal`, and what the
    devices registered for it tell)."""
    if dtype == "float64" and not backend_for(device).supports_float64(device):
        raise DeviceError(
            f"dtype float64 cannot run on device {device.name!r} ({device.backend} has no float64 there); "
            f"accepted: {FLOAT64_ACCEPTED}"
        )


def get_array_module(*arrays: Any) -> Any:
    """numpy, cupy, dpnp, JAX's (`engine.backends.jax_numpy.xp`) or an OpenCL queue's
    (`engine.backends.opencl_numpy`), whichever the arrays belong to (numpy when none of the others was
    ever imported)."""
    loaded = sys.modules  # read inline, no helper calls: every layer asks this several times per step
    if "dpnp" in loaded and any(_library_of(a) == "dpnp" for a in arrays):
        return loaded["dpnp"]
    opencl = loaded.get("engine.backends.opencl_numpy")
    if opencl is not None:
        found = next((a for a in arrays if isinstance(a, opencl.OpenclArray)), None)
        if found is not None:
            return found.module  # the array module of the queue the array lives on
    jax = loaded.get("jax")
    if jax is not None and any(isinstance(a, jax.Array) for a in arrays):  # tracers inside `jit` too
        from engine.backends.jax_numpy import xp

        return xp
    cupy = loaded.get("cupy")
    return np if cupy is None else cupy.get_array_module(*arrays)


def _library_of(x: Any) -> str:
    """The top-level package of `x`'s type (`cupy`, `dpnp`, `numpy`): asked by name, so that asking never
    imports CuPy or dpnp."""
    return type(x).__module__.split(".")[0]


def as_numpy(x: Any) -> np.ndarray:
    """A NumPy copy of a CuPy or dpnp array; NumPy arrays and scalars pass through unchanged."""
    if _library_of(x) == "cupy":
        return x.get()
    if _library_of(x) == "dpnp":
        return x.asnumpy()
    return np.asarray(x)


def as_cupy(x: Any) -> Any:
    """A CuPy array (on the current GPU) from a NumPy array or a CuPy array."""
    return _import_cupy().asarray(x)


def to_device(x: Any, device: Device, dtype: str | None = None) -> Any:
    """`x` as an array of `device` (and `dtype` if given), without a copy when it is already there."""
    return device.xp.asarray(x, dtype=dtype)


def resolve_dtype(dtype: str | np.dtype[Any] | None) -> np.dtype[Any]:
    """float32 by default; float64 on request; anything else is refused with the accepted values."""
    name = DEFAULT_DTYPE if dtype is None else np.dtype(dtype).name
    if name not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(SUPPORTED_DTYPES)}, got {dtype!r}")
    return np.dtype(name)


def _immutable(a: Any) -> bool:
    # JAX's arrays (and tracers) are the ones with `.at`; NumPy's are asked first, at the cost of one check.
    return not isinstance(a, np.ndarray) and hasattr(a, "at")


def put(a: Any, index: Any, value: Any) -> Any:
    """`a[index] = value`, returning the array to use from now on: `a` itself on NumPy/CuPy, a new array
    on JAX (whose arrays cannot change). The engine writes into (part of) an array only through this,
    `add_at` and `compute_into`, and always goes on with what they return."""
    if _immutable(a):
        return a.at[index].set(value)
    a[index] = value
    return a


def add_at(a: Any, index: Any, value: Any) -> Any:
    """`a[index] += value` (no index repeated), returning the array to use from now on (see `put`)."""
    if _immutable(a):
        return a.at[index].add(value)
    a[index] += value
    return a


def compute_into(a: Any, index: Any, compute: Callable[..., Any], *args: Any) -> Any:
    """`a[index] = compute(*args)`: on NumPy/CuPy through `compute(*args, out=a[index])` (no temporary),
    on JAX as `put`. Returns the array to use from now on."""
    if _immutable(a):
        return a.at[index].set(compute(*args))
    compute(*args, out=a[index])
    return a


def take_rows(a: Any, indices: Any, out: Any) -> Any:
    """`a[indices]` along the first axis, written into `out` (no new array; on JAX a new one: use the
    returned array).

    NumPy's `take` copies through a temporary when `out` is given with its default bounds check; the
    indices here come from `integers(0, len(a))`, so clipping them changes nothing and writes directly.
    """
    if get_array_module(a) is np:
        return np.take(a, indices, axis=0, out=out, mode="clip")
    return get_array_module(a).take(a, indices, axis=0, out=out)


def synchronize(device: Device) -> None:
    """Wait for the device's queued work, so a clock read afterwards means something (no-op on CPU)."""
    backend_for(device).synchronize(device)


class Stopwatch:
    """Elapsed seconds of device work: the backend's device events where it has them (CUDA/HIP events on a
    CuPy GPU), `perf_counter` after a sync elsewhere.

    Use as `sw.start(); ...; seconds = sw.stop()` or `with Stopwatch(dev) as sw: ...; sw.seconds`.
    """

    def __init__(self, device: Device = CPU) -> None:
        self.device = device
        self.seconds = 0.0
        self._stop: Timer | None = None

    def start(self) -> Stopwatch:
        """Start timing (on a GPU: record an event on the current stream)."""
        self._stop = backend_for(self.device).start_timer(self.device)
        return self

    def stop(self) -> float:
        """Stop timing and return the elapsed seconds (on a GPU: waits for the end event)."""
        if self._stop is not None:
            self.seconds = self._stop()
            self._stop = None
        return self.seconds

    def __enter__(self) -> Stopwatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def seed_everything(seed: int, device: Device = CPU) -> None:
    """Seed the legacy global generators (NumPy's, and CuPy's on a GPU) for code that draws from them.

    The engine itself draws from generators of its own (`random_generator`, and the weights' NumPy
    generator in `engine.networks`), so the same seed gives the same parameters and losses.
    """
    np.random.seed(seed % 2**32)
    backend_for(device).seed(seed, device)


def random_generator(seed: int | None, device: Device = CPU) -> Any:
    """A fresh `xp.random.Generator` on `device`, seeded with `seed` (None: fresh entropy).

    On a GPU its state lives in CuPy's pool, one cuRAND state per thread (about 12 MiB on an H200's 132
    multiprocessors), so build one only where it is drawn from.
    """
    return backend_for(device).random_generator(seed, device)


DRAW_BLOCK_BYTES = 8 * 2**20  # the float64 draws of one block: the only temporary of `draw_as`


def draw_as(draw: Callable[[tuple[int, ...]], np.ndarray], shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """`draw(shape).astype(dtype)`, the same numbers, without a full-size float64 temporary.

    `draw(block_shape)` returns float64 draws of a NumPy Generator (`rng.random`, `std *
    rng.standard_normal`); it is called for blocks of rows along the first axis, each cast into the
    result. A Generator fills an array element after element and consecutive calls continue its stream,
    so the blocks hold exactly the numbers of one call, and each element is computed and rounded as before.
    """
    out = np.empty(shape, dtype=dtype)
    if out.size == 0 or len(shape) == 0:
        out[...] = draw(shape)
        return out
    row = math.prod(shape[1:]) * 8
    rows = max(1, DRAW_BLOCK_BYTES // max(row, 1))
    for start in range(0, shape[0], rows):
        stop = min(start + rows, shape[0])
        out[start:stop] = draw((stop - start, *shape[1:]))
    return out


@functools.cache
def _host_info() -> dict[str, Any]:
    """The parts of the fingerprint that cannot change while this process lives (read once)."""
    import psutil

    return {
        "cpu_model": cpu_model(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }


# threadpoolctl finds the thread pools by scanning every loaded library (/proc/self/maps): milliseconds in a
# worker, on every job. The scan is kept per process and redone only after an import, the way a new
# library gets loaded; the thread counts are read from the libraries on every call (threadpool_limits).
_pools: tuple[int, list[Any]] | None = None  # (len(sys.modules) at the scan, the pools a fingerprint lists)


def _fingerprinted_pools(libs: list[Any]) -> list[Any]:
    """The thread pools a fingerprint lists: all but the OpenBLAS copies NumPy does not call. SciPy's own
    (loaded with Numba by engine.kernels) is not what the products run on, and listing it would give the
    same device another id once a process has loaded it."""
    openblas = [lib for lib in libs if lib.internal_api == "openblas"]
    numpy_s = numpy_s_openblas(openblas) if len(openblas) > 1 else None
    return [lib for lib in libs if numpy_s is None or lib.internal_api != "openblas" or lib is numpy_s]


def _blas_info() -> list[dict[str, Any]]:
    global _pools
    if _pools is None or _pools[0] != len(sys.modules):
        from threadpoolctl import ThreadpoolController

        controller = ThreadpoolController()  # after the import: it may add a module
        _pools = (len(sys.modules), _fingerprinted_pools(controller.lib_controllers))
    keys = ("user_api", "internal_api", "prefix", "version", "architecture", "threading_layer", "num_threads")
    return [{k: pool.get(k) for k in keys} for pool in (lib.info() for lib in _pools[1])]


NVIDIA_PROC_VERSION = Path("/proc/driver/nvidia/version")


def parse_driver_release(answer: bytes | str | None) -> str | None:
    """The driver release ("580.159.03") in NVML's answer or in the kernel module's version text.

    NVML's `nvmlSystemGetDriverVersion` answers the release itself (bytes in older nvidia-ml-py, str in
    newer); /proc/driver/nvidia/version says "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.03 ...".
    """
    if answer is None:
        return None
    text = answer.decode(errors="replace") if isinstance(answer, bytes) else str(answer)
    found = re.search(r"(?<![\w.])(\d{2,4}(?:\.\d+){1,2})(?![\w.])", text)
    return found.group(1) if found else None


@functools.cache
def driver_release() -> str | None:
    """The NVIDIA driver's release, from NVML (nvidia-ml-py), else from the kernel module; None if neither.

    Not the CUDA version the driver supports (`cuda_driver_version`): two releases can support the same
    CUDA version and differ in speed.
    """
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return parse_driver_release(pynvml.nvmlSystemGetDriverVersion())
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # ImportError, or NVMLError where the library or the device is missing
        _log.debug("NVML gave no driver release (%s); reading %s", exc, NVIDIA_PROC_VERSION)
    try:
        return parse_driver_release(NVIDIA_PROC_VERSION.read_text())
    except OSError:
        return None


def cuda_driver_version() -> int:
    """The newest CUDA version the driver supports, as CUDA writes it (13000 for 13.0)."""
    return int(_import_cupy().cuda.runtime.driverGetVersion())


def fingerprint(device: Device = CPU) -> dict[str, Any]:
    """A JSON-serialisable description of the hardware and software a measurement ran on.

    A device's identity is its hardware plus its stack: `backend` names the backend, its library and
    version, driver and runtime versions, the hardware's vendor and whether it does float64
    (`Backend.fingerprint_fields`); a CuPy GPU adds its `gpu` block.

    Cheap after the first call of a process (a worker takes one per job): the host's fixed facts and the
    loaded libraries are read once; the BLAS thread counts, the environment and the hostname every time.
    """
    host = _host_info()
    doc: dict[str, Any] = {
        "device": device.name,
        "cpu_model": host["cpu_model"],
        "physical_cores": host["physical_cores"],
        "logical_cores": host["logical_cores"],
        "numpy_version": host["numpy_version"],
        "blas": _blas_info(),
        "python_version": host["python_version"],
        "platform": host["platform"],
        "hostname": socket.gethostname(),
    }
    coretype = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    if coretype:
        doc["blas_env"] = coretype
    backend = backend_for(device)
    doc["backend"] = backend.fingerprint_fields(device)
    doc.update(backend.extra_fields(device))
    return doc


# --- memory: what the device holds and has free (the worker's checks and the engine's peaks) --------------


def memory_probe(device: Device) -> Callable[[], dict[str, int]]:
    """A function that reads current memory use: host RSS, plus on a GPU the job's bytes in CuPy's pool.

    Make it when the job starts (on a GPU the pool's cached blocks of earlier work are given back then).
    """
    return backend_for(device).memory_probe(device)


def free_memory_bytes(device: str) -> tuple[int, str]:
    """Bytes free now on `device` ("cpu", or "gpu:N" as this process sees it), and a name for messages.

    A GPU answers for the current CUDA device (a pinned worker sees its one GPU as gpu:0); the CPU answers
    with the host's available RAM.
    """
    ref = parse_device(device.strip().lower())
    return backend_of(ref).free_memory_bytes(device)


def release_memory() -> None:
    """Give the cached device memory of every loaded backend back (a no-op for a library never imported).

    Never raises: cleanup must not turn a finished job into a failure.
    """
    for backend in BACKENDS:
        if backend.library in sys.modules:
            backend.release_memory()
