"""`bpbench worker --device`: what each spelling pins, names, forks and serves (no process started)."""

from __future__ import annotations

import pytest

from workers.main import WorkerConfigError, parse_device, served_class_queues


@pytest.mark.parametrize(
    ("spelling", "backend", "engine_device", "pin_env", "tag", "fork_safe"),
    [
        ("cpu", "numpy", "cpu", (), "cpu", True),
        (" GPU ", "cuda", "gpu", (), "gpu", False),
        (
            "gpu:3",
            "cuda",
            "gpu:0",
            (("CUDA_VISIBLE_DEVICES", "3"), ("HIP_VISIBLE_DEVICES", "3")),
            "gpu3",
            False,
        ),
        ("cuda:1", "cuda", "cuda:0", (("CUDA_VISIBLE_DEVICES", "1"),), "cuda1", False),
        ("rocm:2", "rocm", "rocm:0", (("HIP_VISIBLE_DEVICES", "2"),), "rocm2", False),
        ("xla:tpu:0", "xla", "xla:tpu:0", (), "xla-tpu-0", False),
    ],
)
def test_a_worker_device_names_its_backend_pin_and_pool(
    spelling: str,
    backend: str,
    engine_device: str,
    pin_env: tuple[tuple[str, str], ...],
    tag: str,
    fork_safe: bool,
) -> None:
    device = parse_device(spelling)
    assert (device.backend, device.engine_device, device.pin_env, device.tag, device.fork_safe) == (
        backend,
        engine_device,
        pin_env,
        tag,
        fork_safe,
    )


def test_a_misspelt_worker_device_lists_every_registered_spelling() -> None:
    with pytest.raises(
        WorkerConfigError,
        match=(
            r"--device must be cpu, gpu, gpu:N, cuda:N, rocm:N, oneapi:<SYCL filter>, xla:<platform>:<N> "
            r"or opencl:<platform>:<device> \(N = 0\.\.99\), got 'tpu:0'"
        ),
    ):
        parse_device("tpu:0")


@pytest.mark.parametrize(
    ("backend", "queues"),
    [
        ("numpy", ["cpu"]),
        ("cuda", ["gpu", "cuda"]),
        ("rocm", ["gpu", "rocm"]),
        ("oneapi", ["oneapi"]),
        ("xla", ["xla"]),
        ("opencl", ["opencl"]),
    ],
)
def test_a_worker_serves_the_queues_of_the_backend_that_resolved_its_device(
    backend: str, queues: list[str]
) -> None:
    # `gpu` on CuPy's ROCm build resolves to rocm: that worker serves gpu and rocm, never cuda.
    assert served_class_queues({"backend": {"name": backend}}) == queues
