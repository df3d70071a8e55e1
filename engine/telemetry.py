"""Device telemetry around timed windows: energy, power, clocks, throttling and host load.

A `TelemetrySource` is opened once per job and asked for a `WindowReading` around each timed window:
`begin()` before the first step of the window (after the device was synchronised), `end()` after its last.
Energy comes from counters that the hardware integrates itself, so it is exact for the window however
short it is and costs two reads; clocks, temperature and throttle reasons are point samples taken at both
ends. Nothing runs on a thread during the window, so the timing is not disturbed.

Sources, each used where the host has it (else its fields are `None` and `reason` says why):

- CPU energy: RAPL through the powercap sysfs tree (`/sys/class/powercap/intel-rapl:N/energy_uj`, the
  package domains; AMD's RAPL appears there too). The counters wrap at `max_energy_range_uj`; a window
  that saw a wrap is corrected by one range. Since 2020 `energy_uj` is readable by root only on most
  distributions: that is reported as the reason.
- CPU clock: the current frequency per CPU (`cpufreq/scaling_cur_freq`, else `/proc/cpuinfo`) against the
  nominal one (`cpufreq/base_frequency`, else `cpuinfo_max_freq`); a window whose mean clock is under
  `SLOW_CLOCK_SHARE` (75%, nvbench's rule) of nominal is marked. The cpufreq files are found once per
  source. A host without cpufreq (most virtual machines) has no nominal clock, so no window can be marked
  slow there; its `/proc/cpuinfo` clock is read at most once per `CPUINFO_INTERVAL_S` and reused between
  (reading and parsing it took ~60 us, and the step after it ran ~35 us slower: on a 10-step window of
  the textbook net that was 1-4% of the job's figure).
- Host load: the 1-minute load average before and after; a window where it exceeds the CPU count (more
  runnable tasks than cores, so the job's threads shared them with something else) is marked.
- NVIDIA GPUs: NVML (`nvidia-ml-py`): total energy counter (mJ), power draw, SM and memory clocks,
  temperature, utilisation and the clock-event (throttle) reasons; thermal and power-cap throttling mark the
  window. Optional: absent NVML is a reason, not an error.
- AMD GPUs (CuPy's ROCm build): `amdsmi`, the ROCm SMI library's Python binding: the energy accumulator
  (ticks times `counter_resolution` microjoules), socket power, the GPU metrics table's graphics and
  memory clocks, hotspot temperature, graphics activity, and its ASIC-independent throttle mask
  (`indep_throttle_status`, bit layout from the kernel's `amdgpu_smu.h`); power and thermal throttling
  mark the window. Fields the part does not report ("N/A", or the all-ones sentinel) are `None`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.backends.cupy_common import cupy_if_loaded, is_rocm_build

POWERCAP_ROOT = Path("/sys/class/powercap")
CPU_ROOT = Path("/sys/devices/system/cpu")
PROC_CPUINFO = Path("/proc/cpuinfo")
SLOW_CLOCK_SHARE = 0.75
CPUINFO_INTERVAL_S = 1.0  # /proc/cpuinfo's clock (hosts without cpufreq) is read at most this often


@dataclass(frozen=True)
class WindowReading:
    """What the telemetry saw over one timed window; `marks` is empty for a clean window."""

    seconds: float
    energy_j: float | None
    mean_power_w: float | None
    energy_source: str | None
    energy_reason: str | None
    clock_mhz: float | None
    nominal_clock_mhz: float | None
    load_before: float
    load_after: float
    gpu: dict[str, Any] = field(default_factory=dict)
    marks: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "energy_j": self.energy_j,
            "mean_power_w": self.mean_power_w,
            "energy_source": self.energy_source,
            "energy_reason": self.energy_reason,
            "clock_mhz": self.clock_mhz,
            "nominal_clock_mhz": self.nominal_clock_mhz,
            "load_before": self.load_before,
            "load_after": self.load_after,
            "gpu": dict(self.gpu),
            "marks": list(self.marks),
        }


# --- RAPL -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RaplDomain:
    """One package-level RAPL domain: its energy counter and the value at which the counter wraps."""

    name: str
    energy_file: Path
    max_range_uj: int

    def read_uj(self) -> int:
        return int(self.energy_file.read_text().strip())


def rapl_domains(root: Path | str = POWERCAP_ROOT) -> tuple[list[RaplDomain], str | None]:
    """The readable package domains (`intel-rapl:N`, not their sub-zones, which the package includes),
    or an empty list and the reason there are none."""
    root = Path(root)
    if not root.is_dir():
        return [], f"no RAPL on this host ({root} is absent)"
    zones = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not zones:
        return [], f"no RAPL package domain under {root}"
    domains = []
    for zone in zones:
        energy = zone / "energy_uj"
        try:
            name = (zone / "name").read_text().strip() if (zone / "name").is_file() else zone.name
            max_range = int((zone / "max_energy_range_uj").read_text().strip())
            int(energy.read_text().strip())
        except PermissionError:
            return [], f"RAPL counters are readable by root only on this host ({energy})"
        except (OSError, ValueError) as exc:
            return [], f"RAPL counter {energy} could not be read ({type(exc).__name__})"
        domains.append(RaplDomain(f"{zone.name}:{name}", energy, max_range))
    return domains, None


def energy_delta_uj(before: int, after: int, max_range_uj: int) -> int:
    """Energy between two reads of a counter that wraps to 0 after `max_range_uj` (at most one wrap)."""
    return after - before if after >= before else after + max_range_uj - before


# --- CPU clock and load ------------------------------------------------------------------------------------


def _read_khz(file: Path) -> float | None:
    try:
        return int(file.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


def cpufreq_files(cpu_root: Path = CPU_ROOT) -> list[Path]:
    """Each CPU's current-clock file (`cpufreq/scaling_cur_freq`) where the host exposes one."""
    return [f for f in sorted(cpu_root.glob("cpu[0-9]*/cpufreq/scaling_cur_freq")) if f.is_file()]


