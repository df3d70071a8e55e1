"""Fault-test machinery: private servers to break, and bpbench processes that are always cleaned up.

A test that stops a server starts its own first (`redis-server` on a free port, a throwaway PostgreSQL
cluster made with `initdb` and run with `pg_ctl` in a temp dir), so the machine's shared servers keep
serving the rest of the suite. Every process is started in its own session and killed by process group
in a finalizer, so a failing test leaves no orphan. A missing tool skips the test, or fails it when
`CI=true`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from harness.postgres import create_postgres_database, drop_postgres_database
from harness.processes import bpbench_command, free_port
from services.core import queue
from services.core.config import Settings
from services.core.db import dispose_engines, make_engine
from services.core.migrate import upgrade_to_head
from services.devices.models import Worker
from services.jobs.models import FINAL_STATUSES, Job
from services.results.models import Result
from tests.support.jobs import wait_until
from tests.support.needs import missing

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def require_tool(name: str) -> str:
    """The path of an executable; skip the test without it (fail under CI=true)."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not on PATH")
    return path


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout_s):
            return True
    except OSError:
        return False


def kill_group(process: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    """Signal a process's whole group (it was started with start_new_session) and reap the leader."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


# --- processes -----------------------------------------------------------------------------------------


@dataclass
class Proc:
    """A process started by a fault test, with its log."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        """Start (or restart) the process in its own session, appending to its log."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=PROJECT_ROOT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, wait, then SIGKILL the whole group (pool children included)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)
        kill_group(self.process)

    def kill(self) -> None:
        """SIGKILL the whole group at once (a crash, not a shutdown)."""
        if self.process is not None:
            kill_group(self.process)

    def log(self, tail_chars: int = 6000) -> str:
        """The end of the log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-tail_chars:]


@dataclass
class Stack:
    """The processes, servers and settings of one fault test; everything is stopped by the fixture."""

    tmp: Path
    database_url: str = ""
    broker_url: str = ""
    procs: list[Proc] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    token: str = "bpb_fault-test-admin-token"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a bpbench process of this stack (short heartbeats unless overridden)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BPBENCH_")}
        env.update(
            {
                "BPBENCH_DATABASE_URL": self.database_url,
                "BPBENCH_BROKER_URL": self.broker_url,
                "BPBENCH_DATA_DIR": str(self.tmp / "data"),
                "BPBENCH_API_TOKEN": self.token,
                "BPBENCH_HEARTBEAT_INTERVAL_S": "1",
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p
                ),
            }
        )
        env.update(extra)
        return env

    def settings(self, **overrides: Any) -> Settings:
        """Settings of this stack (for the test's own client side)."""
        return Settings(
            database_url=self.database_url,
            broker_url=self.broker_url,
            data_dir=self.tmp / "data",
            **overrides,
        )

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Proc:
        """Start a process that the fixture will stop."""
        proc = Proc(name, list(argv), env, self.tmp / f"{name}.log").start()
        self.procs.append(proc)
        return proc

    def worker(
        self,
        name: str,
        *,
        concurrency: int = 1,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
        wait: bool = True,
        loglevel: str = "INFO",
    ) -> Proc:
        """`bpbench worker --name <name>`; waits until its row says it consumes."""
        argv = [*prefix, *bpbench_command(), "worker", "--device", "cpu", "--name", name]
        argv += ["--concurrency", str(concurrency), "--threads", "1", "--loglevel", loglevel]
        proc = self.spawn(name, argv, env or self.env())
        if wait:
            self.wait_worker_ready(proc)
        return proc

    def wait_worker_ready(self, proc: Proc, timeout_s: float = 60.0) -> None:
        """Wait for the worker's row (written once Celery consumes)."""
        maker = self.maker()
        started = time.monotonic()

        def ready() -> bool:
            if not proc.alive():
                pytest.fail(f"{proc.name} exited before it was ready:\n{proc.log()}")
            with maker() as session:
                row = session.get(Worker, proc.name)
                return row is not None and row.stopped_at is None and row.last_heartbeat.timestamp() > 0

        wait_until(ready, timeout_s, f"worker {proc.name} to consume", interval_s=0.2)
        assert time.monotonic() - started < timeout_s

    def reconciler(self, **settings_env: str) -> Proc:
        """`bpbench reconciler` with these BPBENCH_ overrides."""
        return self.spawn("reconciler", [*bpbench_command(), "reconciler"], self.env(**settings_env))

    def maker(self) -> sessionmaker[Session]:
        """A sessionmaker on the stack's database (one engine, disposed by the fixture)."""
        if not hasattr(self, "_maker"):
            engine = make_engine(self.database_url)
            self._maker = sessionmaker(bind=engine, expire_on_commit=False)
            self.cleanups.append(engine.dispose)
        return self._maker

    def counts(self, job_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Jobs by status, plus `results` and `duplicates` (jobs with more than one result)."""
        with self.maker()() as session:
            query = select(Job.status, func.count()).group_by(Job.status)
            if job_ids is not None:
                query = query.where(Job.id.in_(list(job_ids)))
            counts = {str(status): int(n) for status, n in session.execute(query)}
            per_job = select(Result.job_id, func.count().label("n")).group_by(Result.job_id)
            if job_ids is not None:
                per_job = per_job.where(Result.job_id.in_(list(job_ids)))
            rows = session.execute(per_job).all()
        counts["results"] = sum(int(n) for _, n in rows)
        counts["duplicates"] = sum(1 for _, n in rows if n > 1)
        return counts

    def all_final(self, job_ids: Sequence[str] | None = None) -> bool:
        """True when every one of these jobs (default: every job) is succeeded, failed or cancelled."""
        query = select(func.count()).select_from(Job).where(Job.status.not_in(FINAL_STATUSES))
        if job_ids is not None:
            query = query.where(Job.id.in_(list(job_ids)))
        with self.maker()() as session:
            return int(session.scalar(query) or 0) == 0

    def logs(self) -> str:
        """Every process's log tail, for a failure message."""
        return "\n".join(f"--- {proc.name} ---\n{proc.log(3000)}" for proc in self.procs)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout_s=10)
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A fault test's stack; every process and server in it is stopped after the test, pass or fail."""
    (tmp_path / "data").mkdir()
    stack = Stack(tmp=tmp_path)
    try:
        yield stack
    finally:
        stack.close()
        dispose_engines()


# --- private servers -----------------------------------------------------------------------------------


@dataclass
class PrivateRedis:
    """A redis-server of the test's own, on a free port, with no persistence (a restart loses messages)."""

    port: int
    dir: Path
    binds: tuple[str, ...] = ("127.0.0.1",)
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_on(self, host: str) -> str:
        return f"redis://{host}:{self.port}/0"

    def start(self) -> None:
        argv = [
            require_tool("redis-server"),
            "--port", str(self.port),
            "--bind", *self.binds,
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
        ]  # fmt: skip
        self.proc = Proc("redis", argv, dict(os.environ), self.dir / "redis.log").start()
        wait_until(lambda: port_open("127.0.0.1", self.port), 20, "the private redis-server")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout_s=10)
        wait_until(lambda: not port_open("127.0.0.1", self.port), 10, "the private redis-server to stop")


def private_redis(stack: Stack, binds: tuple[str, ...] = ("127.0.0.1",)) -> PrivateRedis:
    """Start a private redis-server for the stack (stopped by the stack's cleanup)."""
    directory = stack.tmp / "redis"
    directory.mkdir(exist_ok=True)
    server = PrivateRedis(port=free_port(), dir=directory, binds=binds)
    stack.cleanups.append(server.stop)
    server.start()
    stack.broker_url = server.url
    return server


@dataclass
class PrivatePostgres:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl, run as the `postgres` user when we are root)."""

    port: int
    dir: Path
    listen: tuple[str, ...] = ("127.0.0.1",)
    trust_from: tuple[str, ...] = ()  # extra client networks (CIDR) allowed without a password

    @property
    def data(self) -> Path:
        return self.dir / "cluster"

    def url_on(self, host: str = "127.0.0.1", database: str = "bpbench") -> str:
        return f"postgresql://postgres@{host}:{self.port}/{database}"

    def _as_owner(self, argv: list[str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run(prefix + argv, capture_output=True, text=True, timeout=timeout_s, check=False)

    def init(self) -> None:
        initdb = require_tool("initdb")
        if os.geteuid() == 0:
            require_tool("runuser")
            shutil.chown(self.dir, "postgres", "postgres")
        self.dir.chmod(0o700)
        done = self._as_owner([initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        if done.returncode != 0:
            pytest.fail(f"initdb failed:\n{done.stdout}\n{done.stderr}")
        with (self.data / "pg_hba.conf").open("a") as hba:
            for network in self.trust_from:
                hba.write(f"host all all {network} trust\n")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses='{','.join(self.listen)}' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        done = self._as_owner(
            [require_tool("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"), "-o", options,
             "-w", "-t", "60", "start"]
        )  # fmt: skip
        if done.returncode != 0:
            pytest.fail(f"pg_ctl start failed:\n{done.stdout}\n{done.stderr}\n{self.server_log()}")

    def stop(self, mode: str = "fast") -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        self._as_owner([require_tool("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"])

    def server_log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def private_postgres(
    stack: Stack, listen: tuple[str, ...] = ("127.0.0.1",), trust_from: tuple[str, ...] = ()
) -> PrivatePostgres:
    """A private cluster with database `bpbench` migrated to head; the stack's database."""
    directory = Path(tempfile.mkdtemp(prefix="bpbench-pg-"))
    server = PrivatePostgres(port=free_port(), dir=directory, listen=listen, trust_from=trust_from)
    stack.cleanups.append(lambda: shutil.rmtree(directory, ignore_errors=True))
    server.init()
    stack.cleanups.append(lambda: server.stop("immediate"))
    server.start()
    import psycopg

    with psycopg.connect(server.url_on(database="postgres"), autocommit=True) as connection:
        connection.execute("CREATE DATABASE bpbench")
    stack.database_url = server.url_on()
    upgrade_to_head(stack.database_url)
    return server


