"""Real `bpbench worker` subprocesses for tests: started on a database and broker, waited for until they
consume, stopped with their whole process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from harness.processes import bpbench_command
from services.core.db import make_engine
from services.devices.models import Worker
from tests.support.jobs import wait_until

WORKER_READY_TIMEOUT_S = 60.0


@dataclass
class WorkerProcess:
    """A running `bpbench worker` subprocess and its log file."""

    name: str
    device: str
    process: subprocess.Popen[bytes]
    log_path: Path
    database_url: str
    device_id: str = ""
    queues: list[str] = field(default_factory=list)

    def log(self, tail_chars: int = 4000) -> str:
        """The end of the worker's log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-tail_chars:]

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (Celery's warm shutdown) and wait; SIGKILL the whole process group if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
                pytest.fail(f"worker {self.name} did not stop within {timeout_s:g} s:\n{self.log()}")
        # Pool processes of a prefork worker are in the same group; none may outlive the test.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return int(self.process.returncode)


def start_worker(
    database_url: str,
    broker_url: str,
    log_dir: Path,
    *,
    device: str = "cpu",
    name: str | None = None,
    concurrency: int = 1,
    threads: int | None = None,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = WORKER_READY_TIMEOUT_S,
    wrapper: list[str] | None = None,
) -> WorkerProcess:
    """Start `bpbench worker` with BPBENCH_ settings for this database and broker; wait until it consumes.

    `wrapper` is put before the command line (e.g. `ip netns exec <ns>` to run it in a network namespace);
    it must exec the command, so that the process started is the worker itself.
    """
    name = name or f"test-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    log_path = log_dir / f"{name.replace('@', '_')}.log"
    child_env = {
        **os.environ,
        "BPBENCH_DATABASE_URL": database_url,
        "BPBENCH_BROKER_URL": broker_url,
        "BPBENCH_DATA_DIR": str(log_dir),
        "BPBENCH_HEARTBEAT_INTERVAL_S": "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    argv = [
        *(wrapper or []),
        *bpbench_command(),
        "worker",
        "--device",
        device,
        "--name",
        name,
        "--concurrency",
        str(concurrency),
    ]
    if threads is not None:
        argv += ["--threads", str(threads)]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            argv, env=child_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    worker = WorkerProcess(
        name=name, device=device, process=process, log_path=log_path, database_url=database_url
    )
    engine = make_engine(database_url)
    try:

        def registered() -> Worker | None:
            if process.poll() is not None:
                pytest.fail(
                    f"worker {name} exited with {process.returncode} before it was ready:\n{worker.log()}"
                )
            with Session(engine) as session:
                row = session.scalars(select(Worker).where(Worker.name == name)).one_or_none()
                return row if row is not None and row.stopped_at is None else None

        try:
            row = wait_until(registered, ready_timeout_s, f"worker {name} to start consuming", interval_s=0.2)
        except BaseException:
            worker.stop()
            raise
        worker.device_id = row.device_id
        worker.queues = list(row.queues)
    finally:
        engine.dispose()
    return worker
