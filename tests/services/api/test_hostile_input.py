"""Hostile request bodies: each is refused with a 422 (or 415) naming what was wrong, never a 500.

JSON as Python reads it takes more than JSON: lone UTF-16 surrogates, NaN and Infinity, numbers beyond the
float range, repeated keys. Each is refused on every body route with a 422 whose body is itself valid JSON;
a store that already holds a row with a lone surrogate (written before these checks) still lists. Types
are strict (`"10"` is not an integer), the device grammar is exact, and a `dataset_path` is only accepted
inside the server's `BPBENCH_DATASET_DIRS`. Real API server, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from harness.processes import bpbench_command
from services.auth.service import create_token
from services.core.config import Settings
from services.jobs import service as jobs
from services.jobs.models import Job
from tests.support import apiserver
from tests.support.apiserver import ADMIN_TOKEN, ApiServer, running_api
from tests.support.jobs import tiny_spec

api = apiserver.api  # the shared API server fixture

SURROGATE = "\\ud800"  # as it is written in the body: a JSON escape of a lone high surrogate
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400"]


def _strict_json(text: str) -> Any:
    """`text` parsed as RFC 8259 JSON: NaN, Infinity and lone surrogates refused."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    document = json.loads(text, parse_constant=refuse)
    text.encode("utf-8")  # a lone surrogate written raw would fail here
    return document


def _body(**fields: str) -> bytes:
    """A valid tiny job as JSON text, with some fields replaced by raw JSON text (`steps="NaN"`)."""
    doc = tiny_spec().model_dump(mode="json", exclude_defaults=True)
    raw = {key: json.dumps(value) for key, value in doc.items()}
    raw.update(fields)
    return ("{" + ",".join(f"{json.dumps(key)}:{value}" for key, value in raw.items()) + "}").encode()


def _post(client: httpx.Client, path: str, body: bytes) -> httpx.Response:
    return client.post(path, content=body, headers={"Content-Type": "application/json"})


def _job_count(session_maker: sessionmaker[Session]) -> int:
    with session_maker() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


@pytest.fixture
def submitter(api: ApiServer, session_maker: sessionmaker[Session]) -> str:
    """A submit token of this test's own (its own rate-limit bucket)."""
    with session_maker() as session:
        token, _ = create_token(session, name=f"hostile-{time.monotonic_ns()}", scopes=["submit"])
        session.commit()
    return token


# --- lone surrogates --------------------------------------------------------------------------------------

SURROGATE_FIELDS = {
    "dataset_path": _body(dataset_path=f'"/data/{SURROGATE}"'),
    "target": _body(target=f'"{SURROGATE}"'),
    "device": _body(device=f'"cpu{SURROGATE}"'),
    "kind": _body(kind=f'"{SURROGATE}"'),
    "model.name": _body(model=f'{{"name": "{SURROGATE}"}}'),
    "optimizer.name": _body(optimizer=f'{{"name": "x{SURROGATE}"}}'),
    "timing.window": _body(timing=f'{{"window": "{SURROGATE}"}}'),
    "gemm_sizes.0": _body(gemm_sizes=f'["{SURROGATE}"]'),
}


@pytest.mark.parametrize("field", SURROGATE_FIELDS)
def test_a_lone_surrogate_in_any_string_of_a_job_is_a_422_naming_the_field_and_stores_nothing(
    api: ApiServer, submitter: str, session_maker: sessionmaker[Session], field: str
) -> None:
    before = _job_count(session_maker)
    with api.client(token=submitter) as client:
        response = _post(client, "/api/v1/jobs", SURROGATE_FIELDS[field])
    assert response.status_code == 422, response.text
    (item,) = _strict_json(response.text)["detail"]
    assert (item["field"], item["error"]) == (field, "contains a lone UTF-16 surrogate")
    assert "\\ud800" in item["value"]
    assert _job_count(session_maker) == before


def test_a_lone_surrogate_in_a_key_or_a_suite_device_is_a_422(api: ApiServer, submitter: str) -> None:
    with api.client(token=submitter) as client:
        key = _post(client, "/api/v1/jobs", _body(**{"x\udc00": "1"}))
        suite = _post(client, "/api/v1/suites", f'{{"name": "smoke", "devices": ["{SURROGATE}"]}}'.encode())
    assert (key.status_code, suite.status_code) == (422, 422), (key.text, suite.text)
    assert _strict_json(key.text)["detail"][0]["field"] == "x\\udc00"
    assert _strict_json(key.text)["detail"][0]["error"] == "key contains a lone UTF-16 surrogate"
    assert _strict_json(suite.text)["detail"][0]["field"] == "devices.0"


