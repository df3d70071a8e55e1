"""docker-compose.worker.yml, the worker host's stack: checked statically (the Compose Specification's schema,
its variables against Settings, one reserved GPU per GPU worker, nothing it waits on that it lacks) and its
commands run for real against the local PostgreSQL and Redis, with the environment its `.env` would give."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.orm import sessionmaker

from services.core.config import Settings
from services.core.db import make_engine
from services.core.queue import RUN_JOB_TASK, make_celery
from services.devices.models import Worker
from services.jobs import service as jobs
from tests.deploy.test_compose_services import (
    START_TIMEOUT_S,
    LocalServers,
    interpolate,
    local_program,
    local_servers,
    running_service,
)
from tests.support.jobs import tiny_spec, wait_for_job, wait_until

__all__ = ["local_servers"]  # the fixture, shared with the main stack's service tests

ROOT = Path(__file__).resolve().parents[2]
WORKER_FILE = ROOT / "docker-compose.worker.yml"
MAIN_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "data" / "compose-spec.json"
DEPLOY_GUIDE = ROOT / "docs" / "deploy.md"
GPU_WORKERS = ("worker-gpu-0", "worker-gpu-1")
VENDOR_WORKERS = (
    "worker-rocm-0",
    "worker-rocm-1",
    "worker-intel-gpu-0",
    "worker-tpu-0",
    "worker-tpu-1",
    "worker-oneapi-cpu",
    "worker-xla-cpu",
)


@pytest.fixture(scope="module")
def worker_compose() -> dict[str, Any]:
    return dict(yaml.safe_load(WORKER_FILE.read_text()))


def dot_env(servers: LocalServers) -> dict[str, str]:
    """The worker host's .env, naming the local servers as the central host."""
    return {"BPBENCH_DATABASE_URL": servers.database_url, "BPBENCH_BROKER_URL": servers.broker_url}


def environment(compose: dict[str, Any], service: str, variables: dict[str, str]) -> dict[str, str]:
    env = compose["services"][service]["environment"]
    return {key: interpolate(str(value), variables) for key, value in env.items()}


def test_worker_file_is_valid_against_the_compose_specification(worker_compose: dict[str, Any]) -> None:
    # A dev dependency, imported here: an accelerator host lacks it and still collects this module.
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(worker_compose), key=lambda e: e.path)
    assert [e.message for e in errors] == []


def test_worker_file_runs_workers_only_and_waits_on_nothing(worker_compose: dict[str, Any]) -> None:
    services = worker_compose["services"]
    assert set(services) == {"worker-cpu", *GPU_WORKERS, *VENDOR_WORKERS}
    assert [name for name, service in services.items() if "depends_on" in service] == []
    assert [name for name, service in services.items() if "ports" in service] == []


def test_worker_file_variables_are_settings_and_the_urls_are_required(worker_compose: dict[str, Any]) -> None:
    known = {f"BPBENCH_{name.upper()}" for name in Settings.model_fields}
    for name, service in worker_compose["services"].items():
        assert {key for key in service["environment"] if key.startswith("BPBENCH_")} <= known, name
        with pytest.raises(ValueError, match="required variable BPBENCH_DATABASE_URL"):
            environment(worker_compose, name, {"BPBENCH_BROKER_URL": "redis://central:6379/0"})
        with pytest.raises(ValueError, match="required variable BPBENCH_BROKER_URL"):
            environment(worker_compose, name, {"BPBENCH_DATABASE_URL": "postgresql://central/bpbench"})


def test_worker_file_takes_a_password_and_tls_redis_url(worker_compose: dict[str, Any]) -> None:
    variables = {
        "BPBENCH_DATABASE_URL": "postgresql://bpbench:pw@central.example:5432/bpbench?sslmode=verify-full",
        "BPBENCH_BROKER_URL": "rediss://:secret@central.example:6380/0?ssl_cert_reqs=required",
    }
    env = environment(worker_compose, "worker-cpu", variables)
    settings = Settings(database_url=env["BPBENCH_DATABASE_URL"], broker_url=env["BPBENCH_BROKER_URL"])
    assert settings.broker_url == "rediss://:secret@central.example:6380/0?ssl_cert_reqs=required"
    assert settings.database_url == (
        "postgresql+psycopg://bpbench:pw@central.example:5432/bpbench?sslmode=verify-full"
    )


