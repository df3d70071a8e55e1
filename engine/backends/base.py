"""The `Backend` interface: what the engine asks of an array library, and the `Device` it hands out.

A backend is one stack that runs the engine: its array library (NumPy, CuPy, ...), the device-grammar
words it owns, the pip extra that installs it, and what it knows about its devices (their names,
hardware vendor, float64, memory, clocks). The base class is the CPU-like default: everything a backend
does not override behaves as on NumPy. Importing a backend module imports no optional library: the
library is imported on first use (`import_library`), and a missing one is a `DeviceError` naming the
extra to install.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from engine.grammar import DeviceBackend, DeviceRef


class DeviceError(RuntimeError):
    """The requested device cannot be used (unknown spelling, library missing, no such device)."""


@dataclass(frozen=True)
class Device:
    """Where arrays live: one device of one backend.

    `kind` is the hardware class (`cpu`, `gpu`, `tpu`, `accelerator`); `backend` the registered backend
    that runs it (left out: `numpy` for the CPU, `cuda` for a GPU, as before the registry); `selector`
    the backend's own device selector where an index alone does not say it (`opencl:cpu:0`).
    """

    kind: str = "cpu"
    index: int | None = None
    backend: str = ""
    selector: str | None = None

    def __post_init__(self) -> None:
        if not self.backend:
            object.__setattr__(self, "backend", "numpy" if self.kind == "cpu" else "cuda")

    @property
    def name(self) -> str:
        """The spelling this device is recorded under: `cpu`, `gpu:0`, `xla:tpu:0`."""
        if self.backend in CUPY_BACKENDS or self.backend == "numpy":
            return "cpu" if self.kind == "cpu" else f"gpu:{self.index or 0}"
        return f"{self.backend}:{self.selector}" if self.selector else self.backend

    @property
    def xp(self) -> ModuleType:
        """The array module of this device's backend."""
        if self.backend == "numpy":  # the hot path: asked for in every layer's step
            return np
        return _registry_backend(self.backend).xp(self)

    @property
    def is_gpu(self) -> bool:
        """A CuPy GPU (CUDA or ROCm): its memory is CuPy's pool and its clock CUDA/HIP events."""
        return self.kind == "gpu" and self.backend in CUPY_BACKENDS

    @contextlib.contextmanager
    def use(self) -> Iterator[None]:
        """Make this device current for allocations (a no-op where a backend has no current device)."""
        with _registry_backend(self.backend).use(self):
            yield

    def energy_meter(self) -> tuple[int, str] | None:
        """(index, vendor) of the meter that reads this accelerator's energy; None for a CPU (RAPL)."""
        return _registry_backend(self.backend).energy_meter(self)


CUPY_BACKENDS = ("cuda", "rocm")


def _registry_backend(name: str) -> Backend:
    from engine.backends import backend_named  # the registry imports this module

    return backend_named(name)


@dataclass(frozen=True)
class DeviceInfo:
    """One device this host has, as `bpbench worker --list-devices` shows it."""

    spelling: str  # what to pass to --device
    name: str  # the human name: CPU model, GPU name
    vendor: str  # the hardware vendor, as the timeline names it
    float64: bool


Timer = Callable[[], float]  # stops the clock it was started from and returns the elapsed seconds


