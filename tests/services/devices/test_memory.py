"""The worker's memory bound: host RAM, or the cgroup limit when that is tighter (v1 and v2, nested)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import psutil
import pytest

from services.devices.memory import (
    available_memory,
    cgroup_memory_limit,
    host_oom_kills,
    process_memory_bound,
)

GIB = 2**30


def _write(directory: Path, **files: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("__", ".")).write_text(text + "\n")


def _proc_cgroup(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "proc-self-cgroup"
    file.write_text(textwrap.dedent(text).lstrip())
    return file


def _v2_tree(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup"
    _write(root, cgroup__controllers="cpu memory pids")
    return root


def test_v2_limit_minus_working_set_is_the_headroom(tmp_path: Path) -> None:
    root = _v2_tree(tmp_path)
    _write(
        root / "worker.slice",
        memory__max=str(8 * GIB),
        memory__current=str(3 * GIB),
        memory__stat=f"anon 123\ninactive_file {1 * GIB}\nactive_file 5",
    )
    limit = cgroup_memory_limit(root, _proc_cgroup(tmp_path, "0::/worker.slice\n"))
    assert limit is not None and limit.version == 2
    assert limit.limit_bytes == 8 * GIB and limit.usage_bytes == 2 * GIB  # page cache not counted
    assert limit.headroom_bytes == 6 * GIB


def test_v2_max_means_no_limit(tmp_path: Path) -> None:
    root = _v2_tree(tmp_path)
    _write(root / "worker.slice", memory__max="max", memory__current=str(GIB))
    assert cgroup_memory_limit(root, _proc_cgroup(tmp_path, "0::/worker.slice\n")) is None


def test_v2_a_parents_tighter_limit_binds_the_child(tmp_path: Path) -> None:
    root = _v2_tree(tmp_path)
    _write(root / "pod", memory__max=str(4 * GIB), memory__current=str(3 * GIB))
    _write(root / "pod" / "worker", memory__max="max", memory__current=str(GIB))
    limit = cgroup_memory_limit(root, _proc_cgroup(tmp_path, "0::/pod/worker\n"))
    assert limit is not None and limit.path == root / "pod" and limit.headroom_bytes == 1 * GIB


def test_v2_in_a_namespace_reads_the_mounts_own_cgroup(tmp_path: Path) -> None:
    root = _v2_tree(tmp_path)
    _write(root, cgroup__controllers="memory", memory__max=str(2 * GIB), memory__current=str(GIB // 2))
    # /proc/self/cgroup names a path the namespaced mount does not show.
    limit = cgroup_memory_limit(root, _proc_cgroup(tmp_path, "0::/kubepods/burstable/pod1/abc\n"))
    assert limit is not None and limit.path == root and limit.headroom_bytes == GIB + GIB // 2


def test_v1_limit_and_usage_from_the_memory_hierarchy(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(
        root / "memory" / "docker" / "c1",
        memory__limit_in_bytes=str(8 * GIB),
        memory__usage_in_bytes=str(5 * GIB),
        memory__stat=f"cache 9\ntotal_inactive_file {GIB}",
    )
    _write(
        root / "memory" / "docker",
        memory__limit_in_bytes=str(9223372036854771712),
        memory__usage_in_bytes=str(6 * GIB),
    )
    _write(root / "memory", memory__limit_in_bytes=str(9223372036854771712), memory__usage_in_bytes="1")
    proc = _proc_cgroup(tmp_path, "4:memory:/docker/c1\n2:cpu,cpuacct:/docker/c1\n0::/\n")
    limit = cgroup_memory_limit(root, proc)
    assert limit is not None and limit.version == 1 and limit.path == root / "memory" / "docker" / "c1"
    assert limit.headroom_bytes == 4 * GIB


def test_v1_unlimited_everywhere_is_no_limit(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(root / "memory", memory__limit_in_bytes=str(9223372036854771712), memory__usage_in_bytes="99")
    assert cgroup_memory_limit(root, _proc_cgroup(tmp_path, "4:memory:/\n")) is None


def test_no_cgroup_files_at_all_is_no_limit(tmp_path: Path) -> None:
    assert cgroup_memory_limit(tmp_path / "absent", tmp_path / "absent-proc") is None


def test_available_memory_takes_the_cgroup_when_it_is_tighter_than_the_host(tmp_path: Path) -> None:
    root = _v2_tree(tmp_path)
    _write(root / "w", memory__max=str(512 * 2**20), memory__current=str(112 * 2**20))
    free, where = available_memory(root, _proc_cgroup(tmp_path, "0::/w\n"))
    assert free == 400 * 2**20
    assert (
        where.startswith("this worker's cgroup memory limit (512.0 MiB at ") and "112.0 MiB in use" in where
    )


def test_available_memory_is_the_hosts_when_no_limit_binds(tmp_path: Path) -> None:
    root = _v2_tree(tmp_path)
    _write(root / "w", memory__max=str(2**50), memory__current="0")
    free, where = available_memory(root, _proc_cgroup(tmp_path, "0::/w\n"))
    assert where == "this host's RAM"
    assert abs(free - psutil.virtual_memory().available) < 512 * 2**20


def _make_v1_cgroup(limit_bytes: int) -> Path | None:
    """A real v1 memory cgroup with a limit, where this machine lets us make one (root, v1 hierarchy)."""
    base = Path("/sys/fs/cgroup/memory")
    if not (base / "memory.limit_in_bytes").is_file():
        return None
    directory = base / f"bpbench-test-{uuid.uuid4().hex[:8]}"
    try:
        directory.mkdir()
        (directory / "memory.limit_in_bytes").write_text(str(limit_bytes))
    except OSError:
        return None
    return directory


def test_a_process_in_a_real_cgroup_sees_its_limit_not_the_hosts_ram() -> None:
    directory = _make_v1_cgroup(768 * 2**20)
    if directory is None:
        pytest.skip("cannot create a v1 memory cgroup on this machine (needs root and the v1 hierarchy)")
    try:
        code = (
            "import os, sys; open(sys.argv[1] + '/cgroup.procs', 'w').write(str(os.getpid()));"
            "from services.devices.memory import available_memory; free, where = available_memory();"
            "print(free); print(where)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(directory)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[3],
            env={**os.environ, "PYTHONPATH": "."},
        ).stdout.splitlines()
    finally:
        directory.rmdir()
    free, where = int(out[0]), out[1]
    assert where.startswith("this worker's cgroup memory limit (768.0 MiB at ")
    assert 0 < free < 768 * 2**20


def test_the_hosts_oom_kill_count_is_read_from_vmstat(tmp_path: Path) -> None:
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("pgfault 123\noom_kill 7\nnr_free_pages 5\n")
    assert host_oom_kills(vmstat) == 7
    vmstat.write_text("pgfault 123\n")  # a kernel older than 4.13 does not count them
    assert host_oom_kills(vmstat) is None


def test_a_process_that_is_gone_has_no_memory_bound() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_memory_bound(child.pid) is None
    here = process_memory_bound(os.getpid())
    assert here is not None and 0 < here.used_bytes < here.limit_bytes
