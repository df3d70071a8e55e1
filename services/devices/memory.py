"""How much memory a job may still take on this host: the smaller of the host's available RAM and the
headroom under the process's cgroup memory limit (a container's limit, or a systemd slice's).

psutil reports the host's RAM, which inside a container with an 8 GiB limit on a 24 GiB host says 24 GiB: a
job sized by it is OOM-killed. The cgroup limit is read for both hierarchies:

- cgroup v2: `memory.max` (a number or `max`) and `memory.current`, for the process's cgroup and each of
  its ancestors (a parent's limit binds its children too);
- cgroup v1: `memory.limit_in_bytes` (a huge number when unlimited) and `memory.usage_in_bytes` in the
  memory controller's hierarchy, likewise up the tree.

Usage counts the page cache, which the kernel reclaims before it kills anything, so `inactive_file` (v2;
`total_inactive_file` in v1) is subtracted from it, as the kubelet's working-set figure does.

The same files tell afterwards whether a process was killed for memory: `memory_cgroup_of(pid)` is the
group a process belongs to, whose `oom_kills()` counts the processes of that group the kernel's
out-of-memory killer ended (v2 `memory.events`, v1 `memory.oom_control`: `oom_kill`, whichever limit, the
group's or the host's, ran out); `host_oom_kills()` is the host's count (`/proc/vmstat`) where there is no
group to read. `process_memory_bound(pid)` is the bound a process lives under now: its tightest cgroup
limit, or the host's RAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

from services.jobs.resources import mib

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
PROC_VMSTAT = Path("/proc/vmstat")
UNLIMITED_FROM = 2**62  # v1 writes PAGE_COUNTER_MAX * page size (about 2**63) for "no limit"


@dataclass(frozen=True)
class CgroupLimit:
    """The binding memory limit of one cgroup on the path from this process's cgroup to the root."""

    limit_bytes: int
    usage_bytes: int
    path: Path
    version: int

    @property
    def headroom_bytes(self) -> int:
        return max(0, self.limit_bytes - self.usage_bytes)


def _read_int(file: Path) -> int | None:
    try:
        text = file.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _stat_value(file: Path, key: str) -> int:
    try:
        for line in file.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _process_cgroups(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """The process's v2 cgroup path and its v1 memory-controller path, from /proc/self/cgroup."""
    v2: str | None = None
    v1_memory: str | None = None
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1_memory = path
    return v2, v1_memory


def _chain(base: Path, relative: str) -> list[Path]:
    """The cgroup directories from `relative` (under `base`) up to `base`, those that exist.

    Inside a cgroup namespace the path in /proc/self/cgroup can name a directory the mount does not show;
    then only the mount's root (the namespace's own cgroup) is read.
    """
    here = base / relative.strip("/") if relative.strip("/") else base
    chain = []
    while True:
        if here.is_dir():
            chain.append(here)
        if here == base or base not in here.parents:
            break
        here = here.parent
    return chain or ([base] if base.is_dir() else [])


def cgroup_memory_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> CgroupLimit | None:
    """The tightest cgroup memory limit that applies to this process (least headroom), or None."""
    v2_path, v1_path = _process_cgroups(proc_cgroup)
    limits: list[CgroupLimit] = []
    if v1_path is not None and (root / "memory").is_dir():
        for directory in _chain(root / "memory", v1_path):
            limit = _read_int(directory / "memory.limit_in_bytes")
            usage = _read_int(directory / "memory.usage_in_bytes")
            if limit is None or limit >= UNLIMITED_FROM or usage is None:
                continue
            usage -= _stat_value(directory / "memory.stat", "total_inactive_file")
            limits.append(CgroupLimit(limit, max(0, usage), directory, 1))
    if v2_path is not None and (root / "cgroup.controllers").is_file():
        for directory in _chain(root, v2_path):
            limit = _read_int(directory / "memory.max")
            usage = _read_int(directory / "memory.current")
            if limit is None or usage is None:
                continue
            usage -= _stat_value(directory / "memory.stat", "inactive_file")
            limits.append(CgroupLimit(limit, max(0, usage), directory, 2))
    return min(limits, key=lambda c: c.headroom_bytes, default=None)


def available_memory(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> tuple[int, str]:
    """Bytes a new job may still take in this process's memory, and where that bound comes from."""
    host = int(psutil.virtual_memory().available)
    limit = cgroup_memory_limit(root, proc_cgroup)
    if limit is not None and limit.headroom_bytes < host:
        return limit.headroom_bytes, (
            f"this worker's cgroup memory limit ({mib(limit.limit_bytes)} at {limit.path}, "
            f"{mib(limit.usage_bytes)} in use)"
        )
    return host, "this host's RAM"


@dataclass(frozen=True)
class MemoryCgroup:
    """The memory cgroup a process belongs to: its own group's directory and the hierarchy's version."""

    path: Path
    version: int

    def limit_bytes(self) -> int | None:
        """This group's own memory limit now (None: no limit, or none readable)."""
        limit = _read_int(self.path / ("memory.max" if self.version == 2 else "memory.limit_in_bytes"))
        return None if limit is None or limit >= UNLIMITED_FROM else limit

    def oom_kills(self) -> int | None:
        """Processes of this group the OOM killer ended so far (None if the kernel does not say)."""
        file = self.path / ("memory.events" if self.version == 2 else "memory.oom_control")
        return _stat_int(file, "oom_kill")


def memory_cgroup_of(pid: int, root: Path = CGROUP_ROOT) -> MemoryCgroup | None:
    """The memory cgroup of process `pid` (v1's memory controller where mounted, else v2), or None."""
    v2_path, v1_path = _process_cgroups(Path(f"/proc/{pid}/cgroup"))
    if v1_path is not None and (root / "memory").is_dir():
        chain = _chain(root / "memory", v1_path)
        return MemoryCgroup(chain[0], 1) if chain else None
    if v2_path is not None and (root / "cgroup.controllers").is_file():
        chain = _chain(root, v2_path)
        return MemoryCgroup(chain[0], 2) if chain else None
    return None


def host_oom_kills(vmstat: Path = PROC_VMSTAT) -> int | None:
    """Processes the OOM killer ended on this host since it started (None if the kernel does not say)."""
    return _stat_int(vmstat, "oom_kill")


@dataclass(frozen=True)
class MemoryBound:
    """The memory a process lives under now: `used_bytes` of `limit_bytes`, and where that bound is."""

    used_bytes: int
    limit_bytes: int
    where: str


def process_memory_bound(pid: int, root: Path = CGROUP_ROOT) -> MemoryBound | None:
    """Process `pid`'s tightest cgroup memory limit and its group's usage, or the host's RAM in use; None
    once the process is gone."""
    proc_cgroup = Path(f"/proc/{pid}/cgroup")
    if not proc_cgroup.exists():
        return None
    limit = cgroup_memory_limit(root, proc_cgroup)
    if limit is not None:
        return MemoryBound(limit.usage_bytes, limit.limit_bytes, f"the cgroup memory limit at {limit.path}")
    host = psutil.virtual_memory()
    return MemoryBound(int(host.total - host.available), int(host.total), "this host's RAM")


def _stat_int(file: Path, key: str) -> int | None:
    """The value of `key` in a `name value` file, or None when the file or the key is missing."""
    try:
        lines = file.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return None
    return None
