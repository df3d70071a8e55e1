"""The shared server helpers (`harness/`): what tests and benchmarks rely on when they start processes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from harness.processes import PROJECT_ROOT, free_port, service_env, wait_until


def test_a_service_environment_keeps_no_other_bpbench_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPBENCH_PUBLIC_READ", "true")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    broker = "redis://127.0.0.1:6379/3"
    env = service_env("sqlite:///x.db", broker, Path("/data"), "bpb_t", BPBENCH_API_URL="u")
    assert {k: v for k, v in env.items() if k.startswith("BPBENCH_")} == {
        "BPBENCH_DATABASE_URL": "sqlite:///x.db",
        "BPBENCH_BROKER_URL": broker,
        "BPBENCH_DATA_DIR": "/data",
        "BPBENCH_API_TOKEN": "bpb_t",
        "BPBENCH_API_URL": "u",
    }
    assert env["PYTHONPATH"] == os.pathsep.join([str(PROJECT_ROOT), "/elsewhere"])
    assert env["PYTHONUNBUFFERED"] == "1"


def test_a_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        assert sock.getsockname()[1] == port


def test_waiting_returns_the_first_truthy_value_or_names_what_it_waited_for() -> None:
    answers = iter([None, 0, "ready"])
    assert wait_until(lambda: next(answers), 5, "the answer", 0.001) == "ready"
    with pytest.raises(TimeoutError, match=r"^timed out after 0.05 s waiting for nothing$"):
        wait_until(lambda: None, 0.05, "nothing", 0.01)
