"""Shared fixtures: real servers, migrated databases on SQLite and PostgreSQL, real worker processes.

Nothing is mocked: PostgreSQL, Redis and RabbitMQ are the local servers (127.0.0.1 by default; override with
`BPBENCH_TEST_POSTGRES_URL`, `BPBENCH_TEST_REDIS_URL`, `BPBENCH_TEST_RABBITMQ_URL`), and workers are
`bpbench worker` subprocesses. A server that is not reachable SKIPS the tests that need it, except when
`CI=true`, where it FAILS them (CI must prove the tests ran).

`database_url` is parametrized over SQLite and PostgreSQL (restrict with `BPBENCH_TEST_DATABASES=sqlite` or
`=postgresql`): a fresh database per test session and backend, created, migrated to head, and dropped after.
`redis_broker_url` claims a Redis database number of its own (1..15, locked with a key, so test runs in
parallel do not steal each other's messages) and empties it before and after.

`broker_url` (what `service_settings`, the shared worker and the API use) is Redis for every test, and
Redis *and* RabbitMQ (a private vhost on the local server) for tests marked `every_broker`: those run once
per broker (restrict with `BPBENCH_TEST_BROKERS=redis` or `=rabbitmq`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.core.config import Settings
from services.core.db import make_engine
from services.core.migrate import upgrade_to_head
from tests.support.servers import (
    BROKERS,
    DATABASE_BACKENDS,
    POSTGRES_ADMIN_URL,
    RABBITMQ_URL,
    claimed_redis_database,
    empty_database,
    rabbitmq_vhost,
    require_server,
)
from tests.support.workers import WorkerProcess, start_worker

# --- servers -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """A URL of the local PostgreSQL server's maintenance database (for CREATE/DROP DATABASE)."""
    require_server("PostgreSQL", POSTGRES_ADMIN_URL, 5432)
    return POSTGRES_ADMIN_URL


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The local RabbitMQ server's URL (no vhost)."""
    require_server("RabbitMQ", RABBITMQ_URL, 5672)
    return RABBITMQ_URL.rstrip("/")


@pytest.fixture(scope="session", params=DATABASE_BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database migrated to head, one per backend per test session (SQLite file / PostgreSQL database)."""
    with empty_database(request.param, request, tmp_path_factory.mktemp(f"db-{request.param}")) as url:
        upgrade_to_head(url)
        yield url


@pytest.fixture(params=DATABASE_BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all, for tests of the migrations themselves."""
    with empty_database(request.param, request, tmp_path) as url:
        yield url


@pytest.fixture(scope="session")
def session_maker(database_url: str) -> Iterator[sessionmaker[Session]]:
    """A sessionmaker bound to `database_url`."""
    engine = make_engine(database_url)
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()


@pytest.fixture
def db_session(session_maker: sessionmaker[Session]) -> Iterator[Session]:
    """A session on `database_url`, closed after the test."""
    with session_maker() as session:
        yield session


@pytest.fixture(scope="session")
def redis_broker_url() -> Iterator[str]:
    """A Redis database of this test run's own (locked against other runs), emptied before and after."""
    with claimed_redis_database() as url:
        yield url


@pytest.fixture(scope="session")
def rabbitmq_broker_url(rabbitmq_url: str) -> Iterator[str]:
    """A RabbitMQ vhost of this test run's own."""
    with rabbitmq_vhost(rabbitmq_url) as url:
        yield url


# Once pocl has run kernels through PyOpenCL, Intel's OpenCL runtime cannot allocate in that process
# (engine.backends.oneapi refuses it), and several files run OpenCL work in-process. So the oneapi tests
# must be the first file of whichever process takes them. pytest-xdist's `--dist loadfile` hands out
# files in the order of its work queue, and by default it re-sorts that queue by the number of tests per
# file (which put the oneapi file behind OpenCL work in CI); here that re-sorting is off and the collection
# order below is the work queue: the oneapi file first, then the files with a `slow` test (so no
# minutes-long test is left for the end while the other processes idle), then the rest by their number of
# tests, largest first, as xdist would.
RUN_FIRST = ("tests/engine/test_backend_oneapi.py",)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist is installed
        config.option.loadscopereorder = False


def file_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = Counter(file_of(item) for item in items)
    slow = {file_of(item) for item in items if item.get_closest_marker("slow") is not None}

    def place(item: pytest.Item) -> tuple[int, int, int]:
        path = file_of(item)
        return (0 if path in RUN_FIRST else 1, 0 if path in slow else 1, -tests[path])

    items.sort(key=place)  # stable: within a file the tests keep their order


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that needs `broker_url` on Redis; those marked `every_broker` on each of BROKERS."""
    if "broker_url" not in metafunc.fixturenames:
        return
    every = metafunc.definition.get_closest_marker("every_broker") is not None
    metafunc.parametrize("broker_url", BROKERS if every else ["redis"], indirect=True, scope="session")


@pytest.fixture(scope="session")
def broker_url(request: pytest.FixtureRequest) -> str:
    """The broker of this test: `redis_broker_url` or `rabbitmq_broker_url` (see `pytest_generate_tests`)."""
    fixtures = {"redis": "redis_broker_url", "rabbitmq": "rabbitmq_broker_url"}
    if request.param not in fixtures:
        raise ValueError(f"BPBENCH_TEST_BROKERS names {request.param!r}; accepted: {', '.join(fixtures)}")
    return str(request.getfixturevalue(fixtures[request.param]))


@pytest.fixture(scope="session")
def service_settings(
    database_url: str, broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """Settings of this test session's database and broker; the client-side Celery app is pointed at them."""
    from services.core import queue

    settings = Settings(
        database_url=database_url,
        broker_url=broker_url,
        data_dir=tmp_path_factory.mktemp("data"),
        heartbeat_interval_s=1.0,
    )
    queue.configure(settings)
    yield settings


# --- waiting -------------------------------------------------------------------------------------------


# --- worker processes ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cpu_worker(
    service_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One real CPU worker (prefork, 2 processes) on this session's database and broker, shared by tests."""
    worker = start_worker(
        service_settings.database_url,
        service_settings.broker_url,
        tmp_path_factory.mktemp("worker"),
        concurrency=2,
    )
    yield worker
    worker.stop()


@pytest.fixture
def worker_factory(service_settings: Settings, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start extra workers for one test (`worker_factory(device="cpu", threads=1)`); all stopped after it."""
    started: list[WorkerProcess] = []

    def factory(**options: Any) -> WorkerProcess:
        worker = start_worker(service_settings.database_url, service_settings.broker_url, tmp_path, **options)
        started.append(worker)
        return worker

    yield factory
    for worker in started:
        worker.stop()
