"""Every service command line of docker-compose.yml, run for real on this machine (no Docker engine here).

Each command is taken from the parsed docker-compose.yml, with the environment compose would give it: the
service's `environment` with `${VAR}` interpolated from .env.example (plus an API token, which compose
requires). Only what cannot work outside the compose network is replaced:

- the database URL's host `postgres` becomes the local PostgreSQL, and its user and database a fresh test
  database of that server (it has no `bpbench` role); the broker URL's host `redis` the local Redis, on a
  database number of this module's own;
- `BPBENCH_DATA_DIR` (a path inside the image) a temp dir;
- `--host 0.0.0.0` becomes 127.0.0.1 and fixed ports free ones (so nothing listens beyond loopback);
- `bpbench` and `celery` are this environment's scripts.

Short heartbeat and reconcile intervals are set as settings (environment), never as command changes. Each
service must start, become healthy (its compose healthcheck where it has one) and exit 0 on SIGTERM.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
import yaml
from sqlalchemy.orm import sessionmaker

from harness.postgres import create_postgres_database, drop_postgres_database
from harness.processes import free_port
from services.core.config import Settings
from services.core.db import make_engine
from services.core.migrate import current_revision, head_revision, upgrade_to_head
from services.core.queue import CONTROL_QUEUE, RUN_JOB_TASK, TICK_TASK, make_celery
from services.devices.models import Worker
from services.jobs import service as jobs
from tests.support.jobs import tiny_spec, wait_for_job, wait_until
from tests.support.needs import require_module
from tests.support.servers import CI, claimed_redis_database

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
API_TOKEN = "bpb_compose-services-test-token"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
# Settings that make the loops tick fast enough for a test (environment only: command lines stay compose's).
FAST_LOOPS = {"BPBENCH_HEARTBEAT_INTERVAL_S": "1", "BPBENCH_RECONCILE_INTERVAL_S": "1"}

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


# --- compose, as the engine would read it --------------------------------------------------------------


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's variable interpolation of `value`.

    Handles `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}` and `${VAR?error}`;
    a required variable that is missing raises ValueError with its message.
    """

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3) or ""
        value = variables.get(name)
        unset_or_empty = value is None or (value == "" and operator is not None and operator.startswith(":"))
        if operator in (":-", "-") and unset_or_empty:
            return argument
        if operator in (":?", "?") and unset_or_empty:
            raise ValueError(f"required variable {name} is missing a value: {argument}")
        return value or ""

    return _VARIABLE.sub(substitute, value)


