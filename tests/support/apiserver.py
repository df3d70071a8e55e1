"""A real API server for tests: `uvicorn services.api.main:app` in a subprocess on a free port (real HTTP)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from harness.processes import PROJECT_ROOT, free_port, service_env
from services.core.config import Settings

__all__ = ["ADMIN_TOKEN", "PROJECT_ROOT", "ApiServer", "api", "free_port", "running_api", "server_env"]


@dataclass
class ApiServer:
    """A running API: its base URL, its admin token, the process and its log."""

    url: str
    token: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self, token: str | None = "admin") -> httpx.Client:
        """An HTTP client of this server; `token="admin"` sends the admin token, None sends none."""
        value = self.token if token == "admin" else token
        headers = {"Authorization": f"Bearer {value}"} if value else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def log(self) -> str:
        """The end of the server's log."""
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


def server_env(settings: Settings, token: str, **extra: str) -> dict[str, str]:
    """The environment of a server or CLI process for these settings."""
    return service_env(settings.database_url, settings.broker_url, settings.data_dir, token, **extra)


@contextlib.contextmanager
def running_api(
    settings: Settings, log_dir: Path, token: str, *, ready_path: str = "/readyz", **env: str
) -> Iterator[ApiServer]:
    """Start the API on a free port with these settings; yield once `ready_path` answers 200, then stop it."""
    port = free_port()
    log_path = log_dir / f"api-{port}.log"
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "services.api.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            env=server_env(settings, token, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=PROJECT_ROOT,
        )
    server = ApiServer(f"http://127.0.0.1:{port}", token, process, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"the API exited with {process.returncode}:\n{server.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}{ready_path}", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"the API was not ready within 60 s:\n{server.log()}")
            time.sleep(0.2)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


ADMIN_TOKEN = "bpb_test-admin-token-for-the-api-tests"


@pytest.fixture(scope="session")
def api(service_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The API on this session's database and broker, with `ADMIN_TOKEN` as its first admin token."""
    with running_api(service_settings, tmp_path_factory.mktemp("api"), ADMIN_TOKEN) as server:
        yield server