def test_each_gpu_worker_reserves_its_own_gpu(worker_compose: dict[str, Any]) -> None:
    reserved = []
    for index, name in enumerate(GPU_WORKERS):
        service = worker_compose["services"][name]
        (reservation,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert (reservation["driver"], reservation["capabilities"]) == ("nvidia", ["gpu"])
        assert "count" not in reservation
        reserved.append(reservation["device_ids"])
        # Inside its container the one reserved GPU is device 0; the name says which GPU of the host it is.
        command = service["command"]
        assert command[:4] == ["bpbench", "worker", "--device", "gpu:0"]
        assert command[command.index("--name") + 1].startswith(f"gpu{index}@")
        assert (service["profiles"], service["build"]["target"]) == (["gpu", "nvidia"], "gpu")
    assert reserved == [["0"], ["1"]]


def test_each_amd_worker_sees_one_gpu_of_its_own_as_rocm_0(worker_compose: dict[str, Any]) -> None:
    visible = []
    for index, name in enumerate(("worker-rocm-0", "worker-rocm-1")):
        service = worker_compose["services"][name]
        assert (service["profiles"], service["build"]["target"]) == (["amd"], "rocm")
        assert service["devices"] == ["/dev/kfd", "/dev/dri"]
        assert set(service["group_add"]) == {"video", "render"}
        visible.append(service["environment"]["HIP_VISIBLE_DEVICES"])
        command = service["command"]
        assert command[:4] == ["bpbench", "worker", "--device", "rocm:0"]
        assert command[command.index("--name") + 1].startswith(f"rocm{index}@")
    assert visible == ["0", "1"]


def test_each_tpu_worker_is_bounded_to_one_chip_with_its_own_port(worker_compose: dict[str, Any]) -> None:
    chips, ports = [], []
    for name in ("worker-tpu-0", "worker-tpu-1"):
        service = worker_compose["services"][name]
        env = service["environment"]
        assert (service["profiles"], service["build"]["target"]) == (["tpu"], "xla")
        assert service["build"]["args"]["BPBENCH_EXTRAS"].split(",")[0] == "xla-tpu"
        assert (env["TPU_CHIPS_PER_PROCESS_BOUNDS"], env["TPU_PROCESS_BOUNDS"]) == ("1,1,1", "1,1,1")
        assert env["TPU_MESH_CONTROLLER_ADDRESS"] == f"localhost:{env['TPU_MESH_CONTROLLER_PORT']}"
        chips.append(env["TPU_VISIBLE_CHIPS"])
        ports.append(env["TPU_MESH_CONTROLLER_PORT"])
        assert service["command"][:4] == ["bpbench", "worker", "--device", "xla:tpu:0"]
    assert chips == ["0", "1"] and len(set(ports)) == 2


def test_every_worker_device_is_a_device_of_the_engine_grammar(worker_compose: dict[str, Any]) -> None:
    from engine.spec import parse_device

    for name, service in worker_compose["services"].items():
        command = service["command"]
        device = command[command.index("--device") + 1]
        assert parse_device(device).name == device, name


def test_main_stack_publishes_the_ports_the_deploy_guide_opens() -> None:
    services = yaml.safe_load(MAIN_FILE.read_text())["services"]
    guide = DEPLOY_GUIDE.read_text()
    published = {
        name: [interpolate(port, {}).rsplit(":", 1)[-1] for port in services[name]["ports"]]
        for name in ("postgres", "redis", "api")
    }
    assert published == {"postgres": ["5432"], "redis": ["6379"], "api": ["8000"]}
    for port in ("5432", "6379", "8000"):
        assert re.search(rf"\({port}\b", guide), f"docs/deploy.md does not name port {port}"
    # Loopback unless the operator names the worker network's address.
    assert interpolate(services["postgres"]["ports"][0], {}).startswith("127.0.0.1:")
    assert interpolate(services["redis"]["ports"][0], {}).startswith("127.0.0.1:")


def test_worker_cpu_of_the_worker_file_registers_runs_a_job_and_stops_cleanly(
    worker_compose: dict[str, Any], local_servers: LocalServers, tmp_path: Path
) -> None:
    argv = local_program(worker_compose["services"]["worker-cpu"]["command"])
    env = environment(worker_compose, "worker-cpu", dot_env(local_servers))
    env["BPBENCH_DATA_DIR"] = str(tmp_path)  # a path inside the image
    base = {k: v for k, v in os.environ.items() if not k.startswith("BPBENCH_")}
    env = {**base, "PYTHONUNBUFFERED": "1", **env}
    name = f"cpu@{socket.gethostname()}"
    engine = make_engine(local_servers.database_url)
    maker = sessionmaker(bind=engine, expire_on_commit=False)
    client = make_celery(
        Settings(database_url=local_servers.database_url, broker_url=local_servers.broker_url)
    )
    try:
        with running_service("worker-host-cpu", argv, env, tmp_path) as service:

            def registered() -> Worker | None:
                service.check_running()
                with maker() as session:
                    row = session.get(Worker, name)
                    return row if row is not None and row.stopped_at is None else None

            wait_until(registered, START_TIMEOUT_S, f"worker {name} to register", interval_s=0.3)
            with maker() as session:
                job = jobs.create_job(session, tiny_spec(seed=73))
                session.commit()
            client.send_task(RUN_JOB_TASK, args=[job.id], queue=job.queue, routing_key=job.queue)
            done = wait_for_job(maker, job.id)
            assert (done.status, done.worker_name) == ("succeeded", name), done.error
            assert service.terminate() == 0, service.log()
    finally:
        client.close()
        engine.dispose()


@pytest.mark.parametrize("service_name", GPU_WORKERS)
def test_gpu_worker_of_the_worker_file_without_a_gpu_refuses_readably(
    worker_compose: dict[str, Any], local_servers: LocalServers, tmp_path: Path, service_name: str
) -> None:
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip(
            "CuPy is installed: the GPU worker is tested by `pytest -m gpu` (tests/workers/test_gpu.py)"
        )
    argv = local_program(worker_compose["services"][service_name]["command"])
    env = environment(worker_compose, service_name, dot_env(local_servers))
    env["BPBENCH_DATA_DIR"] = str(tmp_path)
    base = {k: v for k, v in os.environ.items() if not k.startswith("BPBENCH_")}
    done = subprocess.run(
        argv, env={**base, **env}, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--device gpu:0 cannot be served" in done.stderr
