"""`bpbench api --workers N`: each process accepts on a listening socket of its own (SO_REUSEPORT), so
connections spread over the processes; `--shared-socket` keeps uvicorn's one socket for all."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from harness.processes import bpbench_command
from services.core.config import Settings
from tests.support.apiserver import ADMIN_TOKEN, free_port, server_env
from tests.support.jobs import wait_until

CONNECTIONS = 32  # kernel hashing leaves a process without any of them with probability 2 * 2**-32


@contextlib.contextmanager
def api_processes(tmp_path: Path, broker_url: str, *args: str) -> Iterator[tuple[int, list[psutil.Process]]]:
    """`bpbench api --workers 2 ARGS` on a fresh SQLite file: its port and its two serving processes."""
    settings = Settings(data_dir=tmp_path, broker_url=broker_url)
    port = free_port()
    argv = [*bpbench_command(), "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "2", *args]
    with (tmp_path / "api.log").open("wb") as log:
        process = subprocess.Popen(argv, env=server_env(settings, ADMIN_TOKEN), stdout=log, stderr=log)
    try:

        def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            return False

        wait_until(ready, 90, "bpbench api --workers 2 to serve")

        def two_servers() -> list[psutil.Process] | None:
            children = psutil.Process(process.pid).children()
            found = [child for child in children if "spawn_main" in " ".join(child.cmdline())]
            return found if len(found) == 2 else None

        yield port, wait_until(two_servers, 30, "two API processes")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            for child in psutil.Process(process.pid).children(recursive=True):  # not left orphaned
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            process.kill()
            process.wait(timeout=10)


def listening_socket(server: psutil.Process, port: int) -> str:
    """The `socket:[inode]` a serving process listens on."""
    (listen,) = [c for c in server.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port]
    return os.readlink(f"/proc/{server.pid}/fd/{listen.fd}")


def established(server: psutil.Process, port: int) -> int:
    return sum(1 for c in server.net_connections("tcp") if c.status == "ESTABLISHED" and c.laddr.port == port)


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")
def test_each_api_process_accepts_on_its_own_socket_and_gets_connections(
    redis_broker_url: str, tmp_path: Path
) -> None:
    with api_processes(tmp_path, redis_broker_url) as (port, servers):
        assert len({listening_socket(server, port) for server in servers}) == 2
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
        try:
            for client in clients:  # one request each, so every connection has been accepted
                client.sendall(b"GET /healthz HTTP/1.1\r\nHost: api\r\n\r\n")
                assert client.recv(64).startswith(b"HTTP/1.1 200")
            counts = [established(server, port) for server in servers]
        finally:
            for client in clients:
                client.close()
    assert sum(counts) == CONNECTIONS and min(counts) >= 1, counts


def test_shared_socket_serves_every_process_from_one_listening_socket(
    redis_broker_url: str, tmp_path: Path
) -> None:
    with api_processes(tmp_path, redis_broker_url, "--shared-socket") as (port, servers):
        assert len({listening_socket(server, port) for server in servers}) == 1