def env_file_variables(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines of an env file (comments and blank lines skipped), as compose reads `.env`."""
    variables: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            variables[key.strip()] = value.strip()
    return variables


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml, parsed (YAML anchors and `<<` merges resolved)."""
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def compose_environment(
    compose: dict[str, Any], service: str, variables: Mapping[str, str]
) -> dict[str, str]:
    """The service's `environment`, interpolated as compose does."""
    environment = compose["services"][service].get("environment", {})
    return {key: interpolate(str(value), variables) for key, value in environment.items()}


def set_option(argv: list[str], option: str, value: str) -> list[str]:
    """`argv` with `option`'s value replaced (`--opt value` or `--opt=value`), or `--opt=value` appended."""
    result = list(argv)
    for index, arg in enumerate(result):
        if arg == option and index + 1 < len(result):
            result[index + 1] = value
            return result
        if arg.startswith(f"{option}="):
            result[index] = f"{option}={value}"
            return result
    return [*result, f"{option}={value}"]


def local_program(argv: list[str]) -> list[str]:
    """The command with its program (`bpbench`, `celery`) taken from this environment."""
    script = Path(sys.executable).with_name(argv[0])
    if not script.exists():
        raise FileNotFoundError(f"{argv[0]} is not installed beside {sys.executable}")
    return [str(script), *argv[1:]]


# --- the local servers, in place of the compose network's ------------------------------------------------


@dataclass(frozen=True)
class LocalServers:
    """The database and broker the services use here, and the variables compose would read from .env."""

    database_url: str
    broker_url: str
    variables: dict[str, str]


def pointed_here(compose_url: str, local_url: str) -> str:
    """`compose_url` with its location (credentials, host, port, path) taken from `local_url`."""
    return (
        urlsplit(compose_url)
        ._replace(netloc=urlsplit(local_url).netloc, path=urlsplit(local_url).path)
        .geturl()
    )


@pytest.fixture(scope="module")
def local_servers(postgres_admin_url: str) -> Iterator[LocalServers]:
    """A fresh, migrated PostgreSQL database and a Redis database of this module's own."""
    database_url = create_postgres_database(postgres_admin_url, prefix="bpbench_compose")
    try:
        upgrade_to_head(database_url)
        with claimed_redis_database() as broker_url:
            variables = {**env_file_variables(ENV_EXAMPLE), "BPBENCH_API_TOKEN": API_TOKEN}
            yield LocalServers(database_url, broker_url, variables)
    finally:
        drop_postgres_database(postgres_admin_url, database_url)


def service_env(
    compose: dict[str, Any], service: str, servers: LocalServers, data_dir: Path, **extra: str
) -> dict[str, str]:
    """The environment compose would give `service`, pointed at the local servers."""
    env = compose_environment(compose, service, servers.variables)
    assert urlsplit(env["BPBENCH_DATABASE_URL"]).hostname == "postgres"
    assert urlsplit(env["BPBENCH_BROKER_URL"]).hostname == "redis"
    env["BPBENCH_DATABASE_URL"] = pointed_here(env["BPBENCH_DATABASE_URL"], servers.database_url)
    env["BPBENCH_BROKER_URL"] = pointed_here(env["BPBENCH_BROKER_URL"], servers.broker_url)
    env["BPBENCH_DATA_DIR"] = str(data_dir)
    base = {k: v for k, v in os.environ.items() if not k.startswith("BPBENCH_")}
    return {**base, "PYTHONUNBUFFERED": "1", **env, **extra}


@dataclass
class ServiceProcess:
    """A service's command running in a session of its own, with its output in a log file."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self, tail_chars: int = 4000) -> str:
        """The end of the service's output."""
        return self.log_path.read_text(errors="replace")[-tail_chars:] if self.log_path.exists() else ""

    def check_running(self) -> None:
        """Fail the test, with the log, if the service has exited."""
        if self.process.poll() is not None:
            pytest.fail(f"service {self.name} exited with {self.process.returncode}:\n{self.log()}")

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, as `docker compose stop` sends; its exit status. Fails if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(
                    f"service {self.name} did not stop within {timeout_s:g} s of SIGTERM:\n{self.log()}"
                )
        return int(self.process.returncode)

    def kill(self) -> None:
        """SIGKILL the whole process group (pool processes included); nothing of it may outlive the test."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


@contextlib.contextmanager
def running_service(
    name: str, argv: list[str], env: dict[str, str], workdir: Path
) -> Iterator[ServiceProcess]:
    """Start `argv` as service `name` in `workdir`; whatever happens, its process group is gone afterwards."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=workdir,  # no .env of a developer's checkout is read
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = ServiceProcess(name, argv, process, log_path)
    try:
        yield service
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_TIMEOUT_S)
        service.kill()


def http_status(url: str) -> int | None:
    """The HTTP status of GET `url`, or None when nothing answers."""
    try:
        return httpx.get(url, timeout=3).status_code
    except httpx.HTTPError:
        return None


# --- the tests -------------------------------------------------------------------------------------------


def test_interpolation_follows_compose_rules() -> None:
    variables = {"SET": "x", "EMPTY": ""}
    assert (
        interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $SET $$HOME", variables) == "x d  d x $HOME"
    )
    with pytest.raises(ValueError, match="BPBENCH_API_TOKEN is missing a value: set it"):
        interpolate("${BPBENCH_API_TOKEN:?set it}", {"BPBENCH_API_TOKEN": ""})


def test_compose_refuses_to_start_without_an_api_token(compose: dict[str, Any]) -> None:
    # .env.example leaves the token empty on purpose: `docker compose up` must stop and say what to set.
    with pytest.raises(ValueError, match="BPBENCH_API_TOKEN"):
        compose_environment(compose, "api", env_file_variables(ENV_EXAMPLE))


