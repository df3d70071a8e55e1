"""The API's thin edges: responses validated from the rows, domain errors answered by the app's handlers,
and every hand-built 422 item shaped by one helper (`services/api/errors.py`).

The bodies are asserted whole, byte for byte as the API answered before the handlers took over from the
routes, over real HTTP against the shared API server.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from services.api.errors import field_error, unprocessable
from services.api.routes.jobs import JobOut, job_out, submitted_job_json
from services.core.db import utcnow
from services.jobs import service as jobs
from tests.services.results.test_compare import Planted, planted  # noqa: F401  (the planted results fixture)
from tests.support import apiserver
from tests.support.apiserver import ApiServer
from tests.support.jobs import tiny_spec

api = apiserver.api  # the shared API server fixture


def test_an_unknown_job_is_a_404_naming_it_on_show_cancel_and_report(api: ApiServer) -> None:
    with api.client() as client:
        for method, path in (
            ("GET", "/api/v1/jobs/no-such-job"),
            ("POST", "/api/v1/jobs/no-such-job/cancel"),
            ("GET", "/api/v1/jobs/no-such-job/report"),
        ):
            response = client.request(method, path)
            assert response.status_code == 404, path
            assert response.content == b'{"detail":"no job with id \'no-such-job\'"}', path


def test_no_matching_result_is_a_404_naming_the_filters(api: ApiServer) -> None:
    with api.client() as client:
        response = client.get("/api/v1/compare", params={"model": "mlp", "batch_size": 59_999})
    assert response.status_code == 404
    assert response.json() == {"detail": "no throughput results match model=mlp, batch_size=59999"}


def test_an_unknown_baseline_is_a_422_on_the_query_value_listing_the_devices(
    api: ApiServer,
    planted: Planted,  # noqa: F811  (the fixture imported above)
) -> None:
    with api.client() as client:
        response = client.get(
            "/api/v1/compare", params={"spec_hash": planted.main_hash, "baseline": "no such device"}
        )
    assert response.status_code == 422
    (item,) = response.json()["detail"]
    prefix = "baseline 'no such device' is not a device of this comparison; accepted: "
    assert item["accepted"].startswith(prefix)
    listed = item["accepted"].removeprefix(prefix).split(", ")
    assert sorted(listed) == sorted(f"{d.id} ({d.name})" for d in (planted.cpu, planted.gpu))
    assert response.json() == {
        "detail": [
            {
                "field": "baseline",
                "in": "query",
                "value": "no such device",
                "accepted": item["accepted"],
                "message": item["accepted"],
            }
        ]
    }


def test_an_unknown_target_is_one_item_without_a_summary_line(api: ApiServer) -> None:
    body = {**tiny_spec().model_dump(mode="json"), "target": "nosuchdevice"}
    with api.client() as client:
        response = client.post("/api/v1/jobs", json=body)
    assert response.status_code == 422
    assert response.content == (
        b'{"detail":[{"field":"target","in":"body","value":"nosuchdevice",'
        b'"accepted":"the id of a registered device (GET /api/v1/devices)",'
        b'"message":"target: no registered device has id \'nosuchdevice\'"}]}'
    )


def test_a_nul_character_in_a_query_is_a_422_from_the_same_helper(api: ApiServer) -> None:
    with api.client() as client:
        response = client.get("/api/v1/jobs", params={"kind": "a\x00b"})
    assert response.status_code == 422
    accepted = "text without NUL characters (\\u0000)"
    expected = field_error(
        "kind", "query", "a\x00b", accepted, f"kind: contains a NUL character; accepted: {accepted}"
    )
    assert response.json() == {"detail": [expected]}


def test_a_field_error_keeps_the_key_order_of_the_422_schema() -> None:
    plain = field_error("steps", "body", 0, "an integer >= 1", "steps: got 0")
    assert list(plain) == ["field", "in", "value", "accepted", "message"]
    explained = field_error("steps", "body", 0, "an integer >= 1", "steps: got 0", error="too small")
    assert list(explained) == ["field", "in", "value", "accepted", "error", "message"]
    refused = unprocessable("target", "body", "x", "a device id", "target: no device 'x'")
    assert (refused.status_code, refused.detail) == (
        422,
        [
            {
                "field": "target",
                "in": "body",
                "value": "x",
                "accepted": "a device id",
                "message": "target: no device 'x'",
            }
        ],
    )


def test_the_job_view_is_validated_from_the_row_with_its_worker_and_duration(db_session: Session) -> None:
    job = jobs.create_job(db_session, tiny_spec())
    started = utcnow()
    job.status, job.worker_name, job.device_id = "failed", "cpu@host", None
    job.started_at, job.finished_at, job.error = started, started + timedelta(seconds=2.5), "boom"
    db_session.commit()
    view = job_out(db_session, job, suite_item="mlp-synthetic")
    assert (view.worker, view.duration_s, view.error, view.status) == ("cpu@host", 2.5, "boom", "failed")
    assert (view.suite_item, view.result, view.spec_hash) == ("mlp-synthetic", None, job.spec_hash)
    assert view.model_dump(mode="json")["worker"] == "cpu@host"  # the API's name, not the column's


def test_a_submitted_job_document_has_the_row_and_nothing_a_worker_sets(db_session: Session) -> None:
    row = jobs.job_row(tiny_spec())
    published = utcnow()
    doc = json.loads(submitted_job_json(row, published))
    assert list(doc) == [*JobOut.model_fields, *JobOut.model_computed_fields]
    assert doc["backends"] == ["numpy"]  # what its spelling, `cpu`, runs on
    assert (doc["id"], doc["status"], doc["queue"], doc["spec_hash"]) == (
        row["id"],
        "queued",
        "cpu",
        row["spec_hash"],
    )
    assert datetime.fromisoformat(doc["published_at"]) == published
    unset = (
        "error",
        "worker",
        "device_id",
        "started_at",
        "finished_at",
        "duration_s",
        "result",
        "suite_item",
    )
    assert {key: doc[key] for key in unset} == dict.fromkeys(unset)
