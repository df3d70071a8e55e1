"""The one module that decides the array library (DeZero's `dezero/cuda.py` idea).

Every other engine module takes `xp` from here (or from the arrays it is handed) and never asks
"am I on a GPU?". CuPy is imported lazily, only when a GPU device is resolved or a CuPy array is
seen, so the CPU path never imports it and forked GPU workers do not initialise CUDA early.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import logging
import math
import os
import platform
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from engine.spec import DEVICE_SPELLINGS, DTYPES, DeviceSpellingError, parse_device

DEFAULT_DTYPE = "float32"
SUPPORTED_DTYPES = DTYPES
_log = logging.getLogger(__name__)


class DeviceError(RuntimeError):
    """The requested device cannot be used (unknown spelling, CuPy missing, no such GPU)."""


def _import_cupy() -> ModuleType:
    """Import CuPy on first use; a missing CuPy becomes a DeviceError naming the fix."""
    try:
        return importlib.import_module("cupy")
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise DeviceError(
            "CuPy is not installed, so no GPU device can be used; available: cpu "
            "(install the gpu extra: pip install 'bpbench[gpu]')"
        ) from exc


def _cupy_if_loaded() -> ModuleType | None:
    """CuPy only if something already imported it (so CPU-only code never pays for it)."""
    return sys.modules.get("cupy")


@dataclass(frozen=True)
class Device:
    """Where arrays live: the CPU (NumPy) or one CUDA GPU (CuPy)."""

    kind: str = "cpu"
    index: int | None = None

    @property
    def name(self) -> str:
        """ "cpu" or "gpu:N"."""
        return "cpu" if self.kind == "cpu" else f"gpu:{self.index or 0}"

    @property
    def xp(self) -> ModuleType:
        """The array module: numpy for the CPU, cupy for a GPU."""
        return np if self.kind == "cpu" else _import_cupy()

    @property
    def is_gpu(self) -> bool:
        return self.kind == "gpu"

    @contextlib.contextmanager
    def use(self) -> Iterator[None]:
        """Make this device current (allocations on a GPU land on `index`); a no-op on the CPU."""
        if self.kind == "cpu":
            yield
            return
        with self.xp.cuda.Device(self.index or 0):
            yield


CPU = Device("cpu", None)


def resolve_device(spec: str | Device = "cpu") -> Device:
    """Turn "cpu", "gpu" or "gpu:N" (any case, spaces around) into a Device, checking that the GPU exists."""
    if isinstance(spec, Device):
        return spec
    try:
        ref = parse_device(spec.strip().lower() if isinstance(spec, str) else spec)
    except DeviceSpellingError:
        raise DeviceError(f"unknown device {spec!r}; accepted: {', '.join(DEVICE_SPELLINGS)}") from None
    if ref.backend == "cpu":
        return CPU
    index = ref.index or 0
    try:
        cupy = _import_cupy()
    except DeviceError as exc:
        raise DeviceError(f"device {spec!r} was asked for, but {exc}") from None
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # CUDARuntimeError when no driver/GPU is present
        raise DeviceError(
            f"device {spec!r} was asked for, but CUDA reports no usable GPU ({exc}); available: cpu"
        ) from None
    if not 0 <= index < count:
        available = ", ".join(["cpu"] + [f"gpu:{i}" for i in range(count)])
        raise DeviceError(
            f"device {spec!r} was asked for, but this machine has {count} GPU(s); available: {available}"
        )
    return Device("gpu", index)


def get_array_module(*arrays: Any) -> Any:
    """numpy, cupy or JAX's (`engine.jax_numpy.xp`), whichever the arrays belong to (numpy when neither
    CuPy nor JAX was ever imported)."""
    cupy, jax = _cupy_if_loaded(), sys.modules.get("jax")
    if cupy is None and jax is None:
        return np
    if jax is not None and any(isinstance(a, jax.Array) for a in arrays):  # tracers inside `jit` too
        from engine.jax_numpy import xp

        return xp
    return np if cupy is None else cupy.get_array_module(*arrays)


def _is_cupy_array(x: Any) -> bool:
    # Checked by module name so that asking never imports CuPy.
    return type(x).__module__.split(".")[0] == "cupy"


def as_numpy(x: Any) -> np.ndarray:
    """A NumPy copy of a CuPy array; NumPy arrays and scalars pass through unchanged."""
    if _is_cupy_array(x):
        return x.get()
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
    if device.kind == "gpu":
        cupy = _import_cupy()
        with cupy.cuda.Device(device.index or 0):
            cupy.cuda.get_current_stream().synchronize()


class Stopwatch:
    """Elapsed seconds of device work: CUDA events on a GPU, `perf_counter` after a sync on the CPU.

    Use as `sw.start(); ...; seconds = sw.stop()` or `with Stopwatch(dev) as sw: ...; sw.seconds`.
    """

    def __init__(self, device: Device = CPU) -> None:
        self.device = device
        self.seconds = 0.0
        self._t0 = 0.0
        self._events: tuple[Any, Any] | None = None

    def start(self) -> Stopwatch:
        """Start timing (on a GPU: record an event on the current stream)."""
        if self.device.kind == "gpu":
            cuda = _import_cupy().cuda
            self._events = (cuda.Event(), cuda.Event())
            self._events[0].record()
        else:
            self._t0 = time.perf_counter()
        return self

    def stop(self) -> float:
        """Stop timing and return the elapsed seconds (on a GPU: waits for the end event)."""
        if self._events is not None:
            start, end = self._events
            end.record()
            end.synchronize()
            self.seconds = float(_import_cupy().cuda.get_elapsed_time(start, end)) / 1000.0
            self._events = None
        else:
            self.seconds = time.perf_counter() - self._t0
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
    if device.is_gpu:
        with device.use():
            device.xp.random.seed(seed)


def random_generator(seed: int | None, device: Device = CPU) -> Any:
    """A fresh `xp.random.Generator` on `device`, seeded with `seed` (None: fresh entropy).

    On a GPU its state lives in CuPy's pool, one cuRAND state per thread (about 12 MiB on an H200's 132
    multiprocessors), so build one only where it is drawn from.
    """
    if not device.is_gpu:
        return device.xp.random.default_rng(seed)  # JAX's: a key that each draw splits
    with device.use():
        return device.xp.random.default_rng(seed)


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


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def _host_info() -> dict[str, Any]:
    """The parts of the fingerprint that cannot change while this process lives (read once)."""
    import psutil

    return {
        "cpu_model": _cpu_model(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }


# threadpoolctl finds the thread pools by scanning every loaded library (/proc/self/maps): milliseconds in a
# worker, on every job. The scan is kept per process and redone only after an import, the way a new
# library gets loaded; the thread counts are read from the libraries on every call (threadpool_limits).
_pools: tuple[int, Any] | None = None  # (len(sys.modules) at the scan, its ThreadpoolController)


def _blas_info() -> list[dict[str, Any]]:
    global _pools
    if _pools is None or _pools[0] != len(sys.modules):
        from threadpoolctl import ThreadpoolController

        _pools = (len(sys.modules), ThreadpoolController())  # after the import: it may add a module
    keys = ("user_api", "internal_api", "prefix", "version", "architecture", "threading_layer", "num_threads")
    return [{k: pool.get(k) for k in keys} for pool in _pools[1].info()]


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


def _gpu_info(device: Device) -> dict[str, Any]:
    cupy = _import_cupy()
    index = device.index or 0
    runtime = cupy.cuda.runtime
    props = runtime.getDeviceProperties(index)
    name = props.get("name", b"")
    return {
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "index": index,
        "total_memory_bytes": int(props.get("totalGlobalMem", 0)),
        "compute_capability": f"{props.get('major')}.{props.get('minor')}",
        "driver_version": driver_release(),
        "cuda_driver_version": cuda_driver_version(),
        "cuda_runtime_version": int(runtime.runtimeGetVersion()),
        "cupy_version": str(cupy.__version__),
        "tf32": os.environ.get("CUPY_TF32", "0"),
    }


def fingerprint(device: Device = CPU) -> dict[str, Any]:
    """A JSON-serialisable description of the hardware and software a measurement ran on.

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
    if device.kind == "gpu":
        doc["gpu"] = _gpu_info(device)
    return doc