def test_migrate_service_brings_a_fresh_database_to_head(
    compose: dict[str, Any], local_servers: LocalServers, postgres_admin_url: str, tmp_path: Path
) -> None:
    fresh = create_postgres_database(postgres_admin_url, prefix="bpbench_compose_migrate")
    try:
        servers = LocalServers(fresh, local_servers.broker_url, local_servers.variables)
        argv = local_program(compose["services"]["migrate"]["command"])
        env = service_env(compose, "migrate", servers, tmp_path)
        assert current_revision(fresh) is None
        for run in ("first run", "second run (nothing to do)"):
            done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{run}: {done.stdout}\n{done.stderr}"
            assert f"is at revision {head_revision()} (head)" in done.stdout
        assert current_revision(fresh) == head_revision()
    finally:
        drop_postgres_database(postgres_admin_url, fresh)


def test_api_service_passes_its_healthcheck_and_stops_cleanly_on_sigterm(
    compose: dict[str, Any], local_servers: LocalServers, tmp_path: Path
) -> None:
    api = compose["services"]["api"]
    port = free_port()
    argv = set_option(set_option(local_program(api["command"]), "--host", "127.0.0.1"), "--port", str(port))
    # The compose healthcheck itself (`CMD python -c ...`), aimed at this port.
    kind, program, *args = api["healthcheck"]["test"]
    assert (kind, program) == ("CMD", "python")
    healthcheck = [sys.executable, *(arg.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for arg in args)]

    with running_service(
        "api", argv, service_env(compose, "api", local_servers, tmp_path), tmp_path
    ) as service:

        def healthy() -> bool:
            service.check_running()
            return subprocess.run(healthcheck, capture_output=True, timeout=30).returncode == 0

        wait_until(healthy, START_TIMEOUT_S, "the api service's compose healthcheck", interval_s=0.5)
        base = f"http://127.0.0.1:{port}"
        assert http_status(f"{base}/healthz") == 200
        assert http_status(f"{base}/readyz") == 200
        # BPBENCH_API_TOKEN of the compose environment is the deployment's first admin token.
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        assert httpx.get(f"{base}/api/v1/jobs", headers=headers, timeout=10).status_code == 200
        assert httpx.get(f"{base}/api/v1/jobs", timeout=10).status_code == 401

        assert service.terminate() == 0, service.log()
    assert http_status(f"{base}/healthz") is None


def test_worker_cpu_service_registers_runs_a_job_heartbeats_and_stops_cleanly(
    compose: dict[str, Any], local_servers: LocalServers, tmp_path: Path
) -> None:
    argv = local_program(compose["services"]["worker-cpu"]["command"])
    env = service_env(compose, "worker-cpu", local_servers, tmp_path, **FAST_LOOPS)
    name = f"cpu@{socket.gethostname()}"  # the command gives no --name: the worker names itself
    engine = make_engine(local_servers.database_url)
    maker = sessionmaker(bind=engine, expire_on_commit=False)
    client = make_celery(
        Settings(database_url=local_servers.database_url, broker_url=env["BPBENCH_BROKER_URL"])
    )
    try:
        with running_service("worker-cpu", argv, env, tmp_path) as service:

            def registered() -> Worker | None:
                service.check_running()
                with maker() as session:
                    row = session.get(Worker, name)
                    return row if row is not None and row.stopped_at is None else None

            first = wait_until(registered, START_TIMEOUT_S, f"worker {name} to register", interval_s=0.3)
            assert (first.device, first.queues[0], first.pid) == ("cpu", "cpu", service.process.pid)

            with maker() as session:
                job = jobs.create_job(session, tiny_spec(seed=61))
                session.commit()
            client.send_task(RUN_JOB_TASK, args=[job.id], queue=job.queue, routing_key=job.queue)
            done = wait_for_job(maker, job.id)
            assert (done.status, done.worker_name) == ("succeeded", name), done.error

            def beat_advanced() -> bool:
                with maker() as session:
                    row = session.get(Worker, name)
                    return row is not None and row.last_heartbeat >= first.last_heartbeat + timedelta(
                        seconds=1
                    )

            wait_until(beat_advanced, 15, "a heartbeat after the first one")

            assert service.terminate() == 0, service.log()
        with maker() as session:
            row = session.get(Worker, name)
            assert row is not None and row.stopped_at is not None
    finally:
        client.close()
        engine.dispose()


