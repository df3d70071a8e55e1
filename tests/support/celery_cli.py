"""Celery's own command line (`celery -A workers ...`) on a test session's broker, as an operator runs it.

`run_celery` runs one command to its end (`inspect ping`, `inspect query_task`); `CeleryProcess` keeps one
running (`events --dump`, `flower`) with its output in a log file, and stops it at the end of the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.processes import service_env
from services.core.config import Settings

CELERY = [sys.executable, "-m", "celery"]


def celery_env(settings: Settings) -> dict[str, str]:
    """The environment of a `celery -A workers` process on these settings' database and broker."""
    return service_env(settings.database_url, settings.broker_url, Path(settings.data_dir), "")


def run_celery(settings: Settings, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `celery <args>` to its end; returns its exit status and output."""
    return subprocess.run(
        [*CELERY, *args], env=celery_env(settings), capture_output=True, text=True, timeout=timeout_s
    )


@dataclass
class CeleryProcess:
    """A long-running `celery` command and the file its output goes to."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        """Everything it has printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of its process group if it does not end within 10 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


@contextlib.contextmanager
def running_celery(settings: Settings, log_path: Path, *args: str) -> Iterator[CeleryProcess]:
    """`celery <args>` running for the duration of the block."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*CELERY, *args],
            env=celery_env(settings),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = CeleryProcess(process, log_path)
    try:
        yield running
    finally:
        running.stop()
