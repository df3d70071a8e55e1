"""Starting and reaching server processes: the `bpbench` command, free ports, environments, waiting."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

PROJECT_ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def bpbench_command() -> list[str]:
    """The `bpbench` console script of this environment, or the same entry point through the interpreter."""
    script = Path(sys.executable).with_name("bpbench")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from cli import main; main()"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (on `host`, loopback by default)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_reachable(url: str, default_port: int, timeout_s: float = 2.0) -> bool:
    """True if a TCP connection to the URL's host and port succeeds."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout_s):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    """Poll `predicate` until it returns something truthy (returned); `TimeoutError` naming `what` after
    `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def with_project_on_path(env: dict[str, str]) -> dict[str, str]:
    """`env` with this checkout first on PYTHONPATH, so a child imports it, installed or not."""
    paths = (str(PROJECT_ROOT), env.get("PYTHONPATH", ""))
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def service_env(
    database_url: str, broker_url: str, data_dir: Path, token: str, **extra: str
) -> dict[str, str]:
    """The environment of an API, worker or CLI process on this database and broker, with `token` as its
    API token: this process's environment without any other `BPBENCH_` value, this checkout on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPBENCH_")}
    env.update(
        {
            "BPBENCH_DATABASE_URL": database_url,
            "BPBENCH_BROKER_URL": broker_url,
            "BPBENCH_DATA_DIR": str(data_dir),
            "BPBENCH_API_TOKEN": token,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env = with_project_on_path(env)
    env.update(extra)
    return env
