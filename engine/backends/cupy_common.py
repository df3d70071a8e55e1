"""CuPy on a GPU: one code path for its CUDA build (`cuda`, NVIDIA) and its ROCm build (`rocm`, AMD).

`gpu`/`gpu:N` means whichever GPU the installed CuPy has; `cuda:N` and `rocm:N` name the build too, and
a device spelled for the other build is refused with the spelling that works. CuPy is imported on first
use only (importing it starts no GPU context), so a CPU process never pays for it and a worker can pin
its GPU (`CUDA_VISIBLE_DEVICES`, `HIP_VISIBLE_DEVICES`) before CUDA or HIP starts.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from engine.backends.base import Backend, Device, DeviceError, DeviceInfo, Timer
from engine.grammar import DeviceRef

_log = logging.getLogger("engine.backend")

GPU_SELECTOR = r"\d{1,2}"  # the API has always taken at most two digits


def cupy_if_loaded() -> ModuleType | None:
    """CuPy only if something already imported it (so CPU-only code never pays for it)."""
    return sys.modules.get("cupy")


def is_rocm_build(cupy: ModuleType) -> bool:
    """Whether this CuPy is its ROCm (HIP) build."""
    return bool(getattr(cupy.cuda.runtime, "is_hip", False))


BUILD_NAMES = {"cuda": "CUDA", "rocm": "ROCm"}


def build_backend_name(cupy: ModuleType) -> str:
    """`rocm` for CuPy's ROCm build, else `cuda`."""
    return "rocm" if is_rocm_build(cupy) else "cuda"


