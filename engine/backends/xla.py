"""XLA through JAX: `xla:<platform>:<N>` (`xla:cpu:0`, `xla:gpu:0`, `xla:tpu:0`).

What is here is what the spelling alone says (the grammar, the extra, float64 and the vendor by
platform), so the API can judge a job without JAX. The library half (devices, arrays, the jitted step,
clocks, memory) is the `xla` branch's; until it lands, resolving a device says so.
"""

from __future__ import annotations

import platform as host

from engine.backends.base import Backend, Device, DeviceError, DeviceInfo
from engine.backends.numpy_backend import cpu_model
from engine.backends.vendors import cpu_vendor
from engine.grammar import DeviceBackend, DeviceRef

PLATFORMS = ("cpu", "gpu", "cuda", "rocm", "tpu")
# TPUs have no float64 unit; JAX on a CPU or GPU has float64 once `jax_enable_x64` is set.
_PLATFORM_FLOAT64 = {"cpu": True, "gpu": True, "cuda": True, "rocm": True, "tpu": False}
_PLATFORM_VENDOR = {"cuda": "NVIDIA", "rocm": "AMD", "tpu": "Google"}


def platform_of(selector: str | None) -> str:
    """`tpu` of `tpu:0`."""
    return (selector or "").partition(":")[0]


class XlaBackend(Backend):
    name = "xla"
    words = (
        DeviceBackend(
            "xla",
            selector=r"(?:" + "|".join(PLATFORMS) + r"):\d{1,2}",
            bare=False,
            selector_name="<platform>:<N>",
        ),
    )
    extra = "xla"
    library = "jax"
    distributions = ("jax",)
    class_queue = None
    fork_safe = False
    summary = "JAX/XLA on TPUs, CPUs and GPUs"

    def resolve(self, ref: DeviceRef) -> Device:
        self.import_library()
        raise DeviceError(f"device {ref.name!r}: the xla backend's device support is not in this build yet")

    def devices(self) -> list[DeviceInfo]:
        self.import_library()
        return []

    def hardware_kind(self, ref: DeviceRef) -> str:
        platform = platform_of(ref.selector)
        return {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)

    def float64_by_spelling(self, ref: DeviceRef) -> bool | None:
        return _PLATFORM_FLOAT64.get(platform_of(ref.selector))

    def supports_float64(self, device: Device) -> bool:
        return _PLATFORM_FLOAT64.get(platform_of(device.selector), True)

    def vendor(self, device: Device) -> str:
        platform = platform_of(device.selector)
        if platform == "cpu":
            return cpu_vendor(cpu_model(), host.machine(), host.system())
        return _PLATFORM_VENDOR.get(platform, "unknown")
