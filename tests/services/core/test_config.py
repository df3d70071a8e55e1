"""Settings: the BPBENCH_ environment prefix, defaults in the data directory, URLs as people write them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.core.config import Settings, normalize_broker_url, normalize_database_url, redact_url
from services.core.db import make_engine
from services.core.queue import celery_config, queue_for
from tests.support.jobs import tiny_spec


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No BPBENCH_ variable of the caller's shell, and no .env file, may leak into these tests.
    import os

    for name in list(os.environ):
        if name.startswith("BPBENCH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("written", "used"),
    [
        ("postgresql://bench@db.example/bpbench", "postgresql+psycopg://bench@db.example/bpbench"),
        ("postgres://bench:pw@db:5433/x", "postgresql+psycopg://bench:pw@db:5433/x"),
        ("postgresql+psycopg2://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
        ("sqlite:////var/lib/bpbench/bpbench.db", "sqlite:////var/lib/bpbench/bpbench.db"),
        ("sqlite:///relative/bpbench.db", "sqlite:///relative/bpbench.db"),
        ("  sqlite:///:memory:  ", "sqlite:///:memory:"),
    ],
)
def test_database_urls_are_used_as_written_with_the_projects_driver(written: str, used: str) -> None:
    assert normalize_database_url(written) == used


def test_an_unknown_database_url_is_refused_without_showing_its_password() -> None:
    with pytest.raises(ValueError, match=r"postgresql:// or sqlite:///") as error:
        normalize_database_url("mysql://admin:hunter2@db/x")
    assert "hunter2" not in str(error.value)
    assert "mysql://admin:***@db/x" in str(error.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://:secret@broker.example:6380/0?ssl_cert_reqs=required",
        "redis+socket:///tmp/bpbench/broker.sock",
        "amqp://guest:guest@127.0.0.1:5672//",
    ],
)
def test_redis_socket_and_amqp_broker_urls_are_accepted(url: str) -> None:
    assert normalize_broker_url(url) == url
    assert Settings(broker_url=url).broker_url == url


def test_an_unknown_broker_scheme_is_refused_with_the_accepted_ones() -> None:
    with pytest.raises(
        ValidationError, match=r"BPBENCH_BROKER_URL must start with one of redis://, "
    ) as error:
        Settings(broker_url="kafka://admin:hunter2@broker:9092")
    assert "amqp://" in str(error.value) and "kafka://admin:***@broker:9092" in str(error.value)
    assert "hunter2" not in str(error.value)


def test_defaults_live_in_the_data_directory(tmp_path: Path) -> None:
    settings = Settings()

    assert settings.data_dir == tmp_path / "bpbench-data"
    assert settings.database_url == f"sqlite:///{tmp_path}/bpbench-data/bpbench.db"
    assert settings.broker_url == f"redis+socket://{tmp_path}/bpbench-data/broker.sock"
    assert settings.broker_socket_path == tmp_path / "bpbench-data" / "broker.sock"
    assert settings.uses_embedded_broker
    assert settings.api_url == "http://127.0.0.1:8000"
    assert (settings.api_token, settings.public_read) == (None, False)


def test_every_setting_is_read_from_the_bpbench_prefixed_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BPBENCH_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("BPBENCH_DATABASE_URL", "postgresql://bench@db/bpbench")
    monkeypatch.setenv("BPBENCH_BROKER_URL", "amqp://guest:guest@rabbit:5672//")
    monkeypatch.setenv("BPBENCH_API_URL", "http://bench.example:9000")
    monkeypatch.setenv("BPBENCH_API_TOKEN", "bpb_secret")
    monkeypatch.setenv("BPBENCH_PUBLIC_READ", "true")
    monkeypatch.setenv("BPBENCH_HEARTBEAT_INTERVAL_S", "2.5")
    monkeypatch.setenv("BPBENCH_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///not-ours.db")  # no prefix: not ours

    settings = Settings()

    assert settings.data_dir == tmp_path / "elsewhere"
    assert settings.database_url == "postgresql+psycopg://bench@db/bpbench"
    assert settings.broker_url == "amqp://guest:guest@rabbit:5672//"
    assert not settings.uses_embedded_broker and settings.broker_socket_path is None
    assert (settings.api_url, settings.api_token, settings.public_read) == (
        "http://bench.example:9000",
        "bpb_secret",
        True,
    )
    assert (settings.heartbeat_interval_s, settings.max_attempts) == (2.5, 5)


def test_the_token_and_passwords_never_appear_in_the_printed_settings() -> None:
    settings = Settings(
        api_token="bpb_secret",
        database_url="postgresql://u:dbpass@h/d",
        broker_url="redis://:brokerpass@h:6379/0",
    )

    shown = f"{settings!r} {settings.safe_dict()}"

    assert "bpb_secret" not in shown and "dbpass" not in str(settings.safe_dict())
    assert "brokerpass" not in str(settings.safe_dict())
    assert settings.safe_dict()["database_url"] == "postgresql+psycopg://u:***@h/d"
    assert redact_url("redis://:brokerpass@h:6379/0") == "redis://:***@h:6379/0"


def test_a_jobs_time_limit_is_capped_by_the_server_and_the_visibility_timeout_is_above_it() -> None:
    settings = Settings(max_job_time_s=600)

    assert settings.job_time_limit_s(None) == 600
    assert settings.job_time_limit_s(30) == 30
    assert settings.job_time_limit_s(10_000) == 600
    config = celery_config(settings)
    assert config["broker_transport_options"]["visibility_timeout"] > 600 + 60


def test_the_celery_configuration_delivers_at_least_once_one_message_at_a_time() -> None:
    config = celery_config(Settings(broker_url="redis://127.0.0.1:6379/0"))

    assert (config["task_acks_late"], config["task_reject_on_worker_lost"]) == (True, True)
    assert config["worker_prefetch_multiplier"] == 1
    assert (config["task_serializer"], config["accept_content"]) == ("json", ["json"])
    # The class queues, then one per backend word of the registry (a job spelled xla:cpu:0 waits on `xla`).
    queues = [queue.name for queue in config["task_queues"]]
    assert queues == ["cpu", "gpu", "cuda", "rocm", "oneapi", "xla", "opencl"]


def test_a_job_goes_to_its_class_queue_or_to_the_one_device_it_names() -> None:
    assert queue_for(tiny_spec(device="cpu")) == "cpu"
    assert queue_for(tiny_spec(device="gpu:1")) == "gpu"
    assert queue_for(tiny_spec(device="gpu"), target_device_id="a1b2c3d4e5f6") == "device.a1b2c3d4e5f6"


def test_a_sqlite_database_is_opened_with_wal_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/new/dir/bpbench.db", busy_timeout_ms=1234)
    try:
        with engine.connect() as connection:
            pragma = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "foreign_keys", "busy_timeout")
            }
    finally:
        engine.dispose()

    assert pragma == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 1234}
    assert (tmp_path / "new" / "dir" / "bpbench.db").exists()