# --- memory: what the device holds and has free (the worker's checks and the engine's peaks) --------------


def memory_probe(device: Device) -> Callable[[], dict[str, int]]:
    """A function that reads current memory use: host RSS, plus on a GPU the job's bytes in CuPy's pool.

    Make it when the job starts. On a GPU it first gives the pool's cached blocks of earlier work back,
    then counts the pool's bytes above what was in use at that moment: the pool keeps the blocks a job
    frees, so its total is the high-water mark of the job's own allocations (a step's temporaries too).
    """
    import psutil

    process = psutil.Process()
    pool = device.xp.get_default_memory_pool() if device.is_gpu else None
    before = 0
    if pool is not None:
        pool.free_all_blocks()
        before = int(pool.used_bytes())

    def probe() -> dict[str, int]:
        reading = {"host_rss_bytes": int(process.memory_info().rss)}
        if pool is not None:
            reading["gpu_pool_bytes"] = max(0, int(pool.total_bytes()) - before)
        return reading

    return probe


def free_memory_bytes(device: str) -> tuple[int, str]:
    """Bytes free now on `device` ("cpu", or "gpu:N" as this process sees it), and a name for messages.

    A GPU answers for the current CUDA device (a pinned worker sees its one GPU as gpu:0); the CPU answers
    with the host's available RAM.
    """
    if device.startswith("gpu"):
        free, _total = _import_cupy().cuda.runtime.memGetInfo()
        return int(free), f"GPU {device}"
    import psutil

    return int(psutil.virtual_memory().available), "this host's RAM"


def release_memory() -> None:
    """Give the CuPy memory pools back to the driver (a no-op when CuPy was never imported).

    Arrays held only by reference cycles (layers <-> network) go back to the pool first. Never raises:
    cleanup must not turn a finished job into a failure.
    """
    cupy = _cupy_if_loaded()
    if cupy is None:
        return
    try:
        gc.collect()
        cupy.get_default_memory_pool().free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()
    except Exception as exc:
        _log.warning("could not free the CuPy memory pool: %s", exc)
