"""engine/backends: the registry, what each backend knows without its library, and the NumPy-only default."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.backend import Device, DeviceError, check_float64, resolve_device
from engine.backends import BACKENDS, Backend, backend_named, backend_of, grammar_words
from engine.backends.cuda import CudaBackend
from engine.backends.rocm import RocmBackend
from engine.backends.vendors import cpu_vendor, vendor_of_cpuinfo, vendor_of_name
from engine.grammar import MAX_DEVICE_CHARS, DeviceBackend, DeviceGrammar, DeviceRef, DeviceSpellingError
from engine.spec import DEVICE_CLASSES, default_gemm_sizes, float64_refusal, hardware_kind, parse_device

ROOT = Path(__file__).resolve().parents[2]
OPTIONAL_LIBRARIES = ("cupy", "jax", "jaxlib", "dpnp", "dpctl", "pyopencl")


def test_the_registry_lists_numpy_first_then_cuda_rocm_oneapi_xla_and_opencl() -> None:
    assert [backend.name for backend in BACKENDS] == ["numpy", "cuda", "rocm", "oneapi", "xla", "opencl"]
    assert [(b.name, b.extra) for b in BACKENDS] == [
        ("numpy", None),
        ("cuda", "gpu"),
        ("rocm", "rocm"),
        ("oneapi", "oneapi"),
        ("xla", "xla"),
        ("opencl", "opencl"),
    ]


def test_each_backend_serves_its_class_queue_and_its_own() -> None:
    assert {b.name: b.queues for b in BACKENDS} == {
        "numpy": ("cpu",),
        "cuda": ("gpu", "cuda"),
        "rocm": ("gpu", "rocm"),
        "oneapi": ("oneapi",),
        "xla": ("xla",),
        "opencl": ("opencl",),
    }
    assert DEVICE_CLASSES == ("cpu", "gpu", "cuda", "rocm", "oneapi", "xla", "opencl")


@pytest.mark.parametrize(
    ("text", "owner", "queue_class", "kind"),
    [
        ("cpu", "numpy", "cpu", "cpu"),
        ("gpu", "cuda", "gpu", "gpu"),
        ("gpu:3", "cuda", "gpu", "gpu"),
        ("cuda:1", "cuda", "cuda", "gpu"),
        ("rocm:0", "rocm", "rocm", "gpu"),
        ("xla:cpu:0", "xla", "xla", "cpu"),
        ("xla:tpu:7", "xla", "xla", "tpu"),
        ("oneapi:opencl:cpu:0", "oneapi", "oneapi", "cpu"),
        ("oneapi:level_zero:gpu:1", "oneapi", "oneapi", "gpu"),
    ],
)
def test_a_spelling_names_its_backend_queue_class_and_hardware(
    text: str, owner: str, queue_class: str, kind: str
) -> None:
    ref = parse_device(text)
    assert (backend_of(ref).name, ref.device_class, hardware_kind(ref)) == (owner, queue_class, kind)


def test_a_tpu_gets_a_gpus_gemm_sizes_and_xla_on_a_cpu_a_cpus() -> None:
    assert default_gemm_sizes("xla:tpu:0") == [1024, 2048, 4096, 8192]
    assert default_gemm_sizes("xla:cpu:0") == [256, 512, 1024]
    assert default_gemm_sizes("rocm:0") == [1024, 2048, 4096, 8192]


def test_float64_on_a_tpu_is_refused_by_its_spelling_alone() -> None:
    assert float64_refusal("xla:tpu:0", "float64") == (
        "float64 cannot run on device 'xla:tpu:0' (xla has no float64 on tpu); accepted: float32 on it, "
        "or float64 on a device that has it (e.g. cpu)"
    )
    assert [float64_refusal(d, "float64") for d in ("cpu", "gpu:0", "cuda:0", "rocm:0", "xla:cpu:0")] == [
        None
    ] * 5
    assert float64_refusal("xla:tpu:0", "float32") is None


def test_the_worker_rechecks_float64_on_the_device_it_resolved() -> None:
    with pytest.raises(
        DeviceError, match=r"dtype float64 cannot run on device 'xla:tpu:0'.*accepted: float32 on it"
    ):
        check_float64(Device("tpu", 0, "xla", "tpu:0"), "float64")
    check_float64(Device("tpu", 0, "xla", "tpu:0"), "float32")
    check_float64(resolve_device("cpu"), "float64")


class _Missing(Backend):
    name = "missing"
    extra = "missing-extra"
    library = "bpbench_no_such_library"
    words = (DeviceBackend("missing", selector=r"\d", bare=False),)


def test_a_backend_whose_library_is_missing_names_the_extra_to_install() -> None:
    backend = _Missing()
    assert not backend.installed()
    with pytest.raises(
        DeviceError, match=r"install the missing-extra extra: pip install 'bpbench\[missing-extra\]'"
    ):
        backend.import_library()


def test_a_words_queue_must_be_one_its_backends_workers_serve() -> None:
    class Stray(_Missing):
        name = "stray"
        class_queue = "cpu"
        words = (DeviceBackend("stray", selector=r"\d", bare=False),)

    # A `stray:0` job waits on the queue `stray`, which a stray worker (queues cpu, stray) serves...
    assert [(w.name, w.owner, w.queue_class) for w in grammar_words((Stray(),))] == [
        ("stray", "stray", "stray")
    ]

    class Wrong(Stray):
        words = (DeviceBackend("wrong", selector=r"\d", bare=False, device_class="gpu"),)

    # ...and a word queued on `gpu` would wait for ever on a host of stray workers only.
    with pytest.raises(ValueError, match=r"the word 'wrong' queues on 'gpu', which its workers do not serve"):
        grammar_words((Wrong(),))


# The selectors the oneapi (SYCL filter) and xla (platform:index) backends need, in a grammar of their own.
ONEAPI = DeviceBackend(
    "oneapi",
    selector=r"(?:(?:opencl|level_zero|cuda|hip):)?(?:cpu|gpu|accelerator)(?::\d{1,2})?",
    bare=False,
    selector_name="<SYCL filter>",
)
XLA = DeviceBackend("xla", selector=r"(?:cpu|gpu|tpu):\d{1,2}", bare=False, selector_name="<platform>:<N>")


@pytest.mark.parametrize(
    ("text", "selector", "index"),
    [
        ("oneapi:opencl:cpu:0", "opencl:cpu:0", 0),
        ("oneapi:level_zero:gpu:1", "level_zero:gpu:1", 1),
        ("oneapi:gpu", "gpu", None),
        ("oneapi:opencl:cpu", "opencl:cpu", None),
        ("xla:cpu:0", "cpu:0", 0),
        ("xla:tpu:12", "tpu:12", 12),
    ],
)
def test_multi_part_selectors_parse_whole(text: str, selector: str, index: int | None) -> None:
    ref = DeviceGrammar((DeviceBackend("cpu"), ONEAPI, XLA)).parse(text)
    assert (ref.backend, ref.selector, ref.index, ref.name) == (text.split(":")[0], selector, index, text)


@pytest.mark.parametrize(
    "text", ["oneapi:opencl::0", "oneapi:vulkan:gpu:0", "xla:cpu", "xla:cpu:0:0", "oneapi", "xla:cpu:100"]
)
def test_multi_part_selectors_refuse_what_their_backend_does_not_take(text: str) -> None:
    grammar = DeviceGrammar((DeviceBackend("cpu"), ONEAPI, XLA))
    with pytest.raises(
        DeviceSpellingError,
        match=re.escape(f"device must be cpu, oneapi:<SYCL filter> or xla:<platform>:<N>, got {text!r}"),
    ):
        grammar.parse(text)


def test_unbounded_or_non_ascii_words_cannot_be_made() -> None:
    for selector in (r"[a-z]+", r"\d{1,}", r".*", "gpu:\u0661"):
        with pytest.raises(ValueError, match="ASCII with bounded repetition"):
            DeviceBackend("x", selector=selector)
    with pytest.raises(ValueError, match="a device word is 1-8 ASCII letters"):
        DeviceBackend("Cuda")
    with pytest.raises(ValueError, match="owned twice"):
        DeviceGrammar((DeviceBackend("cpu"), DeviceBackend("cpu")))


def test_no_spelling_longer_than_the_columns_is_matched() -> None:
    grammar = DeviceGrammar((DeviceBackend("oneapi", selector=r"[a-z_:]{1,60}", bare=False),))
    assert grammar.parse("oneapi:" + "a" * (MAX_DEVICE_CHARS - 7)).backend == "oneapi"
    with pytest.raises(DeviceSpellingError):
        grammar.parse("oneapi:" + "a" * (MAX_DEVICE_CHARS - 6))


@pytest.mark.parametrize(
    ("backend", "text", "env", "engine_device"),
    [
        (CudaBackend(), "gpu:3", {"CUDA_VISIBLE_DEVICES": "3", "HIP_VISIBLE_DEVICES": "3"}, "gpu:0"),
        (CudaBackend(), "cuda:1", {"CUDA_VISIBLE_DEVICES": "1"}, "cuda:0"),
        (RocmBackend(), "rocm:2", {"HIP_VISIBLE_DEVICES": "2"}, "rocm:0"),
        (CudaBackend(), "gpu", {}, "gpu"),
        (backend_named("numpy"), "cpu", {}, "cpu"),
        (backend_named("xla"), "xla:tpu:1", {}, "xla:tpu:1"),
    ],
)
def test_a_pinned_worker_sees_only_its_gpu_as_device_0(
    backend: Backend, text: str, env: dict[str, str], engine_device: str
) -> None:
    assert backend.pin(parse_device(text)) == (env, engine_device)


@pytest.mark.parametrize(
    ("name", "vendor"),
    [
        ("Intel(R) Xeon(R) Platinum 8480+", "Intel"),
        ("AMD EPYC 9654 96-Core Processor", "AMD"),
        ("AMD Instinct MI300X", "AMD"),
        ("NVIDIA H200", "NVIDIA"),
        ("Neoverse-V2", "ARM"),
        ("Apple M2 Max", "Apple"),
        ("TPU v5e", "Google"),
        ("Loongson-3A6000", "unknown"),
    ],
)
def test_hardware_vendors_are_named_as_the_timelines_rows(name: str, vendor: str) -> None:
    assert vendor_of_name(name) == vendor


def test_a_cpu_is_named_first_by_its_cpuid_vendor_since_a_virtual_cpus_model_names_none() -> None:
    guest = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: QEMU Virtual CPU version 2.5+\n"
    assert vendor_of_name("QEMU Virtual CPU version 2.5+") == "unknown"
    assert cpu_vendor("QEMU Virtual CPU version 2.5+", "x86_64", "Linux", guest) == "AMD"
    intel = "vendor_id\t: GenuineIntel\nmodel name\t: Common KVM processor\n"
    assert (vendor_of_cpuinfo(intel), vendor_of_cpuinfo("vendor_id\t: HygonGenuine\n")) == (
        "Intel",
        "unknown",
    )
    # aarch64's /proc/cpuinfo has no vendor_id: the model name and the architecture decide, as before.
    arm = "processor\t: 0\nCPU implementer\t: 0x41\n"
    assert (vendor_of_cpuinfo(arm), cpu_vendor("", "aarch64", "Linux", arm)) == ("unknown", "ARM")


def test_every_backend_of_this_hosts_cpu_names_the_vendor_its_cpuinfo_names() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists() or vendor_of_cpuinfo(cpuinfo.read_text()) == "unknown":
        pytest.skip("this host's /proc/cpuinfo names no x86 CPUID vendor")
    cpus = [
        Device("cpu", None, "numpy"),
        Device("cpu", 0, "oneapi", selector="opencl:cpu:0"),
        Device("cpu", 0, "xla", selector="cpu:0"),
    ]
    vendors = [backend_named(device.backend).vendor(device) for device in cpus]
    assert vendors == [vendor_of_cpuinfo(cpuinfo.read_text())] * 3


def test_a_cpu_without_a_vendor_in_its_name_is_named_by_its_architecture() -> None:
    assert [
        cpu_vendor("", "arm64", "Darwin"),
        cpu_vendor("", "aarch64", "Linux"),
        cpu_vendor("", "x86_64", "Linux"),
    ] == [
        "Apple",
        "ARM",
        "unknown",
    ]


def test_each_backend_names_the_vendor_of_its_devices_without_its_library() -> None:
    assert backend_named("cuda").vendor(Device("gpu", 0, "cuda")) == "NVIDIA"
    assert backend_named("rocm").vendor(Device("gpu", 0, "rocm")) == "AMD"
    assert backend_named("xla").vendor(Device("tpu", 0, "xla", "tpu:0")) == "Google"
    assert backend_named("xla").vendor(Device("cpu", 0, "xla", "cpu:0")) == backend_named("numpy").vendor(
        Device()
    )


def test_a_device_is_named_by_its_spelling() -> None:
    assert [Device().name, Device("gpu", 2).name, Device("gpu", 1, "rocm").name] == ["cpu", "gpu:2", "gpu:1"]
    assert Device("tpu", 0, "xla", "tpu:0").name == "xla:tpu:0"
    assert Device("gpu", 0) == Device("gpu", 0, "cuda") and Device() == Device("cpu", None, "numpy")


def test_a_parsed_device_equals_one_built_by_hand_whatever_its_queue() -> None:
    assert parse_device("cuda:2") == DeviceRef("cuda", "2")


def test_the_numpy_backend_lists_this_cpu_with_float64() -> None:
    (cpu,) = backend_named("numpy").devices()
    assert (cpu.spelling, cpu.float64) == ("cpu", True)
    assert cpu.name and cpu.vendor == backend_named("numpy").vendor(Device())


def test_the_default_install_imports_numpy_and_no_optional_library() -> None:
    # A fresh interpreter: the registry, the grammar, a CPU job's device, its fingerprint and every
    # backend's static facts, and not one optional library imported.
    code = (
        "import sys\n"
        "from engine.backends import BACKENDS\n"
        "from engine.backend import resolve_device, fingerprint\n"
        "from engine.spec import parse_device, float64_refusal, DEVICE_ACCEPTED\n"
        "fingerprint(resolve_device('cpu'))\n"
        "for b in BACKENDS:\n"
        "    b.installed(); b.library_version(); b.queues; b.install_hint()\n"
        "    for w in b.words: b.float64_by_spelling(parse_device(w.name + ':0' if not w.bare else w.name))"
        " if w.name not in ('xla', 'oneapi', 'opencl') else None\n"
        "float64_refusal('oneapi:level_zero:gpu:0', 'float64')\n"
        "float64_refusal('xla:tpu:0', 'float64')\n"
        "float64_refusal('opencl:0:0', 'float64')\n"
        f"loaded = sorted(set({OPTIONAL_LIBRARIES!r}) & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _cupy_stand_in(*, hip: bool, gpus: int) -> Any:
    """CuPy's runtime as `resolve` asks it: its build and its device count (no GPU here)."""
    runtime = SimpleNamespace(is_hip=hip, getDeviceCount=lambda: gpus)
    return SimpleNamespace(cuda=SimpleNamespace(runtime=runtime))


