"""The data directory is private to its user, and `/readyz` says not ready while its disk is full."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from harness.processes import bpbench_command
from services.core.config import Settings
from services.core.data_dir import MIN_FREE_BYTES, write_atomically
from services.core.db import make_engine
from tests.cli.test_stack import stack_env
from tests.support.apiserver import ADMIN_TOKEN, free_port, running_api
from tests.support.jobs import wait_until
from tests.support.servers import CI


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_new_sqlite_database_and_its_journal_files_are_private(tmp_path: Path) -> None:
    database = tmp_path / "fresh" / "bpbench.db"
    engine = make_engine(f"sqlite:///{database}")
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE t (x INTEGER)"))
            connection.execute(text("INSERT INTO t VALUES (1)"))
        assert mode(database) == 0o600
        assert mode(database.parent) == 0o700
        assert mode(Path(f"{database}-wal")) == 0o600
    finally:
        engine.dispose()


def test_an_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    database = tmp_path / "bpbench.db"
    database.touch(mode=0o644)
    database.chmod(0o644)
    make_engine(f"sqlite:///{database}").dispose()
    assert mode(database) == 0o600


def test_up_keeps_its_database_broker_log_and_directory_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "stack"
    port = free_port()
    argv = [*bpbench_command(), "up", "--data-dir", str(data_dir), "--port", str(port), "--suite", "none"]
    process = subprocess.Popen(argv, env=stack_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool | None:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200 or None
            return None

        wait_until(ready, 90, "bpbench up")
        assert mode(data_dir) == 0o700
        modes = {name: mode(data_dir / name) for name in ("bpbench.db", "broker.aof", "api-token")}
        assert modes == {"bpbench.db": 0o600, "broker.aof": 0o600, "api-token": 0o600}
        written = [p for p in data_dir.rglob("*") if p.is_file()]
        assert written and all(mode(p) == 0o600 for p in written), {str(p): oct(mode(p)) for p in written}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pids = (
                json.loads((data_dir / "stack.pids").read_text())
                if (data_dir / "stack.pids").exists()
                else {}
            )
            for pid in [*pids.get("children", {}).values(), process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for this test (needs root; skipped, or failed under CI=true, without)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", f"bpbench-test-{uuid.uuid4().hex[:8]}", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs here: {mounted.stderr.strip()}"
        if CI:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write into `directory` until its file system refuses with ENOSPC; the filler file."""
    filler = directory / "filler"
    chunk = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(chunk)
    return filler


def test_readyz_says_not_ready_while_the_data_disk_is_full_and_ready_once_freed(
    service_settings: Settings, small_tmpfs: Path, tmp_path: Path
) -> None:
    settings = service_settings.model_copy(update={"data_dir": small_tmpfs})
    with running_api(settings, tmp_path, ADMIN_TOKEN) as server:
        before = httpx.get(f"{server.url}/readyz", timeout=10)
        filler = fill(small_tmpfs)
        assert shutil.disk_usage(small_tmpfs).free < MIN_FREE_BYTES
        full = httpx.get(f"{server.url}/readyz", timeout=10)
        filler.unlink()
        after = httpx.get(f"{server.url}/readyz", timeout=10)
    assert before.status_code == 200, before.text
    assert before.json()["checks"]["disk"] == "ok"
    assert full.status_code == 503
    assert full.json()["status"] == "unavailable"
    assert full.json()["checks"]["disk"].startswith("disk full: ")
    assert str(small_tmpfs) in full.json()["checks"]["disk"]
    assert (full.json()["checks"]["database"], full.json()["checks"]["broker"]) == ("ok", "ok")
    assert after.status_code == 200, after.text


def test_a_file_rewritten_atomically_is_never_seen_empty_or_half_written(tmp_path: Path) -> None:
    """`bpbench up` rewrites `stack.pids` on each restart while tests and people read it: a reader sees
    the old content or the new, never the truncated file that `Path.write_text` leaves for a moment."""
    path = tmp_path / "stack.pids"
    versions = [json.dumps({"children": {"worker-cpu": pid}}) * 200 + "\n" for pid in range(1000, 1400)]
    write_atomically(path, versions[0])
    seen: set[str] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(path.read_text())

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the reader runs between the writer's steps as often as it can
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for text in versions:
            write_atomically(path, text)
    finally:
        done.set()
        reader.join()
        sys.setswitchinterval(switch)
    assert path.read_text() == versions[-1]
    assert len(seen) > 1, "the reader never overlapped a rewrite"
    assert seen <= set(versions), sorted({t[:40] for t in seen - set(versions)})
    assert list(tmp_path.iterdir()) == [path], "a temporary file was left behind"
