"""NVIDIA GPUs through CuPy's CUDA build: the words `gpu`, `gpu:N` (whichever GPU CuPy has) and `cuda:N`."""

from __future__ import annotations

from engine.backends.cupy_common import GPU_SELECTOR, CupyBackend
from engine.grammar import DeviceBackend


class CudaBackend(CupyBackend):
    name = "cuda"
    words = (
        DeviceBackend("gpu", selector=GPU_SELECTOR, selector_range="0..99"),
        DeviceBackend("cuda", selector=GPU_SELECTOR, bare=False, selector_range="0..99"),
    )
    extra = "gpu"
    distributions = ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy")
    build = "cuda"
    hardware_vendor = "NVIDIA"
    summary = "CuPy's CUDA build on NVIDIA GPUs"