def cpuinfo_clock_mhz(cpuinfo: Path = PROC_CPUINFO) -> float | None:
    """The mean of /proc/cpuinfo's `cpu MHz` lines, or None."""
    try:
        values = [
            float(line.split(":", 1)[1])
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("cpu MHz")
        ]
    except (OSError, ValueError):
        values = []
    return sum(values) / len(values) if values else None


def cpu_clock_mhz(
    cpu_root: Path = CPU_ROOT, cpuinfo: Path = PROC_CPUINFO, files: list[Path] | None = None
) -> float | None:
    """The mean current clock over the CPUs (cpufreq when the host exposes it, else /proc/cpuinfo);
    `files`: the cpufreq files already found (`cpufreq_files`)."""
    found = cpufreq_files(cpu_root) if files is None else files
    values = [v for v in (_read_khz(f) for f in found) if v is not None]
    if not values:
        return cpuinfo_clock_mhz(cpuinfo)
    return sum(values) / len(values)


def nominal_clock_mhz(cpu_root: Path = CPU_ROOT) -> float | None:
    """The CPU's nominal clock: `base_frequency` (intel_pstate, amd-pstate), else `cpuinfo_max_freq`."""
    for name in ("base_frequency", "cpuinfo_max_freq"):
        value = _read_khz(cpu_root / "cpu0" / "cpufreq" / name)
        if value:
            return value
    return None


class GpuMeter(Protocol):
    """What a window needs of a GPU's management library: its energy counter and a point sample."""

    def energy_mj(self) -> float: ...

    def sample(self) -> dict[str, Any]: ...


# --- NVML ------------------------------------------------------------------------------------------------

# NVML clock-event reasons that mean the device was held below its clocks by heat or a power cap (idle
# and application-clock settings are not throttling). Bit values from nvml.h.
NVML_THROTTLE_REASONS = {
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
}


