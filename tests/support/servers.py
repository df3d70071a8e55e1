"""The local servers the tests use (PostgreSQL, Redis, RabbitMQ): where they are, a skip (or under
CI=true a failure) when one is missing, and databases, Redis databases and vhosts of a test run's own."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from harness import redis_databases
from harness.postgres import create_postgres_database, drop_postgres_database
from harness.processes import server_reachable
from services.core.db import dispose_engines
from tests.support.needs import CI, missing

POSTGRES_ADMIN_URL = os.environ.get(
    "BPBENCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


REDIS_SERVER_URL = os.environ.get("BPBENCH_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")


RABBITMQ_URL = os.environ.get("BPBENCH_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")


DATABASE_BACKENDS = [
    name.strip()
    for name in os.environ.get("BPBENCH_TEST_DATABASES", "sqlite,postgresql").split(",")
    if name.strip()
]


BROKERS = [
    name.strip()
    for name in os.environ.get("BPBENCH_TEST_BROKERS", "redis,rabbitmq").split(",")
    if name.strip()
]


def require_server(name: str, url: str, default_port: int) -> None:
    """Skip the test when the server is missing, or fail it when CI=true."""
    if server_reachable(url, default_port):
        return
    parts = urlsplit(url)  # host and port only: the URL may carry a password
    message = f"{name} is not reachable at {parts.hostname or '127.0.0.1'}:{parts.port or default_port}"
    missing(message)


@contextlib.contextmanager
def empty_database(backend: str, request: pytest.FixtureRequest, tmp_dir: Path) -> Iterator[str]:
    """An empty database of `backend` ("sqlite" or "postgresql") for the duration of the block."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_dir / 'bpbench.db'}"
        dispose_engines()
        return
    if backend != "postgresql":
        raise ValueError(f"BPBENCH_TEST_DATABASES names {backend!r}; accepted: sqlite, postgresql")
    admin_url = request.getfixturevalue("postgres_admin_url")
    url = create_postgres_database(admin_url)
    try:
        yield url
    finally:
        drop_postgres_database(admin_url, url)


@contextlib.contextmanager
def claimed_redis_database() -> Iterator[str]:
    """A Redis database of its own (1..15, locked against other users), emptied before and after."""
    require_server("Redis", REDIS_SERVER_URL, 6379)
    pinned = os.environ.get("BPBENCH_TEST_REDIS_DB")
    candidates = [int(pinned)] if pinned else list(range(15, 0, -1))
    with redis_databases.claimed_redis_database(REDIS_SERVER_URL, candidates) as url:
        yield url


@contextlib.contextmanager
def rabbitmq_vhost(rabbitmq_url: str) -> Iterator[str]:
    """A private vhost on the local RabbitMQ (so no other run's worker takes its messages), deleted after."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        message = "rabbitmqctl is needed to create a private vhost on the local RabbitMQ"
        if CI:
            pytest.fail(f"{message} (CI=true)")
        pytest.skip(message)
    user = urlsplit(rabbitmq_url).username or "guest"
    vhost = f"bpbench-test-{uuid.uuid4().hex[:8]}"

    def ctl(*args: str) -> None:
        subprocess.run([rabbitmqctl, "-q", *args], check=True, capture_output=True, timeout=60)

    ctl("add_vhost", vhost)
    try:
        ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield f"{rabbitmq_url}/{vhost}"
    finally:
        ctl("delete_vhost", vhost)
