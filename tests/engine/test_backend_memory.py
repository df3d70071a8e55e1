"""The memory questions the worker and the engine ask go through `engine.backend`, on the CPU here."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import psutil
import pytest

from engine import backend
from engine.backend import CPU, Device, free_memory_bytes, memory_probe, release_memory


def test_the_cpu_answers_free_memory_with_the_hosts_available_ram() -> None:
    free, where = free_memory_bytes("cpu")

    assert where == "this host's RAM"
    assert 0 < free <= psutil.virtual_memory().total


def test_the_cpu_memory_probe_reads_this_processs_resident_memory_and_no_gpu_pool() -> None:
    probe = memory_probe(CPU)
    before = probe()
    held = np.ones(64 * 1024**2 // 8)  # 64 MiB, touched
    after = probe()

    assert set(after) == {"host_rss_bytes"}
    assert after["host_rss_bytes"] - before["host_rss_bytes"] >= 32 * 1024**2
    del held


def test_releasing_memory_without_cupy_loaded_does_nothing_and_loads_nothing() -> None:
    loaded = "cupy" in sys.modules

    release_memory()

    assert ("cupy" in sys.modules) == loaded


class StandInPool:
    """CuPy's pool as the probe sees it: bytes in use, bytes held (in use plus cached), and a way to let
    the cached blocks go."""

    def __init__(self, used: int, cached: int) -> None:
        self.used, self.cached = used, cached

    def used_bytes(self) -> int:
        return self.used

    def total_bytes(self) -> int:
        return self.used + self.cached

    def free_all_blocks(self) -> None:
        self.cached = 0

    def allocate(self, n: int) -> None:
        self.used += n

    def free(self, n: int) -> None:
        self.used, self.cached = self.used - n, self.cached + n


def test_the_gpu_probe_counts_the_jobs_own_high_water_mark_in_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 100 MiB of arrays from before the job are alive; 900 MiB cached from earlier work (and a dropped
    # 12 MiB generator state among them) must not count. CuPy itself is stood in for: no GPU here.
    mib = 1024**2
    pool = StandInPool(used=100 * mib, cached=900 * mib)
    monkeypatch.setattr(
        backend.backend_named("cuda"),
        "import_library",
        lambda: SimpleNamespace(get_default_memory_pool=lambda: pool),
    )
    probe = memory_probe(Device("gpu", 0))
    at_start = probe()["gpu_pool_bytes"]
    pool.allocate(40 * mib)  # the job's parameters and data
    pool.allocate(30 * mib)  # a step's temporaries...
    pool.free(30 * mib)  # ...freed again, but the pool keeps their blocks
    peak = probe()["gpu_pool_bytes"]

    assert (at_start, peak) == (0, 70 * mib)