def throttle_reasons(mask: int) -> list[str]:
    """The names of the throttling bits set in an NVML clock-event reasons mask."""
    return [name for bit, name in NVML_THROTTLE_REASONS.items() if mask & bit]


def visible_entry(index: int, variable: str) -> str | None:
    """The entry of a visible-devices variable (`CUDA_VISIBLE_DEVICES`, `HIP_VISIBLE_DEVICES`) that the
    runtime's GPU `index` stands for (a physical index or a UUID), or None where the variable is unset."""
    value = os.environ.get(variable)
    if value is None:
        return None
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    return entries[index] if index < len(entries) else None


def cupy_pci_bus_id(index: int) -> str | None:
    """The PCI address of the runtime's GPU `index`, where CuPy is already loaded (its CUDA or HIP build)."""
    cupy = cupy_if_loaded()
    if cupy is None:
        return None
    try:
        return str(cupy.cuda.Device(index).pci_bus_id)
    except Exception:  # CUDA/HIP errors: the meter falls back to the visible-devices mapping
        return None


def by_pci_address(lookup: Callable[[str], Any], index: int) -> Any:
    """`lookup(address)` for the runtime's GPU `index`, where CuPy gives its PCI address and the meter's
    library takes it; None otherwise (the caller then maps through the visible-devices variable)."""
    bus_id = cupy_pci_bus_id(index)
    if not bus_id:
        return None
    try:
        return lookup(bus_id)
    except Exception:  # an address the library does not parse
        return None


def nvml_handle(nvml: Any, index: int) -> Any:
    """NVML's handle of the GPU that CUDA numbers `index` in this process.

    NVML numbers every GPU of the host in PCI order and ignores `CUDA_VISIBLE_DEVICES`, with which a
    bpbench worker for `gpu:3` runs its jobs on `gpu:0`: opened by index, every such worker read GPU 0's
    energy. So: by PCI address where CuPy says it, else through the visible-devices entry (a physical index
    or a `GPU-` UUID), else by index (no variable: the two numberings agree but for CUDA_DEVICE_ORDER).
    """
    handle = by_pci_address(lambda address: nvml.nvmlDeviceGetHandleByPciBusId(address), index)
    if handle is not None:
        return handle
    entry = visible_entry(index, "CUDA_VISIBLE_DEVICES")
    if entry is not None and entry.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(entry))
    if entry is not None and entry.startswith("GPU-"):
        return nvml.nvmlDeviceGetHandleByUUID(entry)
    return nvml.nvmlDeviceGetHandleByIndex(index)