def shared_postgres_database(stack: Stack, request: pytest.FixtureRequest) -> str:
    """A fresh database on the shared PostgreSQL server (nothing stops it), migrated to head."""
    admin_url = request.getfixturevalue("postgres_admin_url")
    url = create_postgres_database(admin_url, prefix="bpbench_fault")
    stack.cleanups.append(lambda: drop_postgres_database(admin_url, url))
    upgrade_to_head(url)
    stack.database_url = url
    return url


def point_client_at(stack: Stack) -> None:
    """Point this process's Celery client at the stack's broker (and back to the default afterwards)."""
    previous = queue.get_celery_app().conf.broker_url
    queue.configure(stack.settings())

    def restore() -> None:
        with contextlib.suppress(Exception):
            queue.configure(Settings(broker_url=previous) if previous else Settings())

    stack.cleanups.append(restore)


# --- the API -------------------------------------------------------------------------------------------


@dataclass
class ApiProcess:
    """`uvicorn services.api.main:app` on a fixed port, so a restarted API keeps its URL."""

    stack: Stack
    port: int
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> None:
        argv = [sys.executable, "-m", "uvicorn", "services.api.main:app", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--log-level", "warning"]
        if self.proc is None:
            self.proc = self.stack.spawn(f"api-{self.port}", argv, self.stack.env())
        else:
            self.proc.start()
        if wait_ready:
            wait_until(self.answers, 60, "the API to answer /healthz", interval_s=0.2)

    def answers(self) -> bool:
        if self.proc is not None and not self.proc.alive():
            pytest.fail(f"the API exited:\n{self.proc.log()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def readyz(self) -> int:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=10).status_code
        except httpx.HTTPError:
            return 0

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.stack.token}"}, timeout=30
        )