@pytest.fixture
def poisoned_job(session_maker: sessionmaker[Session]) -> Iterator[str]:
    """A job row whose spec holds a lone surrogate, written directly (as the API once stored it)."""
    with session_maker() as session:
        job = jobs.create_job(session, tiny_spec())
        session.commit()
        job_id = job.id
        spec = {**job.spec, "dataset_path": "\ud800"}
        # Cancelled, so that no worker of another test picks it up.
        cancelled = {"spec": spec, "status": "cancelled", "finished_at": job.created_at}
        session.execute(update(Job).where(Job.id == job_id).values(**cancelled))
        session.commit()
    yield job_id
    with session_maker() as session:
        session.execute(delete(Job).where(Job.id == job_id))
        session.commit()


def test_a_stored_row_with_a_lone_surrogate_still_lists_shows_and_reports(
    api: ApiServer, poisoned_job: str, tmp_path: Path
) -> None:
    with api.client() as client:
        listed = client.get("/api/v1/jobs", params={"limit": 1000})
        by_kind = client.get("/api/v1/jobs", params={"kind": "train", "status": "cancelled", "limit": 1000})
        shown = client.get(f"/api/v1/jobs/{poisoned_job}")
        report = client.get(f"/api/v1/jobs/{poisoned_job}/report")
    for response in (listed, by_kind, shown, report):
        assert response.status_code == 200, response.text
        _strict_json(response.text)
    assert poisoned_job in [job["id"] for job in listed.json()["items"]]
    assert poisoned_job in [job["id"] for job in by_kind.json()["items"]]
    assert shown.json()["spec"]["dataset_path"] == "\ufffd"

    (tmp_path / "api-token").write_text(api.token + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPBENCH_")}
    env |= {"BPBENCH_API_URL": api.url, "BPBENCH_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    cli = subprocess.run(
        [*bpbench_command(), "jobs", "--status", "cancelled", "--limit", "1000", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert poisoned_job in [job["id"] for job in json.loads(cli.stdout)["items"]]


# --- non-finite numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["steps", "optimizer.lr", "time_limit_s"])
@pytest.mark.parametrize("number", NON_FINITE)
def test_a_non_finite_number_in_any_field_is_a_422_whose_body_is_json(
    api: ApiServer, submitter: str, session_maker: sessionmaker[Session], field: str, number: str
) -> None:
    before = _job_count(session_maker)
    body = _body(optimizer=f'{{"lr": {number}}}') if field == "optimizer.lr" else _body(**{field: number})
    with api.client(token=submitter) as client:
        response = _post(client, "/api/v1/jobs", body)
    assert response.status_code == 422, response.text
    (item,) = _strict_json(response.text)["detail"]
    assert (item["field"], item["value"], item["error"]) == (field, number, "is not a finite number")
    assert _job_count(session_maker) == before


def test_nan_in_a_suite_request_is_a_422_whose_body_is_json(api: ApiServer, submitter: str) -> None:
    with api.client(token=submitter) as client:
        response = _post(client, "/api/v1/suites", b'{"name": "smoke", "devices": [NaN]}')
    assert response.status_code == 422, response.text
    assert _strict_json(response.text)["detail"][0]["field"] == "devices.0"


# --- strict typing and parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "value"),
    [
        ({"steps": '"10"'}, "steps", "10"),
        ({"steps": "true"}, "steps", True),
        ({"seed": "1.0"}, "seed", 1.0),
        ({"model": '{"name": "mlp", "layers": [784, "16", 10]}'}, "model.layers.1", "16"),
        ({"model": '{"name": "mlp", "layers": [784, 16, 10], "batchnorm": 1}'}, "model.batchnorm", 1),
        ({"optimizer": '{"lr": "0.1"}'}, "optimizer.lr", "0.1"),
        ({"device": '"cpu\\n"'}, "device", "cpu\n"),
        ({"device": '"gpu:\\u0661"'}, "device", "gpu:\u0661"),
    ],
)
def test_a_value_of_the_wrong_type_or_spelling_is_a_422(
    api: ApiServer, submitter: str, fields: dict[str, str], field: str, value: Any
) -> None:
    with api.client(token=submitter) as client:
        response = _post(client, "/api/v1/jobs", _body(**fields))
    assert response.status_code == 422, response.text
    (item,) = response.json()["detail"]
    assert (item["field"], item["value"]) == (field, value)


def test_a_key_given_twice_is_a_422_naming_it(api: ApiServer, submitter: str) -> None:
    body = _body()[:-1] + b', "steps": 3}'
    with api.client(token=submitter) as client:
        response = _post(client, "/api/v1/jobs", body)
    assert response.status_code == 422, response.text
    (item,) = response.json()["detail"]
    assert (item["field"], item["value"], item["error"]) == ("steps", 3, "key given more than once")


def test_a_suite_request_refuses_unknown_fields_and_a_device_with_a_newline(
    api: ApiServer, submitter: str
) -> None:
    with api.client(token=submitter) as client:
        extra = _post(client, "/api/v1/suites", b'{"name": "smoke", "devices": ["cpu"], "priority": 1}')
        newline = _post(client, "/api/v1/suites", b'{"name": "smoke", "devices": ["cpu\\n"]}')
    assert extra.status_code == 422, extra.text
    known = "known fields: name, devices"
    assert extra.json()["detail"][0]["message"] == f"priority: unknown field; accepted: {known}"
    assert newline.status_code == 422, newline.text
    assert newline.json()["detail"][0]["field"] == "devices.0"


def test_a_body_without_a_content_type_is_a_415(api: ApiServer, submitter: str) -> None:
    with api.client(token=submitter) as client:
        jobs_answer = client.post("/api/v1/jobs", content=_body())
        suites_answer = client.post("/api/v1/suites", content=b'{"name": "smoke", "devices": ["cpu"]}')
    for response in (jobs_answer, suites_answer):
        assert response.status_code == 415, response.text
        assert response.json() == {"detail": "no Content-Type; accepted: application/json"}


def test_a_body_that_is_not_json_is_a_422_naming_the_line_and_column(api: ApiServer, submitter: str) -> None:
    with api.client(token=submitter) as client:
        response = _post(client, "/api/v1/jobs", b'{"kind": "train",\n  "steps": 10,, "seed": 1}')
    assert response.status_code == 422, response.text
    (item,) = response.json()["detail"]
    assert item["field"] == "body"
    reason = "Expecting property name enclosed in double quotes"
    assert item["error"] == f"not valid JSON: {reason} at line 2 column 15"
    assert item["accepted"] == "a JSON document (RFC 8259) encoded in UTF-8"


# --- dataset_path only inside BPBENCH_DATASET_DIRS --------------------------------------------------------


def _dataset_answer(client: httpx.Client, path: str) -> httpx.Response:
    body = {**tiny_spec().model_dump(mode="json"), "dataset": "mnist", "dataset_path": path}
    body["model"] = {"name": "mlp", "layers": [784, 16, 10]}
    return client.post("/api/v1/jobs", json=body)


def test_by_default_every_dataset_path_is_refused_alike_whether_it_exists_or_not(
    api: ApiServer, submitter: str, session_maker: sessionmaker[Session]
) -> None:
    before = _job_count(session_maker)
    with api.client(token=submitter) as client:
        answers = {path: _dataset_answer(client, path) for path in ("/root", "/nonexistent", "/etc/passwd")}
    assert _job_count(session_maker) == before
    bodies = set()
    for path, response in answers.items():
        assert response.status_code == 422, response.text
        (item,) = response.json()["detail"]
        assert (item["field"], item["value"]) == ("dataset_path", path)
        assert "BPBENCH_DATASET_DIRS" in item["accepted"]
        bodies.add(response.text.replace(json.dumps(path)[1:-1], "PATH"))
    assert len(bodies) == 1  # the same answer but for the path echoed: no existence oracle


@pytest.fixture
def api_with_dataset_dirs(service_settings: Settings, tmp_path: Path) -> Iterator[tuple[ApiServer, Path]]:
    """The API with one data set directory configured."""
    datasets = tmp_path / "datasets"
    (datasets / "mnist").mkdir(parents=True)
    with running_api(service_settings, tmp_path, ADMIN_TOKEN, BPBENCH_DATASET_DIRS=str(datasets)) as server:
        yield server, datasets


def test_a_dataset_path_is_accepted_only_inside_the_configured_directories(
    api_with_dataset_dirs: tuple[ApiServer, Path], session_maker: sessionmaker[Session]
) -> None:
    server, datasets = api_with_dataset_dirs
    outside = [
        "/root",
        "/nonexistent",
        f"{datasets}/../../etc",
        f"{datasets}-other/mnist",
        "datasets/mnist",
        str(datasets.parent),
    ]
    with server.client() as client:
        inside = _dataset_answer(client, f"{datasets}/mnist")
        refused = {path: _dataset_answer(client, path) for path in outside}
    assert inside.status_code == 202, inside.text
    with session_maker() as session:
        jobs.cancel_job(session, inside.json()["id"])
    for path, response in refused.items():
        assert response.status_code == 422, (path, response.text)
        (item,) = response.json()["detail"]
        assert item["accepted"] == f"an absolute path inside {datasets} (BPBENCH_DATASET_DIRS), without '..'"


def test_bpbench_run_still_reads_a_local_dataset_path(tmp_path: Path) -> None:
    # The user's own machine: the local run reads the path it is given (here: to find no IDX files there).
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPBENCH_")}
    run = subprocess.run(
        [*bpbench_command(), "run", "--dataset", "mnist", "--dataset-path", str(tmp_path), "--steps", "1"],
        env={**env, "BPBENCH_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode != 0
    assert str(tmp_path) in run.stderr and "BPBENCH_DATASET_DIRS" not in run.stderr
