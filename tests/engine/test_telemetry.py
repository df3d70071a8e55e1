"""Telemetry around timed windows: RAPL on a sysfs tree the test writes (wrap-around included), CPU clocks,
host load marks, and NVML's throttle reasons."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.backend import CPU, Device
from engine.telemetry import (
    TelemetrySource,
    amdsmi_handle,
    cpu_clock_mhz,
    energy_delta_uj,
    nominal_clock_mhz,
    nvml_handle,
    open_gpu_meter,
    rapl_domains,
    throttle_reasons,
)

MAX_RANGE = 262_143_328_850  # a real package's max_energy_range_uj


def _zone(root: Path, name: str, label: str, energy_uj: int) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "max_energy_range_uj").write_text(f"{MAX_RANGE}\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    return zone


def _cpus(root: Path, current_khz: list[int], base_khz: int | None) -> Path:
    for index, khz in enumerate(current_khz):
        freq = root / f"cpu{index}" / "cpufreq"
        freq.mkdir(parents=True)
        (freq / "scaling_cur_freq").write_text(f"{khz}\n")
        if base_khz is not None:
            (freq / "base_frequency").write_text(f"{base_khz}\n")
    return root


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rapl_reads_package_domains_only(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    _zone(root, "intel-rapl:0", "package-0", 5)
    _zone(root, "intel-rapl:1", "package-1", 7)
    _zone(root, "intel-rapl:0:0", "core", 3)  # a sub-zone: counted inside its package already
    domains, reason = rapl_domains(root)
    assert reason is None
    assert [d.name for d in domains] == ["intel-rapl:0:package-0", "intel-rapl:1:package-1"]
    assert [d.read_uj() for d in domains] == [5, 7] and domains[0].max_range_uj == MAX_RANGE


def test_no_powercap_tree_gives_the_reason(tmp_path: Path) -> None:
    domains, reason = rapl_domains(tmp_path / "absent")
    assert domains == [] and reason == f"no RAPL on this host ({tmp_path / 'absent'} is absent)"


def test_a_root_only_counter_gives_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Most distributions since 2020 make energy_uj mode 0400; root reads it anyway, so the refusal an
    # ordinary user gets is raised here for that one file.
    zone = _zone(tmp_path / "powercap", "intel-rapl:0", "package-0", 5)
    real_read_text = Path.read_text

    def refuse_energy(path: Path, *args: Any, **kwargs: Any) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse_energy)
    domains, reason = rapl_domains(tmp_path / "powercap")
    assert domains == []
    assert reason == f"RAPL counters are readable by root only on this host ({zone / 'energy_uj'})"


def test_energy_across_a_counter_wrap_is_one_range_more() -> None:
    assert energy_delta_uj(1_000, 5_000, MAX_RANGE) == 4_000
    assert energy_delta_uj(MAX_RANGE - 1_000, 2_000, MAX_RANGE) == 3_000


def test_a_window_reports_energy_power_and_no_marks_on_a_quiet_host(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    zones = [
        _zone(root, "intel-rapl:0", "package-0", MAX_RANGE - 2_000_000),
        _zone(root, "intel-rapl:1", "package-1", 0),
    ]
    cpus = _cpus(tmp_path / "cpu", [2_900_000, 3_100_000], base_khz=3_000_000)
    clock = Clock()
    source = TelemetrySource(powercap_root=root, cpu_root=cpus, clock=clock, loadavg=lambda: (0.5, 0.4, 0.3))
    source.begin()
    clock.now += 2.0
    (zones[0] / "energy_uj").write_text("58000000\n")  # wrapped: 2 J before the wrap, 58 J after
    (zones[1] / "energy_uj").write_text("40000000\n")
    reading = source.end()
    assert reading.energy_j == pytest.approx(100.0)
    assert reading.mean_power_w == pytest.approx(50.0)
    assert (reading.energy_source, reading.energy_reason) == ("rapl", None)
    assert reading.clock_mhz == pytest.approx(3000.0) and reading.nominal_clock_mhz == pytest.approx(3000.0)
    assert reading.marks == ()


def test_a_slow_clock_and_a_loaded_host_mark_the_window(tmp_path: Path) -> None:
    cpus = _cpus(tmp_path / "cpu", [1_000_000, 1_200_000], base_khz=3_000_000)
    loads = iter([(0.1, 0, 0), ((os.cpu_count() or 1) + 1.5, 0, 0)])
    source = TelemetrySource(powercap_root=tmp_path / "none", cpu_root=cpus, loadavg=lambda: next(loads))
    source.begin()
    reading = source.end()
    assert reading.energy_j is None and reading.energy_reason.startswith("no RAPL on this host")
    assert reading.marks[0] == "cpu clock 1100 MHz under 75% of nominal 3000 MHz"
    assert reading.marks[1].startswith("host loaded: load average ")


def test_clock_falls_back_to_proc_cpuinfo_and_nominal_to_max_freq(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 2400.5\nprocessor\t: 1\ncpu MHz\t\t: 2399.5\n")
    assert cpu_clock_mhz(tmp_path / "no-sysfs", cpuinfo) == pytest.approx(2400.0)
    freq = tmp_path / "cpu" / "cpu0" / "cpufreq"
    freq.mkdir(parents=True)
    (freq / "cpuinfo_max_freq").write_text("3500000\n")
    assert nominal_clock_mhz(tmp_path / "cpu") == pytest.approx(3500.0)
    assert nominal_clock_mhz(tmp_path / "nothing") is None


def test_a_cpufreq_clock_is_read_every_window_from_the_files_found_at_the_start(tmp_path: Path) -> None:
    cpus = _cpus(tmp_path / "cpu", [2_000_000, 2_200_000], base_khz=3_000_000)
    source = TelemetrySource(powercap_root=tmp_path / "none", cpu_root=cpus, loadavg=lambda: (0.0, 0, 0))
    source.begin()
    assert source.end().clock_mhz == pytest.approx(2100.0)
    (cpus / "cpu0" / "cpufreq" / "scaling_cur_freq").write_text("2600000\n")
    source.begin()
    reading = source.end()
    assert reading.clock_mhz == pytest.approx(2400.0)
    assert reading.marks == ()  # 2400 of 3000 MHz: above 75%


def test_without_cpufreq_the_proc_cpuinfo_clock_is_read_at_most_once_a_second(tmp_path: Path) -> None:
    """Reading and parsing /proc/cpuinfo around every short window slowed the window's next step."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 2400.0\n")
    clock = Clock()
    source = TelemetrySource(
        powercap_root=tmp_path / "none",
        cpu_root=tmp_path / "no-sysfs",
        cpuinfo=cpuinfo,
        clock=clock,
        loadavg=lambda: (0.0, 0, 0),
    )
    readings = []
    for seconds, mhz in ((0.0, None), (0.4, 1800.0), (0.7, 1700.0)):
        clock.now += seconds
        if mhz is not None:
            cpuinfo.write_text(f"processor\t: 0\ncpu MHz\t\t: {mhz}\n")
        source.begin()
        readings.append(source.end().clock_mhz)
    # 0.0 s and 0.4 s: the first reading serves; 1.1 s after it, the file is read again.
    assert readings == [pytest.approx(2400.0), pytest.approx(2400.0), pytest.approx(1700.0)]
    assert source.nominal_clock_mhz is None


