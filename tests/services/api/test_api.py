"""The API over real HTTP (uvicorn subprocess), with real workers, Redis and both databases.

Tests marked `every_broker` run over RabbitMQ as well (see tests/conftest.py)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from harness.processes import bpbench_command
from services.auth.models import ApiToken
from services.auth.service import create_token
from services.core.config import Settings
from services.jobs.models import Job
from services.jobs.suites import smoke_suite
from tests.support import apiserver
from tests.support.apiserver import ADMIN_TOKEN, ApiServer, free_port, running_api, server_env
from tests.support.jobs import tiny_spec, wait_until
from tests.support.workers import WorkerProcess

JOB_TIMEOUT_S = 90.0

api = apiserver.api  # the shared API server fixture


def spec_body(**overrides: Any) -> dict[str, Any]:
    """A tiny train job as the JSON body of POST /api/v1/jobs."""
    return tiny_spec(**overrides).model_dump(mode="json")


def wait_final(client: httpx.Client, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> dict[str, Any]:
    """Poll GET /api/v1/jobs/{id} until the job is final; its document."""

    def final() -> dict[str, Any] | None:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(final, timeout_s, f"job {job_id} to finish", interval_s=0.2)


@pytest.mark.every_broker
def test_submitted_job_runs_and_its_result_is_recorded(api: ApiServer, cpu_worker: WorkerProcess) -> None:
    with api.client() as client:
        response = client.post("/api/v1/jobs", json=spec_body())
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["status"] == "queued"
        assert job["queue"] == "cpu"
        assert response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
        assert client.get(response.headers["Location"]).json()["id"] == job["id"]

        done = wait_final(client, job["id"])
        assert done["status"] == "succeeded", done["error"]
        assert done["device_id"] == cpu_worker.device_id
        assert done["worker"] == cpu_worker.name
        assert done["progress"] == 1.0
        assert done["result"]["samples_per_s"] > 0
        assert done["result"]["trial_count"] >= 3
        low, high = done["result"]["samples_per_s_ci95"]
        assert low <= done["result"]["samples_per_s"] <= high

        results = client.get("/api/v1/results", params={"spec_hash": job["spec_hash"], "limit": 1000}).json()
        mine = [r for r in results["items"] if r["job_id"] == job["id"]]
        assert len(mine) == 1
        assert mine[0]["samples_per_s"] == done["result"]["samples_per_s"]
        assert mine[0]["device_id"] == cpu_worker.device_id
        assert mine[0]["metrics"]["steps"] == 20


def test_a_job_is_committed_and_kept_queued_when_the_broker_is_down(
    service_settings: Settings, session_maker: sessionmaker[Session], tmp_path: Path
) -> None:
    dead = service_settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    with running_api(dead, tmp_path, ADMIN_TOKEN, ready_path="/healthz") as server, server.client() as client:
        response = client.post("/api/v1/jobs", json=spec_body())
        ready = client.get("/readyz")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    with session_maker() as session:
        row = session.get(Job, response.json()["id"])
        assert row is not None
        assert (row.status, row.published_at) == ("queued", None)
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["broker"] != "ok"


def test_reads_are_open_with_public_read(service_settings: Settings, tmp_path: Path) -> None:
    server = running_api(service_settings, tmp_path, ADMIN_TOKEN, BPBENCH_PUBLIC_READ="true")
    with server as api_server, api_server.client(token=None) as anonymous:
        assert anonymous.get("/api/v1/timeline").status_code == 200
        assert anonymous.get("/api/v1/jobs").status_code == 200
        assert anonymous.post("/api/v1/jobs", json=spec_body()).status_code == 401


def test_health_and_readiness_answer(api: ApiServer) -> None:
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok", "disk": "ok"}}
    schema = httpx.get(f"{api.url}/openapi.json").json()
    assert {"/api/v1/jobs", "/api/v1/suites", "/api/v1/compare", "/readyz"} <= set(schema["paths"])
    assert httpx.get(f"{api.url}/docs").status_code == 200


def test_writes_need_a_token_with_the_submit_scope(api: ApiServer, db_session: Session) -> None:
    read_token, _ = create_token(db_session, name="reader", scopes=["read"])
    db_session.commit()
    with api.client(token=None) as anonymous:
        refused = anonymous.post("/api/v1/jobs", json=spec_body())
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert anonymous.get("/api/v1/jobs").status_code == 401  # reads need `read` unless PUBLIC_READ
        assert anonymous.get("/healthz").status_code == 200
    with api.client(token="bpb_not-a-real-token") as stranger:
        assert stranger.post("/api/v1/jobs", json=spec_body()).status_code == 401
    with api.client(token=read_token) as reader:
        assert reader.get("/api/v1/jobs", params={"limit": 1}).status_code == 200
        forbidden = reader.post("/api/v1/jobs", json=spec_body())
        assert forbidden.status_code == 403
        assert "submit" in forbidden.json()["detail"]


def test_tokens_are_stored_hashed(api: ApiServer, db_session: Session) -> None:
    rows = db_session.scalars(select(ApiToken)).all()
    bootstrap = [row for row in rows if row.token_hash == hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()]
    assert len(bootstrap) == 1
    assert bootstrap[0].scopes == ["admin"]
    assert all(ADMIN_TOKEN not in (row.token_hash, row.prefix, row.name) for row in rows)


@pytest.mark.parametrize(
    ("body", "field", "value", "accepted"),
    [
        ({"steps": 0}, "steps", 0, "an integer >= 1 and <= 1000000"),
        ({"batch_size": 70000}, "batch_size", 70000, "an integer >= 1 and <= 65536"),
        ({"model": {"layers": [784, 0, 10]}}, "model.layers.1", 0, "an integer >= 1 and <= 16384"),
        ({"dtype": "float16"}, "dtype", "float16", "one of 'float32', 'float64'"),
        ({"optimizer": {"lr": -1}}, "optimizer.lr", -1, "a number > 0 and <= 10"),
    ],
)
def test_a_refused_value_is_a_422_naming_field_value_and_range(
    api: ApiServer, body: dict[str, Any], field: str, value: Any, accepted: str
) -> None:
    with api.client() as client:
        response = client.post("/api/v1/jobs", json=body)
    assert response.status_code == 422
    (item,) = response.json()["detail"]
    assert (item["field"], item["value"], item["accepted"]) == (field, value, accepted)
    assert field in response.json()["message"] and accepted in response.json()["message"]


def test_a_float64_job_aimed_at_a_tpu_is_a_422_naming_the_dtype_the_device_and_what_is_accepted(
    api: ApiServer,
) -> None:
    refusal = (
        "float64 cannot run on device 'xla:tpu:0' (xla has no float64 on tpu); accepted: float32 on it, "
        "or float64 on a device that has it (e.g. cpu)"
    )
    with api.client() as client:
        refused = client.post("/api/v1/jobs", json={**spec_body(), "device": "xla:tpu:0", "dtype": "float64"})
        # The same job in float32 is taken, and waits on the queue only XLA workers serve.
        taken = client.post("/api/v1/jobs", json={**spec_body(), "device": "xla:tpu:0", "dtype": "float32"})
        assert taken.status_code == 202, taken.text
        client.post(f"/api/v1/jobs/{taken.json()['id']}/cancel")

    assert refused.status_code == 422
    (item,) = refused.json()["detail"]
    assert (item["field"], item["value"], item["accepted"]) == ("dtype", "float64", refusal)
    assert refused.json()["message"] == f"dtype: {refusal}"
    assert (taken.json()["device_class"], taken.json()["queue"]) == ("xla", "xla")


def test_an_unknown_field_and_an_unknown_target_are_named(api: ApiServer) -> None:
    with api.client() as client:
        unknown = client.post("/api/v1/jobs", json={"stepz": 5}).json()["detail"][0]
        target = client.post("/api/v1/jobs", json={**spec_body(), "target": "nosuchdevice"}).json()["detail"][
            0
        ]
    assert unknown["field"] == "stepz"
    assert "steps" in unknown["accepted"]
    assert (target["field"], target["value"]) == ("target", "nosuchdevice")


@pytest.mark.every_broker
def test_a_job_aimed_at_one_device_runs_there(
    api: ApiServer, cpu_worker: WorkerProcess, worker_factory: Any
) -> None:
    single = worker_factory(threads=1)
    assert single.device_id != cpu_worker.device_id  # the BLAS thread count is part of the device
    with api.client() as client:
        job = client.post("/api/v1/jobs", json={**spec_body(), "target": single.device_id}).json()
        assert job["queue"] == f"device.{single.device_id}"
        done = wait_final(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert (done["device_id"], done["worker"]) == (single.device_id, single.name)


@pytest.mark.every_broker
def test_the_suite_fans_out_over_every_live_device(
    api: ApiServer, cpu_worker: WorkerProcess, worker_factory: Any
) -> None:
    single = worker_factory(threads=1)
    mine = {cpu_worker.device_id, single.device_id}
    with api.client() as client:
        response = client.post("/api/v1/suites", json={"name": "smoke"})
        assert response.status_code == 202, response.text
        suite = response.json()
        assert mine <= set(suite["targets"])
        jobs = [job for job in suite["jobs"] if job["target_device_id"] in mine]
        assert [job["suite_item"] for job in jobs[:6]] == [name for name, _ in smoke_suite("cpu")]
        finished = [wait_final(client, job["id"]) for job in jobs]
    assert [job["status"] for job in finished] == ["succeeded"] * 12, [j["error"] for j in finished]
    assert Counter(job["device_id"] for job in finished) == {cpu_worker.device_id: 6, single.device_id: 6}
    assert all(job["device_id"] == job["target_device_id"] for job in finished)


def test_a_suite_for_listed_classes_and_unknown_devices(api: ApiServer) -> None:
    with api.client() as client:
        bad = client.post("/api/v1/suites", json={"name": "smoke", "devices": ["cpu", "tpu"]})
        unknown_suite = client.post("/api/v1/suites", json={"name": "huge"})
        # No GPU worker runs in the tests: jobs for `gpu` would wait forever, so nothing is submitted.
        before = client.get("/api/v1/jobs", params={"device": "gpu"}).json()["total"]
        unserved = client.post("/api/v1/suites", json={"name": "smoke", "devices": ["gpu", "gpu:1"]})
        after = client.get("/api/v1/jobs", params={"device": "gpu"}).json()["total"]
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["field"] == "devices.1"
    assert unknown_suite.status_code == 422
    assert unknown_suite.json()["detail"][0]["accepted"] == "one of 'standard', 'smoke'"
    assert unserved.status_code == 409
    assert unserved.json()["detail"].startswith("no live worker serves gpu, gpu:1: start one there")
    assert "nothing was submitted" in unserved.json()["detail"]
    assert after == before


def test_a_queued_job_is_cancelled_at_once(api: ApiServer) -> None:
    with api.client() as client:
        # No GPU worker runs in the tests, so a gpu job stays queued.
        job = client.post("/api/v1/jobs", json=spec_body(device="gpu")).json()
        assert job["status"] == "queued"
        with api.client(token=None) as anonymous:
            assert anonymous.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 401
        cancelled = client.post(f"/api/v1/jobs/{job['id']}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        assert client.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "cancelled"
        assert client.post("/api/v1/jobs/no-such-job/cancel").status_code == 404


def test_jobs_are_filtered_and_paged(api: ApiServer) -> None:
    with api.client() as client:
        ids = [
            client.post("/api/v1/jobs", json=spec_body(device="gpu", seed=i)).json()["id"] for i in range(3)
        ]
        for job_id in ids:
            client.post(f"/api/v1/jobs/{job_id}/cancel")
        page = client.get("/api/v1/jobs", params={"status": "cancelled", "device": "gpu", "limit": 2}).json()
        second = client.get(
            "/api/v1/jobs", params={"status": "cancelled", "device": "gpu", "limit": 2, "offset": 2}
        ).json()
        bad = client.get("/api/v1/jobs", params={"status": "lost"})
    assert page["total"] >= 3 and page["limit"] == 2 and len(page["items"]) == 2
    assert second["total"] == page["total"]
    assert {job["status"] for job in page["items"] + second["items"]} == {"cancelled"}
    assert {job["device"] for job in page["items"]} == {"gpu"}
    # Newest first: the last submitted comes first.
    assert page["items"][0]["id"] == ids[-1]
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["field"] == "status"
    assert bad.json()["detail"][0]["value"] == "lost"


def test_results_download_as_csv(api: ApiServer, cpu_worker: WorkerProcess) -> None:
    with api.client() as client:
        job = client.post("/api/v1/jobs", json=spec_body(seed=7)).json()
        assert wait_final(client, job["id"])["status"] == "succeeded"
        response = client.get("/api/v1/results", params={"spec_hash": job["spec_hash"], "format": "csv"})
        as_json = client.get("/api/v1/results", params={"spec_hash": job["spec_hash"]}).json()
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == as_json["total"] >= 1
    row = next(r for r in rows if r["job_id"] == job["id"])
    item = next(r for r in as_json["items"] if r["job_id"] == job["id"])
    assert float(row["samples_per_s"]) == pytest.approx(item["samples_per_s"], rel=1e-12)
    assert (row["kind"], row["model"], row["dataset"], row["batch_size"]) == (
        "train",
        "mlp",
        "synthetic",
        "32",
    )
    # The spec's shape travels with each row: layer widths as the textbook writes them, and the step count.
    spec = tiny_spec(seed=7)
    assert row["layers"] == "-".join(map(str, spec.model.layers)) == "-".join(map(str, item["layers"]))
    assert int(row["steps"]) == spec.steps == item["steps"]
    assert row["device_id"] == cpu_worker.device_id
    assert 0.0 <= float(row["test_accuracy"]) <= 1.0


def test_bpbench_api_migrates_on_start_and_accepts_its_token(redis_broker_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url=redis_broker_url)  # a fresh, unmigrated SQLite file
    port = free_port()
    env = server_env(settings, "bpb_first-admin-token-of-this-deployment")
    argv = [*bpbench_command(), "api", "--host", "127.0.0.1", "--port", str(port)]
    with (tmp_path / "api.log").open("wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            return False

        wait_until(ready, 60, "bpbench api to serve")
        headers = {"Authorization": "Bearer bpb_first-admin-token-of-this-deployment"}
        # A gpu job: no worker of this test's broker takes it.
        response = httpx.post(f"{url}/api/v1/jobs", json=spec_body(device="gpu"), headers=headers)
        assert response.status_code == 202, response.text
        assert httpx.get(f"{url}/api/v1/timeline", headers=headers).json()["vendors"][0]["vendor"] == "NVIDIA"
    finally:
        process.terminate()
        process.wait(timeout=15)
