"""docker-compose.yml, checked without a Docker engine: against the Compose Specification's schema,
against the settings class, and for the shape the deployment needs (health checks, migration order,
GPU reservation)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.app import app
from services.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "data" / "compose-spec.json"
ENV_EXAMPLE = ROOT / ".env.example"
GPU_WORKERS = ("worker-gpu-0", "worker-gpu-1")
VENDOR_WORKERS = ("worker-rocm-0", "worker-intel-gpu-0", "worker-oneapi-cpu", "worker-xla-cpu")
BPBENCH_SERVICES = ("migrate", "api", "worker-cpu", *GPU_WORKERS, *VENDOR_WORKERS, "reconciler", "beat")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def setting_variables() -> set[str]:
    return {f"BPBENCH_{name.upper()}" for name in Settings.model_fields}


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    # A dev dependency, imported here: an accelerator host lacks it and still collects this module.
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: e.path)
    assert [e.message for e in errors] == []


def test_schema_check_catches_a_broken_service() -> None:
    # The validation above must be able to fail: a service with a misspelt key is refused.
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    broken = {"services": {"api": {"image": "bpbench:cpu", "comand": ["bpbench", "api"]}}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_stack_has_every_service_of_the_deployment(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "postgres",
        "redis",
        "migrate",
        "api",
        "worker-cpu",
        "worker-gpu-0",
        "worker-gpu-1",
        *VENDOR_WORKERS,
        "reconciler",
        "beat",
        "flower",
    }
    assert all(compose["services"][name]["profiles"] == ["gpu", "nvidia"] for name in GPU_WORKERS)
    profiles = {name: compose["services"][name]["profiles"] for name in VENDOR_WORKERS}
    assert profiles == {
        "worker-rocm-0": ["amd"],
        "worker-intel-gpu-0": ["intel"],
        "worker-oneapi-cpu": ["stacks"],
        "worker-xla-cpu": ["stacks"],
    }
    assert compose["services"]["flower"]["profiles"] == ["monitoring"]


def test_every_bpbench_variable_in_compose_is_a_setting(compose: dict[str, Any]) -> None:
    known = setting_variables()
    for name in BPBENCH_SERVICES:
        env = compose["services"][name]["environment"]
        unknown = {key for key in env if key.startswith("BPBENCH_")} - known
        assert unknown == set(), f"service {name} sets variables Settings does not read: {unknown}"
        assert "BPBENCH_DATABASE_URL" in env and "BPBENCH_BROKER_URL" in env


def test_compose_urls_are_accepted_by_the_settings(compose: dict[str, Any]) -> None:
    env = compose["services"]["api"]["environment"]
    # Substitute compose's ${VAR:-default} with the default, as compose would with an empty .env.
    resolved = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}
    settings = Settings(
        database_url=resolved["BPBENCH_DATABASE_URL"], broker_url=resolved["BPBENCH_BROKER_URL"]
    )
    assert settings.database_url == "postgresql+psycopg://bpbench:bpbench@postgres:5432/bpbench"
    assert settings.broker_url == "redis://redis:6379/0"


def test_env_example_documents_every_setting() -> None:
    documented = set(re.findall(r"^(BPBENCH_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.M))
    assert documented == setting_variables()


def test_databases_have_health_checks_and_redis_keeps_its_queue(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["postgres"]["volumes"] == ["pgdata:/var/lib/postgresql/data"]
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert redis_command[redis_command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]


def test_api_waits_for_healthy_databases_and_a_completed_migration(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert api["ports"] == ["${BPBENCH_API_PORT:-8000}:8000"]
    assert compose["services"]["migrate"]["restart"] == "no"


def test_each_gpu_worker_reserves_its_own_nvidia_gpu(compose: dict[str, Any]) -> None:
    reserved = []
    for index, name in enumerate(GPU_WORKERS):
        worker = compose["services"][name]
        (reservation,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert (reservation["driver"], reservation["capabilities"]) == ("nvidia", ["gpu"])
        assert "count" not in reservation, f"{name} must reserve one GPU, not `count: all`"
        reserved.append(reservation["device_ids"])
        assert worker["build"]["target"] == "gpu"
        # The one reserved GPU is device 0 inside the container; the name says which GPU of the host it is.
        command = worker["command"]
        assert command[:4] == ["bpbench", "worker", "--device", "gpu:0"]
        assert command[command.index("--name") + 1].startswith(f"gpu{index}@")
    assert reserved == [["0"], ["1"]]


def test_every_service_command_is_a_bpbench_command(compose: dict[str, Any]) -> None:
    commands = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    for name in BPBENCH_SERVICES:
        command = compose["services"][name]["command"]
        assert command[0] == "bpbench"
        assert command[1] in commands, f"service {name} runs `bpbench {command[1]}`, which does not exist"


def test_dockerfile_has_a_target_per_stack() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\w+)", dockerfile, flags=re.M)
    assert [stage for _, stage in stages] == ["build", "cpu", "cuda", "gpu", "rocm", "oneapi", "xla"]
    base = {stage: image for image, stage in stages}
    # The NVIDIA base is CUDA 12: CuPy for CUDA 12 (the `gpu` extra is CuPy for CUDA 13; one CuPy per
    # environment).
    assert base["cuda"].startswith("nvidia/cuda:12.") and "runtime" in base["cuda"]
    assert base["gpu"] == "cuda"  # the older target name, kept for existing compose files
    assert '"bpbench[gpu-cuda12,digits]"' in dockerfile
    assert base["rocm"].startswith("rocm/") and '"bpbench[rocm,digits]"' in dockerfile
    assert '"bpbench[oneapi,digits]"' in dockerfile
    assert "ARG BPBENCH_EXTRAS=xla,digits" in dockerfile


def test_every_extra_a_stage_installs_is_an_extra_of_the_project() -> None:
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    dockerfile = (ROOT / "Dockerfile").read_text()
    named = set(re.findall(r"bpbench\[([a-z0-9,-]+)\]", dockerfile)) | set(
        re.findall(r"BPBENCH_EXTRAS=([a-z0-9,-]+)", dockerfile)
    )
    named |= {"xla-tpu,digits"}  # the TPU workers' build argument (docker-compose.worker.yml)
    used = {extra for group in named for extra in group.split(",")}
    assert used - extras == set()


def test_every_worker_device_is_a_device_of_the_engine_grammar(compose: dict[str, Any]) -> None:
    from engine.spec import parse_device

    for name, service in compose["services"].items():
        command = service.get("command", [])
        if "--device" in command:
            device = command[command.index("--device") + 1]
            assert parse_device(device).name == device, name