@pytest.mark.parametrize(
    ("hip", "text", "resolved"),
    [
        (False, "gpu:1", Device("gpu", 1, "cuda")),
        (False, "cuda:1", Device("gpu", 1, "cuda")),
        (True, "gpu:1", Device("gpu", 1, "rocm")),  # `gpu` is whichever GPU CuPy has
        (True, "rocm:0", Device("gpu", 0, "rocm")),
    ],
)
def test_a_gpu_spelling_resolves_to_the_backend_of_the_installed_cupy_build(
    monkeypatch: pytest.MonkeyPatch, hip: bool, text: str, resolved: Device
) -> None:
    ref = parse_device(text)
    monkeypatch.setattr(backend_of(ref), "import_library", lambda: _cupy_stand_in(hip=hip, gpus=2))
    assert resolve_device(text) == resolved


@pytest.mark.parametrize(
    ("hip", "text", "message"),
    [
        (
            True,
            "cuda:1",
            "device 'cuda:1' was asked for, but the installed CuPy is its ROCm build; use rocm:1 or gpu:1",
        ),
        (
            False,
            "rocm:0",
            "device 'rocm:0' was asked for, but the installed CuPy is its CUDA build; use cuda:0 or gpu:0",
        ),
        (
            False,
            "cuda:2",
            "device 'cuda:2' was asked for, but this machine has 2 GPU(s); available: cpu, gpu:0, gpu:1",
        ),
    ],
)
def test_a_gpu_spelling_for_the_other_build_or_a_missing_gpu_says_what_works(
    monkeypatch: pytest.MonkeyPatch, hip: bool, text: str, message: str
) -> None:
    ref = parse_device(text)
    monkeypatch.setattr(backend_of(ref), "import_library", lambda: _cupy_stand_in(hip=hip, gpus=2))
    with pytest.raises(DeviceError, match=re.escape(message)):
        resolve_device(text)