@pytest.mark.parametrize("service_name", ["worker-gpu-0", "worker-gpu-1"])
def test_worker_gpu_service_without_a_gpu_refuses_with_a_readable_error(
    compose: dict[str, Any], local_servers: LocalServers, tmp_path: Path, service_name: str
) -> None:
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip(
            "CuPy is installed: the GPU worker is tested by `pytest -m gpu` (tests/workers/test_gpu.py)"
        )
    command = [
        interpolate(arg, local_servers.variables) for arg in compose["services"][service_name]["command"]
    ]
    assert command[command.index("--name") + 1] == f"gpu{service_name[-1]}@bpbench"
    argv = local_program(command)
    env = service_env(compose, service_name, local_servers, tmp_path)
    done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--device gpu:0 cannot be served" in done.stderr


@pytest.mark.parametrize(
    ("service_name", "library"), [("worker-oneapi-cpu", "dpnp"), ("worker-xla-cpu", "jax")]
)
def test_worker_of_another_cpu_stack_runs_a_job_of_its_device_and_stops_cleanly(
    compose: dict[str, Any], local_servers: LocalServers, tmp_path: Path, service_name: str, library: str
) -> None:
    require_module(library, "CI installs the oneapi and xla extras")
    command = compose["services"][service_name]["command"]
    device = command[command.index("--device") + 1]
    argv = local_program(command)
    env = service_env(compose, service_name, local_servers, tmp_path, **FAST_LOOPS)
    env = {k: v for k, v in env.items() if k not in ("OCL_ICD_FILENAMES", "ONEAPI_DEVICE_SELECTOR")}
    engine = make_engine(local_servers.database_url)
    maker = sessionmaker(bind=engine, expire_on_commit=False)
    client = make_celery(
        Settings(database_url=local_servers.database_url, broker_url=env["BPBENCH_BROKER_URL"])
    )
    try:
        with running_service(service_name, argv, env, tmp_path) as service:

            def registered() -> Worker | None:
                service.check_running()
                with maker() as session:
                    return (
                        session.query(Worker)
                        .filter(Worker.pid == service.process.pid, Worker.stopped_at.is_(None))
                        .one_or_none()
                    )

            worker = wait_until(registered, START_TIMEOUT_S, f"the {device} worker", interval_s=0.3)
            # Its stack's own queue, which no NumPy worker serves.
            assert (worker.device, worker.queues[0]) == (device, device.split(":")[0])
            with maker() as session:
                job = jobs.create_job(session, tiny_spec(seed=62, device=device))
                session.commit()
            assert job.queue == device.split(":")[0]
            client.send_task(RUN_JOB_TASK, args=[job.id], queue=job.queue, routing_key=job.queue)
            done = wait_for_job(maker, job.id)
            assert (done.status, done.worker_name) == ("succeeded", worker.name), done.error
            assert service.terminate() == 0, service.log()
    finally:
        client.close()
        engine.dispose()