class NvmlDevice:
    """One NVIDIA GPU through NVML; `open(index)` returns None and a reason when NVML is not there."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml = nvml
        self._handle = handle

    @classmethod
    def open(cls, index: int) -> tuple[NvmlDevice | None, str | None]:
        try:
            import pynvml
        except ImportError:
            return None, "NVML is not installed (pip install nvidia-ml-py)"
        try:
            pynvml.nvmlInit()
            return cls(pynvml, nvml_handle(pynvml, index)), None
        except Exception as exc:  # NVMLError and its many subclasses
            return None, f"NVML could not open GPU {index}: {exc}"

    def energy_mj(self) -> float:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def sample(self) -> dict[str, Any]:
        nvml, handle = self._nvml, self._handle
        mask = int(nvml.nvmlDeviceGetCurrentClocksEventReasons(handle))
        return {
            "power_w": nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
            "sm_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
            "memory_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM),
            "temperature_c": nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
            "utilization_pct": nvml.nvmlDeviceGetUtilizationRates(handle).gpu,
            "throttle_reasons": throttle_reasons(mask),
        }


# --- amdsmi (AMD GPUs) ------------------------------------------------------------------------------------

# The ASIC-independent throttler bits of `indep_throttle_status` (linux drivers/gpu/drm/amd/pm/inc/
# amdgpu_smu.h): 0-7 power limits, 16-23 current limits, 32-47 temperature limits, 56-57 other.
AMD_THROTTLE_GROUPS = (
    (range(0, 8), "power_cap"),
    (range(16, 24), "current_limit"),
    (range(32, 48), "thermal"),
)
AMD_THROTTLE_BITS = {
    0: "ppt0", 1: "ppt1", 2: "ppt2", 3: "ppt3", 4: "spl", 5: "fppt", 6: "sppt", 7: "sppt_apu",
    16: "tdc_gfx", 17: "tdc_soc", 18: "tdc_mem", 19: "tdc_vdd", 20: "tdc_cvip", 21: "edc_cpu", 22: "edc_gfx",
    23: "apcc", 32: "temp_gpu", 33: "temp_core", 34: "temp_mem", 35: "temp_edge", 36: "temp_hotspot",
    37: "temp_soc", 38: "temp_vr_gfx", 39: "temp_vr_soc", 40: "temp_vr_mem0", 41: "temp_vr_mem1",
    42: "temp_liquid0", 43: "temp_liquid1", 44: "vrhot0", 45: "vrhot1", 46: "prochot_cpu", 47: "prochot_gfx",
}  # fmt: skip
_AMD_NOT_REPORTED = {0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF}


def amd_number(value: Any) -> float | None:
    """A metric as amdsmi gives it, or None where the part does not report it ("N/A", all-ones)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value in _AMD_NOT_REPORTED:
        return None
    return float(value)


def amd_throttle_reasons(mask: Any) -> list[str]:
    """`group:bit` names of the throttling bits set in an `indep_throttle_status` mask."""
    number = amd_number(mask)
    if number is None:
        return []
    bits = int(number)
    return [
        f"{group}:{AMD_THROTTLE_BITS[bit]}"
        for span, group in AMD_THROTTLE_GROUPS
        for bit in span
        if bits >> bit & 1 and bit in AMD_THROTTLE_BITS
    ]


def amd_energy_uj(count: dict[str, Any]) -> float:
    """Microjoules from `amdsmi_get_energy_count`: ticks times the resolution (the key was `power` before
    ROCm 6.1 and is `energy_accumulator` since)."""
    ticks = count.get("energy_accumulator", count.get("power"))
    if ticks is None:
        raise KeyError(f"amdsmi's energy count has no accumulator: {sorted(count)}")
    return float(ticks) * float(count["counter_resolution"])


def _first_number(table: dict[str, Any], *keys: str) -> float | None:
    for key in keys:
        if (value := amd_number(table.get(key))) is not None:
            return value
    return None