def test_throttle_reasons_name_heat_and_power_not_idle() -> None:
    assert throttle_reasons(0x1 | 0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert throttle_reasons(0x1) == []  # GPU idle is not throttling


class RecordedNvml:
    """The readings an NVML device gave, played back (the GPU path itself runs under `pytest -m gpu`)."""

    def __init__(self, energies_mj: list[int], sample: dict[str, Any]) -> None:
        self._energies = iter(energies_mj)
        self._sample = sample

    def energy_mj(self) -> int:
        return next(self._energies)

    def sample(self) -> dict[str, Any]:
        return self._sample


def test_a_gpu_window_takes_nvml_energy_and_marks_throttling() -> None:
    clock = Clock()
    sample = {"power_w": 650.0, "sm_clock_mhz": 1500, "throttle_reasons": ["sw_power_cap"]}
    source = TelemetrySource(
        0,
        clock=clock,
        loadavg=lambda: (0.0, 0, 0),
        gpu_meter=RecordedNvml([10_000, 1_310_000], sample),
    )
    source.begin()
    clock.now += 2.0
    reading = source.end()
    assert reading.energy_source == "nvml" and reading.energy_j == pytest.approx(1300.0)
    assert reading.mean_power_w == pytest.approx(650.0)
    assert reading.marks == ("gpu throttled: sw_power_cap",)
    assert reading.as_dict()["gpu"]["sm_clock_mhz"] == 1500


def test_this_host_says_plainly_whether_it_has_rapl() -> None:
    source = TelemetrySource()
    source.begin()
    reading = source.end()
    if Path("/sys/class/powercap").is_dir() and reading.energy_source == "rapl":
        assert reading.energy_j is not None and reading.energy_j >= 0
    else:
        assert reading.energy_j is None and reading.energy_reason


def test_the_vendor_picks_the_gpu_meter_and_unmetered_gpus_say_so() -> None:
    # An Intel GPU (dpnp, OpenCL) or a TPU has no meter read here: null energy with the reason, never the
    # host CPU's RAPL.
    meter, reason, name = open_gpu_meter(0, "Intel")
    assert (meter, name) == (None, "none") and reason.startswith(
        "no power meter is read for Intel accelerators"
    )
    source = TelemetrySource(0, vendor="Google", loadavg=lambda: (0.0, 0, 0))
    source.begin()
    reading = source.end()
    assert (reading.energy_source, reading.energy_j) == (None, None)
    assert reading.energy_reason.startswith("no power meter is read for Google accelerators")
    # AMD's meter is amdsmi whatever CuPy build is loaded (JAX's ROCm GPU has no CuPy to ask).
    assert open_gpu_meter(0, "AMD")[2] == "amdsmi" and open_gpu_meter(0, "NVIDIA")[2] == "nvml"


def test_each_device_names_the_meter_that_reads_its_energy() -> None:
    assert CPU.energy_meter() is None  # the host's RAPL
    assert Device("gpu", 1, "cuda").energy_meter() == (1, "NVIDIA")
    assert Device("gpu", 0, "rocm").energy_meter() == (0, "AMD")
    assert Device("cpu", 0, "xla", "cpu:0").energy_meter() is None
    assert Device("tpu", 0, "xla", "tpu:0").energy_meter() == (0, "Google")  # no meter: null, not RAPL


class LookupLog:
    """Stands in for pynvml's and amdsmi's handle lookups: records which one was asked, and with what."""

    def __init__(self, gpus: int = 4, bad_bus_id: bool = False) -> None:
        self.asked: list[tuple[str, Any]] = []
        self.gpus = gpus
        self.bad_bus_id = bad_bus_id

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        self.asked.append(("index", index))
        return f"gpu{index}"

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        self.asked.append(("uuid", uuid))
        return uuid

    def nvmlDeviceGetHandleByPciBusId(self, bus_id: str) -> str:
        self.asked.append(("pci", bus_id))
        if self.bad_bus_id:
            raise ValueError("NVML_ERROR_INVALID_ARGUMENT")
        return bus_id

    def amdsmi_get_processor_handle_from_bdf(self, bdf: str) -> str:
        self.asked.append(("bdf", bdf))
        return bdf

    def amdsmi_get_processor_handles(self) -> list[str]:
        return [f"amd{i}" for i in range(self.gpus)]


class CupyWithBusIds:
    """Stands in for a loaded CuPy: `cuda.Device(i).pci_bus_id` of the GPUs this process sees."""

    def __init__(self, bus_ids: list[str]) -> None:
        class _Device:
            def __init__(self, index: int) -> None:
                self.pci_bus_id = bus_ids[index]

        self.cuda = type("cuda", (), {"Device": _Device})


def test_nvml_reads_the_gpu_a_pinned_worker_runs_on_not_gpu_0(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker for gpu:3 runs with CUDA_VISIBLE_DEVICES=3 and its jobs on gpu:0; NVML ignores the variable.
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    nvml = LookupLog()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert nvml_handle(nvml, 0) == "gpu3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 0")
    assert (nvml_handle(nvml, 0), nvml_handle(nvml, 1)) == ("gpu2", "gpu0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5c1b7a0e-1234")
    assert nvml_handle(nvml, 0) == "GPU-5c1b7a0e-1234"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert nvml_handle(nvml, 1) == "gpu1"
    assert nvml.asked == [
        ("index", 3),
        ("index", 2),
        ("index", 0),
        ("uuid", "GPU-5c1b7a0e-1234"),
        ("index", 1),
    ]


def test_nvml_takes_the_pci_address_where_cupy_gives_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", CupyWithBusIds(["0000:9B:00.0"]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    nvml = LookupLog()
    assert nvml_handle(nvml, 0) == "0000:9B:00.0" and nvml.asked == [("pci", "0000:9B:00.0")]
    # An address NVML refuses: the visible-devices entry still names the GPU.
    refusing = LookupLog(bad_bus_id=True)
    assert nvml_handle(refusing, 0) == "gpu5"
    assert refusing.asked == [("pci", "0000:9B:00.0"), ("index", 5)]


def test_amdsmi_follows_hip_visible_devices_or_the_pci_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "1,3")
    amd = LookupLog(gpus=4)
    assert (amdsmi_handle(amd, 0), amdsmi_handle(amd, 1)) == ("amd1", "amd3")
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "7")
    assert amdsmi_handle(amd, 0) is None  # no such GPU on a 4-GPU host
    monkeypatch.setitem(sys.modules, "cupy", CupyWithBusIds(["0000:c1:00.0"]))
    assert amdsmi_handle(amd, 0) == "0000:c1:00.0" and amd.asked == [("bdf", "0000:c1:00.0")]
