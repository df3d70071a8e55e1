"""Intel oneAPI through dpnp and dpctl (SYCL, oneMKL): `oneapi:<SYCL filter>`.

The selector is a SYCL filter string, `[<backend>:]<type>[:<N>]`: `oneapi:opencl:cpu:0` (Intel's OpenCL CPU
runtime, on Intel and AMD x86 CPUs alike), `oneapi:level_zero:gpu:0` (an Intel GPU), or shorter
(`oneapi:gpu`: the first GPU); a device resolves to its full filter string, which names it in results. Its
devices are dpctl's (`dpctl.get_devices()`), its arrays dpnp's, its queue the one dpnp allocates on
(`dpctl.get_device_cached_queue`), so `synchronize` is that queue's `wait()`.

The pip runtime's ICD file. `pip install intel-opencl-rt` installs `<env>/etc/OpenCL/vendors/intel-cpu.icd`,
which names `/opt/anaconda1anaconda2anaconda3/lib/libintelocl.so`: conda's placeholder prefix, never
rewritten by pip. The OpenCL loader therefore finds no CPU device, and dpctl lists none. Before dpctl is
first imported, `import_library` points the loader at the runtime inside this environment
(`OCL_ICD_FILENAMES=<sys.prefix>/lib/libintelocl.so`, `point_icd_loader_at_runtime`), unless the user set
the variable or the file is not there: no manual step. The loader reads the variable once, when it first
enumerates platforms, so it must be set before dpctl is imported: a process that imported dpctl itself
earlier keeps what it had.

dpnp allocates an array without a `device=` on the process's default SYCL device, and the engine makes
its buffers without one; so a process computes on one oneAPI device, its default (on this kind of host
the only one). `resolve` refuses any other with the variable that makes it the default
(`ONEAPI_DEVICE_SELECTOR`, which `pin` sets for a worker of one device).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from types import ModuleType
from typing import Any

from engine.backends.base import Backend, Device, DeviceError, DeviceInfo, Timer
from engine.backends.numpy_backend import host_cpu_vendor
from engine.backends.vendors import vendor_of_name
from engine.grammar import DeviceBackend, DeviceRef

ICD_VARIABLE = "OCL_ICD_FILENAMES"
SELECTOR_VARIABLE = "ONEAPI_DEVICE_SELECTOR"
SYCL_BACKENDS = ("opencl", "level_zero", "cuda", "hip")
SYCL_TYPES = ("cpu", "gpu", "accelerator")


def point_icd_loader_at_runtime(
    environ: MutableMapping[str, str] = os.environ, prefix: str = sys.prefix
) -> str | None:
    """Name this environment's Intel OpenCL CPU runtime to the OpenCL loader (see the module docstring).

    Sets `OCL_ICD_FILENAMES` to `<prefix>/lib/libintelocl.so` when the user has not set it and the file
    exists; returns the value set, or None when nothing was changed.
    """
    runtime = Path(prefix) / "lib" / "libintelocl.so"
    if ICD_VARIABLE in environ or not runtime.is_file():
        return None
    environ[ICD_VARIABLE] = str(runtime)
    return str(runtime)


def selector_parts(selector: str | None) -> tuple[str | None, str, int | None]:
    """(`opencl`, `cpu`, 0) of `opencl:cpu:0`; (None, `gpu`, None) of `gpu` (the grammar asks for a type)."""
    parts = (selector or "").split(":")
    backend = parts[0] if parts[0] in SYCL_BACKENDS else None
    device_type = next((part for part in parts if part in SYCL_TYPES), "gpu")
    return backend, device_type, int(parts[-1]) if parts[-1].isdigit() else None


class DropoutGenerator:
    """The one `Generator` method the engine draws with, `random(shape, dtype)`, over dpnp's `RandomState`
    (dpnp has no `default_rng`): uniform [0, 1) numbers made on the device's queue."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def random(self, shape: tuple[int, ...], dtype: Any = None) -> Any:
        return self.state.uniform(0.0, 1.0, size=shape, dtype=dtype or "float64")