@pytest.mark.parametrize(
    ("service_name", "refusal"),
    [
        ("worker-rocm-0", "--device rocm:0 cannot be served (GPU 0 is rocm:0 under HIP_VISIBLE_DEVICES=0)"),
        ("worker-intel-gpu-0", "--device oneapi:level_zero:gpu:0 cannot be served"),
    ],
)
def test_worker_of_a_gpu_this_host_lacks_refuses_in_one_line(
    compose: dict[str, Any], local_servers: LocalServers, tmp_path: Path, service_name: str, refusal: str
) -> None:
    command = [
        interpolate(arg, local_servers.variables) for arg in compose["services"][service_name]["command"]
    ]
    env = service_env(compose, service_name, local_servers, tmp_path)
    done = subprocess.run(
        local_program(command), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert refusal in line


def test_reconciler_service_publishes_a_job_that_was_never_published_and_stops_cleanly(
    compose: dict[str, Any], local_servers: LocalServers, tmp_path: Path
) -> None:
    argv = local_program(compose["services"]["reconciler"]["command"])
    env = service_env(compose, "reconciler", local_servers, tmp_path, **FAST_LOOPS)
    engine = make_engine(local_servers.database_url)
    maker = sessionmaker(bind=engine, expire_on_commit=False)
    broker = redis.Redis.from_url(env["BPBENCH_BROKER_URL"])
    try:
        with maker() as session:
            # Committed but never published: the broker was down when it was submitted.
            job = jobs.create_job(session, tiny_spec(seed=62))
            session.commit()
        assert job.published_at is None

        with running_service("reconciler", argv, env, tmp_path) as service:

            def messages_of_the_job() -> int:
                # No worker runs in this test: a published message waits in the job's queue, naming the job.
                service.check_running()
                return sum(job.id.encode() in message for message in broker.lrange(job.queue, 0, -1))

            wait_until(messages_of_the_job, 30, f"the reconciler to publish job {job.id}", interval_s=0.3)
            with maker() as session:
                row = jobs.get_job(session, job.id)
                assert row is not None and row.published_at is not None
            time.sleep(2.5)  # two more passes (interval 1 s): a published job is not published again
            assert messages_of_the_job() == 1
            assert service.terminate() == 0, service.log()
        with maker() as session:
            after = jobs.get_job(session, job.id)
            assert after is not None and (after.status, after.attempts) == ("queued", 0)
            jobs.cancel_job(session, job.id)
        broker.delete(job.queue)
    finally:
        broker.close()
        engine.dispose()


def test_redis_service_command_keeps_its_queue_and_passes_its_healthcheck(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    redis_service = compose["services"]["redis"]
    if shutil.which(redis_service["command"][0]) is None or shutil.which("redis-cli") is None:
        message = "redis-server and redis-cli are needed to run the redis service's command"
        if CI:
            pytest.fail(f"{message} (CI=true)")
        pytest.skip(message)
    port = free_port()
    # The image's working directory is its data volume; here a temp dir, on loopback and a free port.
    argv = [*redis_service["command"], "--bind", "127.0.0.1", "--port", str(port), "--dir", str(tmp_path)]
    kind, *healthcheck = redis_service["healthcheck"]["test"]
    assert kind == "CMD"
    with running_service("redis", argv, dict(os.environ), tmp_path) as service:

        def healthy() -> bool:
            service.check_running()
            # redis-cli takes its options before the command: `redis-cli -p PORT ping`.
            argv = [healthcheck[0], "-p", str(port), *healthcheck[1:]]
            check = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return check.returncode == 0 and check.stdout.strip() == "PONG"

        wait_until(healthy, 20, "the redis service's compose healthcheck", interval_s=0.2)
        client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        try:
            config = client.config_get("appendonly") | client.config_get("maxmemory-policy")
        finally:
            client.close()
        assert config == {"appendonly": "yes", "maxmemory-policy": "noeviction"}
        assert service.terminate() == 0, service.log()


FLOWER_CREDENTIALS = ("operator", "flower-test-password")


def flower_argv(compose: dict[str, Any], port: int) -> list[str]:
    """Flower's compose command on `port`, listening on loopback only."""
    flower = compose["services"]["flower"]
    assert flower["profiles"] == ["monitoring"]
    argv = set_option(local_program(flower["command"]), "--port", str(port))
    return set_option(argv, "--address", "127.0.0.1")


def test_flower_service_asks_for_credentials_serves_its_api_with_them_and_stops_cleanly(
    compose: dict[str, Any], local_servers: LocalServers, tmp_path: Path
) -> None:
    port = free_port()
    servers = LocalServers(
        local_servers.database_url,
        local_servers.broker_url,
        {**local_servers.variables, "FLOWER_BASIC_AUTH": ":".join(FLOWER_CREDENTIALS)},
    )
    env = service_env(compose, "flower", servers, tmp_path)
    assert env["FLOWER_BASIC_AUTH"] == "operator:flower-test-password"
    base = f"http://127.0.0.1:{port}"
    with running_service("flower", flower_argv(compose, port), env, tmp_path) as service:

        def answers() -> bool:
            service.check_running()
            return http_status(f"{base}/healthcheck") is not None

        wait_until(answers, START_TIMEOUT_S, "flower to answer on its port", interval_s=0.3)
        assert httpx.get(f"{base}/", timeout=10).status_code == 401
        assert httpx.get(f"{base}/api/workers", timeout=10).status_code == 401
        wrong = httpx.get(f"{base}/api/workers", auth=("operator", "wrong"), timeout=10)
        assert wrong.status_code == 401
        page = httpx.get(f"{base}/", auth=FLOWER_CREDENTIALS, timeout=10)
        assert page.status_code == 200 and "Flower" in page.text
        workers = httpx.get(f"{base}/api/workers", auth=FLOWER_CREDENTIALS, timeout=10)
        assert workers.status_code == 200
        assert isinstance(workers.json(), dict)
        assert service.terminate() == 0, service.log()
    assert http_status(f"{base}/healthcheck") is None


def test_flower_service_without_credentials_in_env_refuses_every_request(
    compose: dict[str, Any], local_servers: LocalServers, tmp_path: Path
) -> None:
    # .env.example leaves FLOWER_BASIC_AUTH empty: Flower must not run open.
    assert local_servers.variables["FLOWER_BASIC_AUTH"] == ""
    port = free_port()
    env = service_env(compose, "flower", local_servers, tmp_path)
    base = f"http://127.0.0.1:{port}"
    with running_service("flower", flower_argv(compose, port), env, tmp_path) as service:

        def answers() -> bool:
            service.check_running()
            return http_status(f"{base}/healthcheck") is not None

        wait_until(answers, START_TIMEOUT_S, "flower to answer on its port", interval_s=0.3)
        for auth in (None, FLOWER_CREDENTIALS, ("", "")):
            assert httpx.get(f"{base}/", auth=auth, timeout=10).status_code == 401, auth
            assert httpx.get(f"{base}/api/workers", auth=auth, timeout=10).status_code == 401, auth
        assert service.terminate() == 0, service.log()


def test_beat_service_sends_the_tick_to_the_control_queue_and_stops_cleanly(
    compose: dict[str, Any], local_servers: LocalServers, tmp_path: Path
) -> None:
    argv = local_program(compose["services"]["beat"]["command"])
    env = service_env(compose, "beat", local_servers, tmp_path, BPBENCH_TICK_INTERVAL_S="1")
    broker = redis.Redis.from_url(env["BPBENCH_BROKER_URL"])
    broker.delete(CONTROL_QUEUE)
    try:
        with running_service("beat", argv, env, tmp_path) as service:

            def ticks() -> int | None:
                # No worker runs here: the ticks wait in the control queue, each naming the tick task.
                service.check_running()
                waiting = broker.lrange(CONTROL_QUEUE, 0, -1)
                return len(waiting) if len(waiting) >= 2 else None

            wait_until(ticks, 30, "beat to send two ticks", interval_s=0.3)
            assert all(TICK_TASK.encode() in message for message in broker.lrange(CONTROL_QUEUE, 0, -1))
            assert service.terminate() == 0, service.log()
    finally:
        broker.delete(CONTROL_QUEUE)
        broker.close()


def test_every_bpbench_service_of_compose_is_run_here(compose: dict[str, Any]) -> None:
    # A service added to docker-compose.yml must get a test above that runs its command.
    run_here = {
        "migrate",
        "api",
        "worker-cpu",
        "worker-gpu-0",
        "worker-gpu-1",
        "worker-rocm-0",
        "worker-intel-gpu-0",
        "worker-oneapi-cpu",
        "worker-xla-cpu",
        "reconciler",
        "beat",
        "redis",
        "flower",
    }
    image_only = {"postgres"}  # the official image's entrypoint, nothing of ours
    assert set(compose["services"]) == run_here | image_only
    assert {name for name, service in compose["services"].items() if "command" in service} == run_here