class CupyBackend(Backend):
    """CuPy on one GPU; `build` is the CuPy build this backend stands for (`cuda` or `rocm`)."""

    library = "cupy"
    class_queue = "gpu"
    fork_safe = False
    build = "cuda"
    hardware_vendor = "NVIDIA"

    def installed(self) -> bool:
        """CuPy importable, and of this backend's build (a CUDA and a ROCm CuPy are different packages)."""
        return super().installed() and self.library_version() is not None

    def import_library(self) -> ModuleType:
        try:
            import cupy
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise DeviceError(
                "CuPy is not installed, so no GPU device can be used; available: cpu "
                f"(install the {self.extra} extra: {self.install_hint()})"
            ) from exc
        return cupy

    def resolve(self, ref: DeviceRef) -> Device:
        cupy = self.import_library()
        built = build_backend_name(cupy)
        if ref.backend not in ("gpu", built):
            index = ref.index or 0
            raise DeviceError(
                f"device {ref.name!r} was asked for, but the installed CuPy is its {BUILD_NAMES[built]} "
                f"build; use {built}:{index} or gpu:{index}"
            )
        index = ref.index or 0
        try:
            count = int(cupy.cuda.runtime.getDeviceCount())
        except Exception as exc:  # CUDARuntimeError when no driver/GPU is present
            raise DeviceError(
                f"device {ref.name!r} was asked for, but {BUILD_NAMES[built]} reports no usable GPU ({exc}); "
                "available: cpu"
            ) from None
        if not 0 <= index < count:
            available = ", ".join(["cpu"] + [f"gpu:{i}" for i in range(count)])
            raise DeviceError(
                f"device {ref.name!r} was asked for, but this machine has {count} GPU(s); "
                f"available: {available}"
            )
        return Device("gpu", index, built)

    def devices(self) -> list[DeviceInfo]:
        cupy = self.import_library()
        if build_backend_name(cupy) != self.name:
            return []
        try:
            count = int(cupy.cuda.runtime.getDeviceCount())
        except Exception:  # no driver or no GPU: nothing to list
            return []
        found = []
        for index in range(count):
            device = Device("gpu", index, self.name)
            found.append(DeviceInfo(f"{self.name}:{index}", gpu_name(cupy, index), self.vendor(device), True))
        return found

    def hardware_kind(self, ref: DeviceRef) -> str:
        return "gpu"

    def float64_by_spelling(self, ref: DeviceRef) -> bool:
        return True  # every GPU CuPy runs on computes in float64 (slowly on consumer parts)

    def vendor(self, device: Device) -> str:
        return self.hardware_vendor

    def hardware_name(self, device: Device) -> str:
        return gpu_name(self.import_library(), device.index or 0)

    def pin(self, ref: DeviceRef) -> tuple[dict[str, str], str]:
        if ref.index is None:
            return {}, ref.name
        # `gpu:N` is whichever build is installed: both variables name the same GPU (HIP reads either).
        names = {"gpu": ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"), "cuda": ("CUDA_VISIBLE_DEVICES",)}
        return {name: str(ref.index) for name in names.get(ref.backend, ("HIP_VISIBLE_DEVICES",))}, (
            f"{ref.backend}:0"
        )

    def xp(self, device: Device) -> ModuleType:
        return self.import_library()

    @contextlib.contextmanager
    def use(self, device: Device) -> Iterator[None]:
        with self.import_library().cuda.Device(device.index or 0):
            yield

    def synchronize(self, device: Device) -> None:
        cupy = self.import_library()
        with cupy.cuda.Device(device.index or 0):
            cupy.cuda.get_current_stream().synchronize()

    def start_timer(self, device: Device) -> Timer:
        """CUDA (HIP) events on the current stream: the device's own clock of its work."""
        cuda = self.import_library().cuda
        start, end = cuda.Event(), cuda.Event()
        start.record()

        def stop() -> float:
            end.record()
            end.synchronize()
            return float(cuda.get_elapsed_time(start, end)) / 1000.0

        return stop

    def memory_probe(self, device: Device) -> Callable[[], dict[str, int]]:
        """Host RSS plus the job's bytes in CuPy's pool: the cached blocks of earlier work are given back
        first, then the pool's bytes above what was in use at that moment are counted (the pool keeps the
        blocks a job frees, so its total is the high-water mark of the job's own allocations)."""
        import psutil

        process = psutil.Process()
        pool = self.import_library().get_default_memory_pool()
        pool.free_all_blocks()
        before = int(pool.used_bytes())

        def probe() -> dict[str, int]:
            return {
                "host_rss_bytes": int(process.memory_info().rss),
                "gpu_pool_bytes": max(0, int(pool.total_bytes()) - before),
            }

        return probe

    def free_memory_bytes(self, device: str) -> tuple[int, str]:
        free, _total = self.import_library().cuda.runtime.memGetInfo()
        return int(free), f"GPU {device}"

    def release_memory(self) -> None:
        cupy = cupy_if_loaded()
        if cupy is None:
            return
        try:
            gc.collect()
            cupy.get_default_memory_pool().free_all_blocks()
            cupy.get_default_pinned_memory_pool().free_all_blocks()
        except Exception as exc:
            _log.warning("could not free the CuPy memory pool: %s", exc)

    def random_generator(self, seed: int | None, device: Device) -> Any:
        """On a GPU the generator's state lives in CuPy's pool, one cuRAND state per thread (about 12 MiB
        on an H200's 132 multiprocessors), so build one only where it is drawn from."""
        with self.use(device):
            return self.import_library().random.default_rng(seed)

    def seed(self, seed: int, device: Device) -> None:
        with self.use(device):
            self.import_library().random.seed(seed)

    def fingerprint_fields(self, device: Device) -> dict[str, Any]:
        cupy = self.import_library()
        runtime = cupy.cuda.runtime
        fields = super().fingerprint_fields(device)
        fields["library_version"] = str(cupy.__version__)
        fields["runtime_version"] = int(runtime.runtimeGetVersion())
        fields["driver_version"] = self._driver_release()
        return fields

    def _driver_release(self) -> str | None:
        if self.build != "cuda":
            return None  # amdsmi's driver version is the ROCm telemetry's; none read here yet
        from engine.backend import driver_release  # NVML's reader lives with the facade's fingerprint

        return driver_release()

    def extra_fields(self, device: Device) -> dict[str, Any]:
        """The `gpu` block the fingerprint has always had (its stable fields make the device's id)."""
        from engine.backend import cuda_driver_version, driver_release

        cupy = self.import_library()
        index = device.index or 0
        runtime = cupy.cuda.runtime
        props = runtime.getDeviceProperties(index)
        return {
            "gpu": {
                "name": gpu_name(cupy, index),
                "index": index,
                "total_memory_bytes": int(props.get("totalGlobalMem", 0)),
                "compute_capability": f"{props.get('major')}.{props.get('minor')}",
                "driver_version": driver_release(),
                "cuda_driver_version": cuda_driver_version(),
                "cuda_runtime_version": int(runtime.runtimeGetVersion()),
                "cupy_version": str(cupy.__version__),
                "tf32": os.environ.get("CUPY_TF32", "0"),
            }
        }


def gpu_name(cupy: ModuleType, index: int) -> str:
    """The GPU's name as the runtime reports it."""
    name = cupy.cuda.runtime.getDeviceProperties(index).get("name", b"")
    return name.decode() if isinstance(name, bytes) else str(name)