class OneapiBackend(Backend):
    name = "oneapi"
    words = (
        DeviceBackend(
            "oneapi",
            selector=r"(?:(?:"
            + "|".join(SYCL_BACKENDS)
            + r"):)?(?:"
            + "|".join(SYCL_TYPES)
            + r")(?::\d{1,2})?",
            bare=False,
            selector_name="<SYCL filter>",
        ),
    )
    extra = "oneapi"
    library = "dpnp"
    distributions = ("dpnp",)
    class_queue = None
    fork_safe = False  # a SYCL runtime's threads and queues do not survive a fork
    # The SYCL runtime, oneMKL and the OpenCL CPU runtime's compiled kernels: a job's peak resident set was
    # 450-595 MiB above NumPy's baseline (train, parity, gemm on opencl:cpu:0, harness.memory_peak).
    runtime_bytes = 640 * 2**20
    summary = "dpnp and dpctl (SYCL, oneMKL) on Intel GPUs and on x86 CPUs through Intel's OpenCL runtime"

    # --- the library ---------------------------------------------------------------------------------

    def import_library(self) -> ModuleType:
        """dpnp (and dpctl), the OpenCL loader pointed at the pip runtime first (module docstring)."""
        if "dpctl" not in sys.modules:
            point_icd_loader_at_runtime()
        return super().import_library()

    def dpctl(self) -> ModuleType:
        self.import_library()
        return importlib.import_module("dpctl")

    def sycl_device(self, device: Device) -> Any:
        """dpctl's device of `device` (its filter string)."""
        return self.dpctl().SyclDevice(device.selector)

    def queue(self, device: Device) -> Any:
        """The queue dpnp submits the device's work to (the one it caches per device)."""
        dpctl = self.dpctl()
        return dpctl.get_device_cached_queue(self.sycl_device(device))

    # --- devices -------------------------------------------------------------------------------------

    def resolve(self, ref: DeviceRef) -> Device:
        from engine.backends.opencl import OpenclBackend

        used = OpenclBackend.queues_made()
        if used:
            # Seen here: after pocl ran kernels through PyOpenCL, dpnp's first allocation on Intel's OpenCL
            # runtime failed (USMAllocationError) or the process crashed.
            raise DeviceError(
                f"device {ref.name!r} cannot run in a process that has run OpenCL work through PyOpenCL "
                f"(on {', '.join('opencl:' + s for s in used)}): Intel's OpenCL runtime then fails to "
                "allocate; "
                "run oneapi jobs in a process of their own (a worker per device, or `bpbench run`, is one)"
            )
        dpctl = self.dpctl()
        available = [f"oneapi:{d.filter_string}" for d in self._usable_devices()]
        try:
            wanted = dpctl.SyclDevice(ref.selector)
        except Exception:  # SyclDeviceCreationError: no such device on this host
            none = "none (is a SYCL runtime installed? pip install 'bpbench[oneapi]')"
            listed = ", ".join(available) or none
            runtime = Path(sys.prefix) / "lib" / "libintelocl.so"
            if not available and ICD_VARIABLE not in os.environ and runtime.is_file():
                # dpctl was imported before this backend could point the loader at the pip runtime.
                early = "dpctl was imported before bpbench's oneapi backend"
                listed += f"; {early}: set {ICD_VARIABLE}={runtime}"
            raise DeviceError(
                f"device {ref.name!r} was asked for, but this host's SYCL runtime has no such device; "
                f"available: {listed}"
            ) from None
        if not wanted.has_aspect_usm_device_allocations:
            raise DeviceError(
                f"device {ref.name!r} is {wanted.name} on {wanted.sycl_platform.name}, where dpnp cannot "
                f"allocate (no USM device allocations); available: {', '.join(available) or 'none'}"
            )
        default = dpctl.select_default_device()
        if wanted != default:
            raise DeviceError(
                f"device {ref.name!r} was asked for, but dpnp allocates on this process's default SYCL "
                f"device, oneapi:{default.filter_string}; start the process with "
                f"{SELECTOR_VARIABLE}=*:{selector_parts(ref.selector)[1]} (a worker of the device sets it)"
            )
        selector = str(wanted.filter_string)  # the full filter: `gpu` resolves to `level_zero:gpu:0`
        _, device_type, number = selector_parts(selector)
        return Device(device_type, number, self.name, selector=selector)

    def _usable_devices(self) -> list[Any]:
        """dpctl's devices that dpnp can allocate on (USM device allocations). The SYCL runtime's OpenCL
        adapter also lists other OpenCL platforms' devices (pocl's CPU device, seen here), which have none."""
        return [d for d in self.dpctl().get_devices() if d.has_aspect_usm_device_allocations]

    def devices(self) -> list[DeviceInfo]:
        found = []
        for sycl in self._usable_devices():
            selector = str(sycl.filter_string)
            device = Device(str(sycl.device_type.name), None, self.name, selector=selector)
            found.append(
                DeviceInfo(
                    f"oneapi:{selector}", str(sycl.name), self.vendor(device), bool(sycl.has_aspect_fp64)
                )
            )
        return found

    def hardware_kind(self, ref: DeviceRef) -> str:
        return selector_parts(ref.selector)[1]

    def float64_by_spelling(self, ref: DeviceRef) -> bool | None:
        # Intel's OpenCL CPU runtime computes in float64; a GPU may not (Arc has no float64 unit).
        return True if selector_parts(ref.selector)[1] == "cpu" else None

    def supports_float64(self, device: Device) -> bool:
        return bool(self.sycl_device(device).has_aspect_fp64)

    def vendor(self, device: Device) -> str:
        """A CPU device is this host's CPU (the runtime names itself, Intel, whatever the CPU is); a GPU
        is named by its own vendor string."""
        if selector_parts(device.selector)[1] == "cpu":
            return host_cpu_vendor()
        sycl = self.sycl_device(device)
        return vendor_of_name(f"{sycl.vendor} {sycl.name}")

    def hardware_name(self, device: Device) -> str | None:
        """A CPU device's model from the host (the runtime's name is generic), a GPU's from the device."""
        if device.kind == "cpu":
            return super().hardware_name(device)
        return str(self.sycl_device(device).name)

    def pin(self, ref: DeviceRef) -> tuple[dict[str, str], str]:
        """Only the devices of that type are visible (`*:cpu`); their numbering stays, so the spelling does
        too (the default is the first: a worker of `...:N`, N > 0, or of a type two backends serve, is
        refused by `resolve` if it is not the default). Naming the backend as well (`opencl:cpu`) leaves the
        pip runtime with no device at all (its OpenCL adapter fails to start, UR error 37, measured).
        An `ONEAPI_DEVICE_SELECTOR` the operator set (one of two GPUs: `level_zero:1`) is kept."""
        if SELECTOR_VARIABLE in os.environ:
            return {}, ref.name
        return {SELECTOR_VARIABLE: f"*:{selector_parts(ref.selector)[1]}"}, ref.name

    # --- arrays, clocks, memory ----------------------------------------------------------------------

    def synchronize(self, device: Device) -> None:
        self.queue(device).wait()

    def start_timer(self, device: Device) -> Timer:
        """`perf_counter` between two waits on the device's queue (an in-order wait: the work queued
        before the start is not counted, all the work queued before the stop is)."""
        queue = self.queue(device)
        queue.wait()
        t0 = time.perf_counter()

        def stop() -> float:
            queue.wait()
            return time.perf_counter() - t0

        return stop

    def memory_probe(self, device: Device) -> Callable[[], dict[str, int]]:
        """Host RSS: on a CPU device dpnp's USM allocations are host memory, counted there. A GPU's own
        use is not readable through dpctl per process, so a GPU job reports its host side only."""
        return super().memory_probe(device)

    def free_memory_bytes(self, device: str) -> tuple[int, str]:
        selector = device.strip().lower().removeprefix("oneapi:")
        if selector_parts(selector)[1] == "cpu":
            return super().free_memory_bytes(device)
        sycl = self.dpctl().SyclDevice(selector)
        free = self.dpctl().utils.intel_device_info(sycl).get("free_memory")  # needs ZES_ENABLE_SYSMAN=1
        return int(free if free is not None else sycl.global_mem_size), f"{sycl.name} ({device})"

    def random_generator(self, seed: int | None, device: Device) -> Any:
        dpnp = self.import_library()
        return DropoutGenerator(dpnp.random.RandomState(seed, sycl_queue=self.queue(device)))

    def seed(self, seed: int, device: Device) -> None:
        self.import_library().random.seed(seed % 2**32, sycl_queue=self.queue(device))

    # --- identity ------------------------------------------------------------------------------------

    def fingerprint_fields(self, device: Device) -> dict[str, Any]:
        """dpnp's version as the library's, the device's driver, and the runtime: the SYCL backend, the
        versions of dpctl, the SYCL runtime, oneMKL and (on a CPU) the OpenCL CPU runtime."""
        dpnp, dpctl = self.import_library(), self.dpctl()
        sycl = self.sycl_device(device)
        fields = super().fingerprint_fields(device)
        fields["library_version"] = str(dpnp.__version__)
        fields["driver_version"] = str(sycl.driver_version)
        fields["runtime_version"] = _distribution_version("intel-sycl-rt")
        fields["oneapi"] = {
            "device_name": str(sycl.name),
            "filter_string": str(sycl.filter_string),
            "sycl_backend": str(sycl.backend.name),
            "device_type": str(sycl.device_type.name),
            "runtime_vendor": str(sycl.vendor),
            "compute_units": int(sycl.max_compute_units),
            "global_memory_bytes": int(sycl.global_mem_size),
            "dpctl_version": str(dpctl.__version__),
            "onemkl_version": _distribution_version("onemkl-sycl-blas"),
            "opencl_runtime_version": _distribution_version("intel-opencl-rt"),
            "icd_filenames": os.environ.get(ICD_VARIABLE),
        }
        return fields


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
