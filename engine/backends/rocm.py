"""AMD GPUs through CuPy's ROCm build (`cupy-rocm-7-0`): the word `rocm:N`; the code path is CUDA's."""

from __future__ import annotations

from engine.backends.cupy_common import GPU_SELECTOR, CupyBackend
from engine.grammar import DeviceBackend


class RocmBackend(CupyBackend):
    name = "rocm"
    words = (DeviceBackend("rocm", selector=GPU_SELECTOR, bare=False, selector_range="0..99"),)
    extra = "rocm"
    distributions = ("cupy-rocm-7-0", "cupy-rocm-6-0", "cupy-rocm-5-0")
    build = "rocm"
    hardware_vendor = "AMD"
    summary = "CuPy's ROCm build on AMD GPUs"