class Backend:
    """A stack that runs the engine. Subclasses set the class attributes and override what differs.

    Class attributes:
    - `name`: the registry name (`numpy`, `cuda`, `rocm`, `oneapi`, `xla`, `opencl`).
    - `words`: the device-grammar words it owns (`DeviceBackend`s; `owner` and the queue class are
      filled in by the registry from `name` and `class_queue`).
    - `extra`: the pip extra that installs its library (None: the default install has it).
    - `library`: the module to import (`cupy`); `distributions`: the pip packages whose version is its
      version (the first one installed).
    - `class_queue`: the class queue its workers also serve (`cpu`, `gpu`; None: its own queue only).
    - `fork_safe`: whether a worker may run its jobs in forked pool processes (CUDA, JAX, SYCL: no).
    - `runtime_bytes`: the host memory its library holds once a job runs on it, beyond the interpreter and
      NumPy (measured; the memory estimate's `backend_runtime` part, `engine.kinds.estimate_memory`).
    """

    name: str = ""
    words: tuple[DeviceBackend, ...] = ()
    extra: str | None = None
    library: str = ""
    distributions: tuple[str, ...] = ()
    class_queue: str | None = None
    fork_safe: bool = False
    runtime_bytes: int = 0
    summary: str = ""

    # --- the library ---------------------------------------------------------------------------------

    def installed(self) -> bool:
        """Whether its library can be imported here (asked without importing it)."""
        try:
            return importlib.util.find_spec(self.library) is not None
        except (ImportError, ValueError):
            return False

    def install_hint(self) -> str:
        """What to install to use it."""
        return f"pip install 'bpbench[{self.extra}]'" if self.extra else "pip install bpbench"

    def import_library(self) -> ModuleType:
        """The library, imported on first use; missing, a DeviceError naming the extra."""
        try:
            return importlib.import_module(self.library)
        except ImportError as exc:
            raise DeviceError(
                f"the {self.name} backend needs {self.library}, which is not installed "
                f"(install the {self.extra} extra: {self.install_hint()})"
            ) from exc

    def library_version(self) -> str | None:
        """The installed version of its library's distribution (read from metadata: nothing imported)."""
        for distribution in self.distributions:
            try:
                return importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                continue
        return None

    # --- devices -------------------------------------------------------------------------------------

    def resolve(self, ref: DeviceRef) -> Device:
        """The Device `ref` names on this host, or DeviceError saying what is available."""
        raise NotImplementedError

    def devices(self) -> list[DeviceInfo]:
        """What this host has for this backend (imports the library; DeviceError if it is missing)."""
        raise NotImplementedError

    def hardware_kind(self, ref: DeviceRef) -> str:
        """The hardware class a spelling names, known without the library (`cpu`, `gpu`, `tpu`)."""
        return "gpu"

    def float64_by_spelling(self, ref: DeviceRef) -> bool | None:
        """Whether a device so spelled does float64, where the spelling alone says (None: ask the device)."""
        return None

    def supports_float64(self, device: Device) -> bool:
        """Whether this device computes in float64."""
        return True

    def vendor(self, device: Device) -> str:
        """The hardware vendor of the device, as the timeline's rows name them (`NVIDIA`, `Intel`, ...)."""
        return "unknown"

    def energy_meter(self, device: Device) -> tuple[int, str] | None:
        """(index, vendor) of the device's own meter (NVML for NVIDIA's GPUs, amdsmi for AMD's; other
        vendors' accelerators have none here and report why), or None for a CPU, which the host's RAPL reads.
        A TPU's or an FPGA's energy is never the host CPU's."""
        if device.kind == "cpu":
            return None
        return device.index or 0, self.vendor(device)

    def hardware_name(self, device: Device) -> str | None:
        """The hardware's own name (a CPU's model, a GPU's name): what identifies it across stacks."""
        if device.kind != "cpu":
            return None
        from engine.backends.numpy_backend import cpu_model

        return cpu_model()

    def pin(self, ref: DeviceRef) -> tuple[dict[str, str], str]:
        """For a worker of one device: the environment that makes only it visible (set before the library
        starts) and the spelling the engine then uses for it. Default: nothing to set, the same spelling."""
        return {}, ref.name

    # --- arrays, clocks, memory ----------------------------------------------------------------------

    def xp(self, device: Device) -> ModuleType:
        """The array module for `device`."""
        return self.import_library()

    @contextlib.contextmanager
    def use(self, device: Device) -> Iterator[None]:
        """Make `device` current for allocations (default: nothing to do)."""
        yield

    def synchronize(self, device: Device) -> None:
        """Wait for the device's queued work (default: the work is done when the call returns)."""

    def start_timer(self, device: Device) -> Timer:
        """Start a clock of device work; the function returned stops it and gives the seconds.
        Default: `perf_counter` around a synchronize (device events where the library has them)."""
        self.synchronize(device)
        t0 = time.perf_counter()

        def stop() -> float:
            self.synchronize(device)
            return time.perf_counter() - t0

        return stop

    def memory_probe(self, device: Device) -> Callable[[], dict[str, int]]:
        """A function reading current memory use: the host's resident set (a backend adds its device's)."""
        import psutil

        process = psutil.Process()
        return lambda: {"host_rss_bytes": int(process.memory_info().rss)}

    def host_memory_parts(
        self, ref: DeviceRef, parts: dict[str, int], relu_values: int = 0
    ) -> dict[str, int]:
        """What this backend adds to the host's resident set of a job whose NumPy estimate has `parts`
        (its library's runtime, its own copies of the job's arrays where they live in host memory);
        `relu_values`: the most values one ReLU of the job takes at once (batch or evaluation chunk).
        Default: nothing (NumPy's arrays are the estimate's; a GPU's live in its own memory)."""
        return {}

    def free_memory_bytes(self, device: str) -> tuple[int, str]:
        """Bytes free now on `device` (its spelling as this process sees it), and a name for messages.
        Default: the host's available RAM."""
        import psutil

        return int(psutil.virtual_memory().available), "this host's RAM"

    def release_memory(self) -> None:
        """Give cached device memory back after a job (never raises; default: nothing cached)."""

    def random_generator(self, seed: int | None, device: Device) -> Any:
        """A seeded generator drawing arrays of `device` (default: NumPy's)."""
        import numpy as np

        return np.random.default_rng(seed)

    def seed(self, seed: int, device: Device) -> None:
        """Seed the library's own global generator, where it has one (default: none)."""

    # --- identity ------------------------------------------------------------------------------------

    def fingerprint_fields(self, device: Device) -> dict[str, Any]:
        """The stack part of a fingerprint: backend, library and version, driver/runtime versions, the
        hardware's vendor and name, and float64. A backend's own top-level keys (a GPU's `gpu` block) are
        `extra_fields`'s."""
        return {
            "name": self.name,
            "library": self.library,
            "library_version": self.library_version(),
            "driver_version": None,
            "runtime_version": None,
            "vendor": self.vendor(device),
            "hardware": self.hardware_name(device),
            "float64": self.supports_float64(device),
        }

    def extra_fields(self, device: Device) -> dict[str, Any]:
        """Top-level fingerprint keys of this backend besides `backend` (CuPy: `gpu`)."""
        return {}

    @property
    def queues(self) -> tuple[str, ...]:
        """The job queues a worker of this backend serves: its class queue, then its own."""
        own = () if self.class_queue == self.name or self.name == "numpy" else (self.name,)
        return ((self.class_queue,) if self.class_queue else ()) + own
