"""The default backend: NumPy on the host's CPU (x86 or aarch64), with whichever BLAS NumPy carries.

(Named `numpy_backend`, not `numpy`, so that no tool reading this folder mistakes it for NumPy itself.)
"""

from __future__ import annotations

import functools
import platform
from types import ModuleType

import numpy as np

from engine import kernels
from engine.backends.base import Backend, Device, DeviceError, DeviceInfo
from engine.backends.vendors import cpu_vendor
from engine.grammar import DeviceBackend, DeviceRef


@functools.cache
def _cpuinfo() -> str:
    """/proc/cpuinfo's text ("" where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return ""


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, else what the platform says)."""
    for line in _cpuinfo().splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def host_cpu_vendor() -> str:
    """The vendor of this host's CPU, as every backend of a CPU device names it (`cpu_vendor`)."""
    return cpu_vendor(cpu_model(), platform.machine(), platform.system(), _cpuinfo())


class NumpyBackend(Backend):
    name = "numpy"
    words = (DeviceBackend("cpu"),)
    extra = None
    library = "numpy"
    distributions = ("numpy",)
    class_queue = "cpu"
    fork_safe = True
    summary = "NumPy and its BLAS on the host's CPU"

    def import_library(self) -> ModuleType:
        return np

    def library_version(self) -> str:
        return str(np.__version__)

    def resolve(self, ref: DeviceRef) -> Device:
        if ref.selector is not None:
            raise DeviceError(f"device {ref.name!r}: the CPU takes no index; use cpu")
        return Device("cpu", None, "numpy")

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo("cpu", cpu_model(), self.vendor(Device()), True)]

    def hardware_kind(self, ref: DeviceRef) -> str:
        return "cpu"

    def float64_by_spelling(self, ref: DeviceRef) -> bool:
        return True

    def vendor(self, device: Device) -> str:
        return host_cpu_vendor()

    def xp(self, device: Device) -> ModuleType:
        return np

    def host_memory_parts(
        self, ref: DeviceRef, parts: dict[str, int], relu_values: int = 0
    ) -> dict[str, int]:
        """Numba's runtime where the one-pass kernels (`engine.kernels`) run: a ReLU of
        `kernels.MIN_VALUES` values or more (a smaller job never imports Numba)."""
        if relu_values >= kernels.MIN_VALUES and kernels.installed():
            return {"compiled_kernels": kernels.KERNELS_RUNTIME_BYTES}
        return {}