def unique(prefix: str) -> str:
    """A short unique name (worker names, namespaces)."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# --- network namespaces --------------------------------------------------------------------------------


@dataclass
class NetNamespace:
    """A network namespace of the test's own, joined to the host by a veth pair on a private /30.

    The host side is `host_ip`, the namespace side `ns_ip`; `cut()` takes the host side down (the namespace
    loses its only link), `restore()` brings it back.
    """

    name: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str

    @property
    def network(self) -> str:
        return f"{self.host_ip.rsplit('.', 1)[0]}.{int(self.host_ip.rsplit('.', 1)[1]) - 1}/30"

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def restore(self) -> None:
        _ip("link", "set", self.host_if, "up")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        pytest.fail(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def _quiet_ip(*args: str) -> None:
    _ip(*args, check=False)


def network_namespace(stack: Stack) -> NetNamespace:
    """Create a namespace and its veth link (removed by the stack's cleanup); skip where that is refused."""
    require_tool("ip")
    probe = f"bpbp{uuid.uuid4().hex[:6]}"
    if os.geteuid() != 0 or _ip("netns", "add", probe, check=False).returncode != 0:
        missing("network namespaces need root (ip netns add was refused)")
    _ip("netns", "del", probe, check=False)
    used = _ip("-4", "addr").stdout
    for _ in range(50):
        octet = uuid.uuid4().int % 250 + 1
        if f"10.213.{octet}." not in used:
            break
    tag = uuid.uuid4().hex[:6]
    ns = NetNamespace(
        name=f"bpb-{tag}",
        host_if=f"bph{tag}",
        ns_if=f"bpn{tag}",
        host_ip=f"10.213.{octet}.1",
        ns_ip=f"10.213.{octet}.2",
    )
    _ip("netns", "add", ns.name)
    stack.cleanups.append(lambda: _quiet_ip("netns", "del", ns.name))
    _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if)
    stack.cleanups.append(lambda: _quiet_ip("link", "del", ns.host_if))
    _ip("link", "set", ns.ns_if, "netns", ns.name)
    _ip("addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if)
    _ip("link", "set", ns.host_if, "up")
    _ip("netns", "exec", ns.name, "ip", "addr", "add", f"{ns.ns_ip}/30", "dev", ns.ns_if)
    _ip("netns", "exec", ns.name, "ip", "link", "set", ns.ns_if, "up")
    _ip("netns", "exec", ns.name, "ip", "link", "set", "lo", "up")
    return ns