def amd_sample(power_info: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """A point sample, in the NVML sample's fields, from `amdsmi_get_power_info` and the GPU metrics table."""
    return {
        # `socket_power` since ROCm 7; `current_socket_power` on MI300; `average_socket_power` before.
        "power_w": _first_number(power_info, "socket_power", "current_socket_power", "average_socket_power"),
        "sm_clock_mhz": _first_number(metrics, "current_gfxclk", "average_gfxclk_frequency"),
        "memory_clock_mhz": _first_number(metrics, "current_uclk", "average_uclk_frequency"),
        "temperature_c": _first_number(metrics, "temperature_hotspot", "temperature_edge"),
        "utilization_pct": _first_number(metrics, "average_gfx_activity"),
        "throttle_reasons": [
            reason
            for reason in amd_throttle_reasons(metrics.get("indep_throttle_status"))
            if not reason.startswith("current_limit:")  # current limits hold clocks briefly, by design
        ],
    }


def amdsmi_handle(amdsmi: Any, index: int) -> Any:
    """amdsmi's handle of the GPU that HIP numbers `index` here (by PCI address where CuPy says it, else
    through `HIP_VISIBLE_DEVICES`, else by index, as `nvml_handle`), or None where there is no such GPU."""
    handle = by_pci_address(lambda address: amdsmi.amdsmi_get_processor_handle_from_bdf(address), index)
    if handle is not None:
        return handle
    entry = visible_entry(index, "HIP_VISIBLE_DEVICES")
    physical = int(entry) if entry is not None and entry.isdigit() else index
    handles = amdsmi.amdsmi_get_processor_handles()
    return handles[physical] if physical < len(handles) else None


class AmdSmiDevice:
    """One AMD GPU through amdsmi; `open(index)` returns None and a reason when amdsmi is not there."""

    def __init__(self, amdsmi: Any, handle: Any) -> None:
        self._amdsmi = amdsmi
        self._handle = handle

    @classmethod
    def open(cls, index: int) -> tuple[AmdSmiDevice | None, str | None]:
        try:
            import amdsmi
        except ImportError:
            return None, "amdsmi is not installed (pip install amdsmi, matching the host's ROCm)"
        try:
            amdsmi.amdsmi_init()
            handle = amdsmi_handle(amdsmi, index)
            if handle is None:
                count = len(amdsmi.amdsmi_get_processor_handles())
                return None, f"amdsmi sees {count} GPU(s); there is no GPU {index}"
            device = cls(amdsmi, handle)
            device.energy_mj()  # unsupported in VM guests: say so now, not mid-window
            return device, None
        except Exception as exc:  # AmdSmiException and its subclasses
            return None, f"amdsmi could not read GPU {index}'s energy counter: {exc}"

    def energy_mj(self) -> float:
        return amd_energy_uj(self._amdsmi.amdsmi_get_energy_count(self._handle)) / 1000.0

    def sample(self) -> dict[str, Any]:
        amdsmi, handle = self._amdsmi, self._handle
        return amd_sample(amdsmi.amdsmi_get_power_info(handle), amdsmi.amdsmi_get_gpu_metrics_info(handle))


def cupy_is_rocm() -> bool:
    """True when the CuPy already imported is its ROCm (HIP) build: the GPU is then AMD's."""
    cupy = cupy_if_loaded()
    return cupy is not None and is_rocm_build(cupy)


def open_gpu_meter(
    index: int, vendor: str | None = None
) -> tuple[NvmlDevice | AmdSmiDevice | None, str | None, str]:
    """The meter of GPU `index` (NVML for NVIDIA, amdsmi for AMD; by CuPy's build where `vendor` is None),
    a reason if none, and its name."""
    if vendor is not None and vendor not in ("NVIDIA", "AMD"):
        return (
            None,
            f"no power meter is read for {vendor} accelerators (NVML and amdsmi read NVIDIA's and AMD's)",
            "none",
        )
    amd = cupy_is_rocm() if vendor is None else vendor == "AMD"
    if amd:
        amd_meter, reason = AmdSmiDevice.open(index)
        return amd_meter, reason, "amdsmi"
    nvidia, reason = NvmlDevice.open(index)
    return nvidia, reason, "nvml"


# --- one source per job ----------------------------------------------------------------------------------


class TelemetrySource:
    """Energy and conditions around timed windows of one job on one device (`gpu_index` None: CPU).

    `vendor` names the GPU's vendor where the array library does not say it (JAX's `xla:gpu:N`); `gpu_meter`
    replaces the meter `open_gpu_meter` would open (readings played back in tests).
    """

    def __init__(
        self,
        gpu_index: int | None = None,
        *,
        powercap_root: Path = POWERCAP_ROOT,
        cpu_root: Path = CPU_ROOT,
        cpuinfo: Path = PROC_CPUINFO,
        clock: Callable[[], float] = time.perf_counter,
        loadavg: Callable[[], tuple[float, float, float]] = os.getloadavg,
        gpu_meter: GpuMeter | None = None,
        vendor: str | None = None,
    ) -> None:
        self._clock = clock
        self._loadavg = loadavg
        self._cpu_root = cpu_root
        self._cpuinfo = cpuinfo
        self._clock_files = cpufreq_files(cpu_root)  # found once: a glob per window cost ~100 us
        self._cpuinfo_clock: tuple[float, float | None] | None = None  # (read at, MHz) without cpufreq
        self._busy_limit = os.cpu_count() or 1  # more runnable tasks than cores: the job shared them
        self.nominal_clock_mhz = nominal_clock_mhz(cpu_root)
        self._gpu: GpuMeter | None = None
        if gpu_index is None:
            self._rapl, self.energy_reason = rapl_domains(powercap_root)
            self.energy_source: str | None = "rapl" if self._rapl else None
        else:
            self._rapl = []
            if gpu_meter is not None:
                self._gpu, self.energy_reason = gpu_meter, None
                meter = "amdsmi" if isinstance(gpu_meter, AmdSmiDevice) else "nvml"
            else:
                self._gpu, self.energy_reason, meter = open_gpu_meter(gpu_index, vendor)
            self.energy_source = meter if self._gpu is not None else None
        self._start: tuple[float, float, list[int], float | None] | None = None

    def begin(self) -> None:
        """Read the counters at the start of a window."""
        load = self._loadavg()[0]
        energies = [d.read_uj() for d in self._rapl]
        gpu_energy = self._gpu.energy_mj() if self._gpu is not None else None
        self._start = (self._clock(), load, energies, gpu_energy)

    def _cpu_clock(self) -> float | None:
        """The CPUs' mean clock now: cpufreq's files each window; /proc/cpuinfo at most once a second."""
        if self._clock_files:
            return cpu_clock_mhz(files=self._clock_files)
        now = self._clock()
        if self._cpuinfo_clock is None or now - self._cpuinfo_clock[0] >= CPUINFO_INTERVAL_S:
            self._cpuinfo_clock = (now, cpuinfo_clock_mhz(self._cpuinfo))
        return self._cpuinfo_clock[1]

    def end(self) -> WindowReading:
        """Read them again at the end of the window; the reading and its marks."""
        if self._start is None:
            raise RuntimeError("TelemetrySource.end() without begin()")
        started, load_before, energies, gpu_energy = self._start
        seconds = self._clock() - started
        self._start = None
        energy_j: float | None = None
        if self._rapl:
            energy_j = (
                sum(
                    energy_delta_uj(before, d.read_uj(), d.max_range_uj)
                    for d, before in zip(self._rapl, energies, strict=True)
                )
                / 1e6
            )
        gpu: dict[str, Any] = {}
        if self._gpu is not None and gpu_energy is not None:
            energy_j = (self._gpu.energy_mj() - gpu_energy) / 1000.0
            gpu = self._gpu.sample()
        load_after = self._loadavg()[0]
        clock = self._cpu_clock() if self._gpu is None else None
        marks = []
        if gpu.get("throttle_reasons"):
            marks.append("gpu throttled: " + ", ".join(gpu["throttle_reasons"]))
        if clock is not None and self.nominal_clock_mhz and clock < SLOW_CLOCK_SHARE * self.nominal_clock_mhz:
            marks.append(f"cpu clock {clock:.0f} MHz under 75% of nominal {self.nominal_clock_mhz:.0f} MHz")
        if max(load_before, load_after) > self._busy_limit:
            marks.append(
                f"host loaded: load average {max(load_before, load_after):.1f} over {self._busy_limit}"
            )
        return WindowReading(
            seconds=seconds,
            energy_j=energy_j,
            mean_power_w=energy_j / seconds if energy_j is not None and seconds > 0 else None,
            energy_source=self.energy_source,
            energy_reason=self.energy_reason,
            clock_mhz=clock,
            nominal_clock_mhz=self.nominal_clock_mhz,
            load_before=load_before,
            load_after=load_after,
            gpu=gpu,
            marks=tuple(marks),
        )
