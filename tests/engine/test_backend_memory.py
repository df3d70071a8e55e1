"""The memory questions the worker and the engine ask go through `engine.backend`, on the CPU here."""

from __future__ import annotations

import sys

import numpy as np
import psutil

from engine.backend import CPU, free_memory_bytes, memory_probe, release_memory


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
