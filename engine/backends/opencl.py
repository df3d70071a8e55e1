"""OpenCL through PyOpenCL and CLBlast: `opencl:<platform>:<device>` (`opencl:0:0`), numbered as PyOpenCL
lists them (`pyopencl.get_platforms()`, then each platform's `get_devices()`).

Any OpenCL device: AMD and ARM Mali GPUs, FPGA boards, pocl on a CPU. The array module is
`engine.backends.opencl_numpy` (NumPy's functions over OpenCL buffers, GEMM by CLBlast), one per device's
command queue, which this backend makes once per device: `synchronize` is that queue's `finish()`.

The spelling says nothing about the device (numbers only), so float64 is the device's own answer
(`double_fp_config`), and the API asks the device; the vendor is the device's vendor string read through
`engine.backends.vendors`, except a CPU device, which is this host's CPU whatever its runtime (pocl names
itself the vendor of an AMD CPU as readily as of an Intel one).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform as host
from types import ModuleType
from typing import Any

from engine.backends.base import Backend, Device, DeviceError, DeviceInfo
from engine.backends.numpy_backend import cpu_model
from engine.backends.vendors import cpu_vendor, vendor_of_name
from engine.grammar import DeviceBackend, DeviceRef

# What PyOpenCL, pocl and its compiled kernels add to a process's resident set: the textbook net's train
# job peaked at 361 MiB on pocl's CPU device while pocl compiled its kernels (a cold cache), 229 MiB with
# them cached, against NumPy's 82 MiB (measured here, pyopencl 2026.1.4, pocl 3.1).
RUNTIME_BYTES = 320 * 2**20

_MODULES: dict[str, Any] = {}  # selector -> its array module: one command queue per device for the process


def numbers_of(selector: str | None) -> tuple[int, int]:
    """(platform, device) of `0:1`."""
    platform, _, device = (selector or "0:0").partition(":")
    return int(platform or 0), int(device or 0)


class OpenclBackend(Backend):
    name = "opencl"
    words = (
        DeviceBackend("opencl", selector=r"\d{1,2}:\d{1,2}", bare=False, selector_name="<platform>:<device>"),
    )
    extra = "opencl"
    library = "pyopencl"
    distributions = ("pyopencl",)
    class_queue = None
    fork_safe = False  # an OpenCL context and its queue do not survive a fork
    runtime_bytes = RUNTIME_BYTES
    summary = "PyOpenCL and CLBlast on any OpenCL device (AMD, ARM Mali, FPGA boards, pocl on CPUs)"

    # --- devices -------------------------------------------------------------------------------------

    def cl_device(self, device: Device) -> Any:
        """PyOpenCL's device of `device`."""
        platform, number = numbers_of(device.selector)
        return self.import_library().get_platforms()[platform].get_devices()[number]

    def _listed(self) -> list[tuple[str, Any]]:
        """(`opencl:P:D`, device) for every device of every platform here."""
        cl = self.import_library()
        try:
            platforms = cl.get_platforms()
        except cl.LogicError:  # "clGetPlatformIDs failed: PLATFORM_NOT_FOUND_KHR": no ICD installed
            return []
        return [
            (f"opencl:{p}:{d}", found)
            for p, platform in enumerate(platforms)
            for d, found in enumerate(platform.get_devices())
        ]

    def resolve(self, ref: DeviceRef) -> Device:
        platform, number = numbers_of(ref.selector)
        listed = self._listed()
        if f"opencl:{platform}:{number}" not in (spelling for spelling, _ in listed):
            available = ", ".join(spelling for spelling, _ in listed) or (
                "none (is an OpenCL runtime installed? on Debian: apt-get install pocl-opencl-icd)"
            )
            raise DeviceError(
                f"device {ref.name!r}: this host has no such OpenCL device; available: {available}"
            )
        found = dict(listed)[f"opencl:{platform}:{number}"]
        return Device(_kind(self.import_library(), found), number, self.name, f"{platform}:{number}")

    def devices(self) -> list[DeviceInfo]:
        cl = self.import_library()
        infos = []
        for spelling, found in self._listed():
            device = Device(_kind(cl, found), None, self.name, spelling.removeprefix("opencl:"))
            infos.append(
                DeviceInfo(
                    spelling, str(found.name).strip(), self.vendor(device), bool(found.double_fp_config)
                )
            )
        return infos

    def hardware_kind(self, ref: DeviceRef) -> str:
        return "accelerator"  # numbers only: what the device is, only the device says

    def supports_float64(self, device: Device) -> bool:
        return bool(self.cl_device(device).double_fp_config)

    def vendor(self, device: Device) -> str:
        if device.kind == "cpu":
            return cpu_vendor(cpu_model(), host.machine(), host.system())
        found = self.cl_device(device)
        return vendor_of_name(f"{found.vendor} {found.name}")

    def hardware_name(self, device: Device) -> str | None:
        if device.kind == "cpu":
            return super().hardware_name(device)
        return str(self.cl_device(device).name).strip()

    # --- arrays, clocks, memory ----------------------------------------------------------------------

    def xp(self, device: Device) -> ModuleType:
        return self.array_module(device.selector or "0:0")

    def array_module(self, selector: str) -> Any:
        """The array module of the device's one command queue (made on first use, kept for the process)."""
        module = _MODULES.get(selector)
        if module is None:
            cl = self.import_library()
            self.import_clblast()
            from engine.backends.opencl_numpy import OpenclNumpy

            found = self.cl_device(Device("accelerator", None, self.name, selector))
            module = _MODULES[selector] = OpenclNumpy(cl.CommandQueue(cl.Context([found])))
        return module

    @staticmethod
    def queues_made() -> list[str]:
        """The devices (selectors) this process has made a command queue on, i.e. run OpenCL work on."""
        return sorted(_MODULES)

    def release_memory(self) -> None:
        """Let go of the buffers each kernel was last enqueued with (a kernel keeps its last arguments,
        `engine.backends.opencl_numpy`), so a finished job's arrays are freed; the kernels stay compiled."""
        for module in _MODULES.values():
            module.forget_arguments()

    def import_clblast(self) -> ModuleType:
        """pyclblast, which does the matrix products; missing, a DeviceError naming the extra."""
        try:
            return importlib.import_module("pyclblast")
        except ImportError as exc:
            raise DeviceError(
                "the opencl backend needs pyclblast for its matrix products, which is not installed "
                f"(install libclblast-dev, then the opencl extra: {self.install_hint()})"
            ) from exc

    def synchronize(self, device: Device) -> None:
        self.array_module(device.selector or "0:0").queue.finish()

    def host_memory_parts(
        self, ref: DeviceRef, parts: dict[str, int], relu_values: int = 0
    ) -> dict[str, int]:
        """PyOpenCL's runtime; on a CPU device (pocl) the buffers are host memory too, a second set of
        the job's arrays beside NumPy's copies of the data set."""
        extra = {"opencl_runtime": RUNTIME_BYTES}
        extra["opencl_arrays"] = sum(value for name, value in parts.items() if name != "runtime")
        return extra

    def free_memory_bytes(self, device: str) -> tuple[int, str]:
        selector = device.strip().lower().removeprefix("opencl:")
        found = self.cl_device(Device("accelerator", None, self.name, selector))
        cl = self.import_library()
        if found.type & cl.device_type.CPU:
            return super().free_memory_bytes(device)
        return int(found.global_mem_size), f"{str(found.name).strip()} ({device})"

    # --- identity ------------------------------------------------------------------------------------

    def fingerprint_fields(self, device: Device) -> dict[str, Any]:
        """PyOpenCL's version as the library's, the device's driver, and the OpenCL platform and CLBlast
        wrapper's versions."""
        found = self.cl_device(device)
        fields = super().fingerprint_fields(device)
        fields["driver_version"] = str(found.driver_version)
        fields["runtime_version"] = str(found.platform.version)
        fields["opencl"] = {
            "platform_name": str(found.platform.name),
            "platform_version": str(found.platform.version),
            "device_name": str(found.name).strip(),
            "device_vendor": str(found.vendor),
            "device_version": str(found.version),
            "compute_units": int(found.max_compute_units),
            "global_memory_bytes": int(found.global_mem_size),
            "pyclblast_version": _distribution_version("pyclblast"),
        }
        return fields


def _kind(cl: ModuleType, found: Any) -> str:
    """`cpu`, `gpu` or `accelerator`, from the device's type."""
    if found.type & cl.device_type.CPU:
        return "cpu"
    if found.type & cl.device_type.GPU:
        return "gpu"
    return "accelerator"


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
