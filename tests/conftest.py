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

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

# Shared with the benchmarks (harness/); imported here so the tests keep importing them from conftest.
from harness import processes, redis_databases
from harness.postgres import create_postgres_database, drop_postgres_database
from harness.processes import bpbench_command, server_reachable
from services.core.config import Settings
from services.core.db import dispose_engines, make_engine
from services.core.migrate import upgrade_to_head
from services.devices.models import Worker
from services.jobs.models import FINAL_STATUSES, Job
from services.jobs.spec import JobSpec

CI = os.environ.get("CI", "").strip().lower() == "true"
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
WORKER_READY_TIMEOUT_S = 60.0
JOB_TIMEOUT_S = 60.0

T = TypeVar("T")


# --- servers -------------------------------------------------------------------------------------------


def require_server(name: str, url: str, default_port: int) -> None:
    """Skip the test when the server is missing, or fail it when CI=true."""
    if server_reachable(url, default_port):
        return
    parts = urlsplit(url)  # host and port only: the URL may carry a password
    message = f"{name} is not reachable at {parts.hostname or '127.0.0.1'}:{parts.port or default_port}"
    if CI:
        pytest.fail(f"{message} (CI=true: a missing server is a failure, not a skip)")
    pytest.skip(message)


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


@contextlib.contextmanager
def claimed_redis_database() -> Iterator[str]:
    """A Redis database of its own (1..15, locked against other users), emptied before and after."""
    require_server("Redis", REDIS_SERVER_URL, 6379)
    pinned = os.environ.get("BPBENCH_TEST_REDIS_DB")
    candidates = [int(pinned)] if pinned else list(range(15, 0, -1))
    with redis_databases.claimed_redis_database(REDIS_SERVER_URL, candidates) as url:
        yield url


@pytest.fixture(scope="session")
def redis_broker_url() -> Iterator[str]:
    """A Redis database of this test run's own (locked against other runs), emptied before and after."""
    with claimed_redis_database() as url:
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


@pytest.fixture(scope="session")
def rabbitmq_broker_url(rabbitmq_url: str) -> Iterator[str]:
    """A RabbitMQ vhost of this test run's own."""
    with rabbitmq_vhost(rabbitmq_url) as url:
        yield url


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


def wait_until(
    predicate: Callable[[], T | None], timeout_s: float, what: str, *, interval_s: float = 0.1
) -> T:
    """Poll `predicate` until it returns something truthy (returned); fail after `timeout_s` naming `what`."""
    try:
        return processes.wait_until(predicate, timeout_s, what, interval_s)
    except TimeoutError as exc:
        pytest.fail(str(exc))


def wait_for_job(
    session_maker: sessionmaker[Session],
    job_id: str,
    *,
    statuses: frozenset[str] | set[str] = FINAL_STATUSES,
    timeout_s: float = JOB_TIMEOUT_S,
) -> Job:
    """Wait until the job's status is one of `statuses` (default: final); returns the job row."""

    def current() -> Job | None:
        with session_maker() as session:
            job = session.get(Job, job_id)
            return job if job is not None and job.status in statuses else None

    return wait_until(current, timeout_s, f"job {job_id} to reach {sorted(statuses)}")


def tiny_spec(**overrides: Any) -> JobSpec:
    """A train job that takes well under a second: 20 steps of a small MLP on synthetic data."""
    doc: dict[str, Any] = {
        "kind": "train",
        "device": "cpu",
        "model": {"name": "mlp", "layers": [784, 16, 10]},
        "dataset": "synthetic",
        "synthetic_samples": 256,
        "steps": 20,
        "batch_size": 32,
        "timing": {"warmup": 2, "window": 3, "min_repeats": 3, "max_repeats": 5},
    }
    doc.update(overrides)
    return JobSpec.model_validate(doc)


# --- worker processes ----------------------------------------------------------------------------------


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
