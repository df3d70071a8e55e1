"""XLA through JAX: `xla:<platform>:<N>` (`xla:cpu:0`, `xla:gpu:0`, `xla:tpu:0`).

The spelling alone says the grammar, the extra, float64 and the vendor by platform, so the API judges
a job without JAX. The library half imports JAX on first use: devices are `jax.devices(platform)`; the
array module is `engine.backends.jax_numpy.xp` (jax.numpy taking NumPy's `out=`), so the engine's own
layers run on it, and the train kind compiles each whole step with `jax.jit` (`engine.jit_step`).

float64: TPUs have none. On a CPU or GPU, JAX computes in float64 once `jax_enable_x64` is on, which
resolving such a device turns on (for the process: a worker runs one device). The engine names every
array's dtype, so a float32 job stays float32 with it on (tests/engine/test_backend_xla.py).
Resolving a device also makes it JAX's default device, where every array of the job is then made.

float32 means float32: resolving a device sets JAX's default matrix-product precision to "highest". Left at
its default, XLA on an NVIDIA GPU multiplies float32 matrices in TF32 (10-bit mantissas): on the H200 every
float32 parity preset missed the 2e-3 bound (worst relative error 0.42, 4 Dec 2026), where CuPy, which
keeps TF32 off unless CUPY_TF32=1, passed all seven. The fingerprint records the precision.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from engine.backends.base import Backend, Device, DeviceError, DeviceInfo
from engine.backends.numpy_backend import cpu_model, host_cpu_vendor
from engine.grammar import DeviceBackend, DeviceRef

PLATFORMS = ("cpu", "gpu", "cuda", "rocm", "tpu")
# What importing jax/jaxlib and compiling a training step adds to a process's resident set: 292 MiB
# measured here (jax 0.10.2, the textbook net's train job: peak 357 MiB against NumPy's 62 MiB).
RUNTIME_BYTES = 320 * 2**20
# TPUs have no float64 unit; JAX on a CPU or GPU has float64 once `jax_enable_x64` is set.
_PLATFORM_FLOAT64 = {"cpu": True, "gpu": True, "cuda": True, "rocm": True, "tpu": False}
_PLATFORM_VENDOR = {"cuda": "NVIDIA", "rocm": "AMD", "tpu": "Google"}
# float32 products in float32 (not TF32 or bfloat16 passes), on every platform; see the module's docstring.
MATMUL_PRECISION = "highest"


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

    # --- devices -------------------------------------------------------------------------------------

    def _platform_devices(self, platform: str) -> list[Any]:
        """`jax.devices(platform)`, or none where JAX has no such platform here."""
        jax = self.import_library()
        try:
            return list(jax.devices(platform))
        except RuntimeError:  # "Unknown backend: 'tpu' requested, but no platforms ... are present"
            return []

    def jax_device(self, device: Device) -> Any:
        """The `jax.Device` a Device names."""
        platform, _, index = (device.selector or "cpu:0").partition(":")
        return self._platform_devices(platform)[int(index or 0)]

    def resolve(self, ref: DeviceRef) -> Device:
        jax = self.import_library()
        platform = platform_of(ref.selector)
        index = int((ref.selector or "").rpartition(":")[2] or 0)
        found = self._platform_devices(platform)
        if not 0 <= index < len(found):
            available = ", ".join(info.spelling for info in self.devices()) or "none"
            raise DeviceError(
                f"device {ref.name!r}: JAX has {len(found)} {platform} device(s) here; available: {available}"
            )
        device = Device(self.hardware_kind(ref), index, self.name, ref.selector)
        if _PLATFORM_FLOAT64.get(platform, True):
            jax.config.update("jax_enable_x64", True)
        jax.config.update("jax_default_device", found[index])
        jax.config.update("jax_default_matmul_precision", MATMUL_PRECISION)
        return device

    def devices(self) -> list[DeviceInfo]:
        infos = []
        for platform in ("cpu", "gpu", "tpu"):
            for index, found in enumerate(self._platform_devices(platform)):
                device = Device(platform, index, self.name, f"{platform}:{index}")
                name = cpu_model() if platform == "cpu" else str(found.device_kind)
                infos.append(
                    DeviceInfo(f"xla:{platform}:{index}", name, self.vendor(device), platform != "tpu")
                )
        return infos

    def hardware_kind(self, ref: DeviceRef) -> str:
        platform = platform_of(ref.selector)
        return {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)

    def float64_by_spelling(self, ref: DeviceRef) -> bool | None:
        return _PLATFORM_FLOAT64.get(platform_of(ref.selector))

    def supports_float64(self, device: Device) -> bool:
        if not _PLATFORM_FLOAT64.get(platform_of(device.selector), True):
            return False
        jax = self.import_library()
        return bool(jax.config.jax_enable_x64)  # on once the device is resolved

    def vendor(self, device: Device) -> str:
        platform = platform_of(device.selector)
        if platform == "cpu":
            return host_cpu_vendor()
        if platform == "gpu":  # JAX's own word for whichever GPU its jaxlib plugin drives
            kind = str(self.jax_device(device).client.platform).lower()
            return "AMD" if kind == "rocm" else "NVIDIA"
        return _PLATFORM_VENDOR.get(platform, "unknown")

    def hardware_name(self, device: Device) -> str | None:
        if device.kind == "cpu":
            return super().hardware_name(device)
        return str(self.jax_device(device).device_kind)  # "NVIDIA H200", "TPU v5 lite"

    # --- arrays, clocks, memory ----------------------------------------------------------------------

    def xp(self, device: Device) -> ModuleType:
        from engine.backends.jax_numpy import xp

        return xp  # type: ignore[return-value]

    def synchronize(self, device: Device) -> None:
        from engine.backends.jax_numpy import synchronize

        synchronize()

    def random_generator(self, seed: int | None, device: Device) -> Any:
        from engine.backends.jax_numpy import xp

        return xp.random.default_rng(seed)

    def memory_probe(self, device: Device) -> Callable[[], dict[str, int]]:
        """The host's resident set, and the device's bytes in use where XLA reports them (GPU, TPU)."""
        host_rss = super().memory_probe(device)
        jax_device = self.jax_device(device)

        def probe() -> dict[str, int]:
            reading = host_rss()
            stats = jax_device.memory_stats()
            if stats and "bytes_in_use" in stats:
                reading["xla_device_bytes"] = int(stats["bytes_in_use"])
            return reading

        return probe

    def host_memory_parts(
        self, ref: DeviceRef, parts: dict[str, int], relu_values: int = 0
    ) -> dict[str, int]:
        """JAX's runtime, and on the CPU platform a second set of the job's arrays: XLA's copies of the data
        set and parameters, and the new array every eager operation of an evaluation makes (no buffer is
        reused on JAX). Measured peaks: 357, 601 and 912 MiB for the textbook net, a 784-1024-1024-10 MLP
        on 20k synthetic samples and the convnet, against estimates of 659, 971 and 1217 MiB."""
        extra = {"xla_runtime": RUNTIME_BYTES}
        if platform_of(ref.selector) == "cpu":
            extra["xla_arrays"] = sum(value for name, value in parts.items() if name != "runtime")
        return extra

    def free_memory_bytes(self, device: str) -> tuple[int, str]:
        selector = device.strip().lower().partition(":")[2]
        platform = platform_of(selector)
        if platform != "cpu":
            found = self._platform_devices(platform)
            index = int(selector.rpartition(":")[2] or 0)
            stats = found[index].memory_stats() if index < len(found) else None
            if stats and "bytes_limit" in stats:
                return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), f"XLA device {device}"
        return super().free_memory_bytes(device)

    # --- identity ------------------------------------------------------------------------------------

    def fingerprint_fields(self, device: Device) -> dict[str, Any]:
        import jaxlib

        fields = super().fingerprint_fields(device)
        jax_device = self.jax_device(device)
        fields["runtime_version"] = str(jaxlib.__version__)  # jaxlib: the XLA runtime that runs it
        fields["platform"] = str(jax_device.platform)
        fields["platform_version"] = str(jax_device.client.platform_version)
        fields["device_kind"] = str(jax_device.device_kind)
        fields["matmul_precision"] = str(self.import_library().config.jax_default_matmul_precision)
        return fields
