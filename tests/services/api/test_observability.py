"""`/metrics` read with Prometheus' own parser, job log lines with their context, the sign-in cookie."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.core.logging import JobContextFilter, JsonFormatter, TextFormatter, job_context
from tests.support import apiserver
from tests.support.apiserver import ApiServer
from tests.support.jobs import tiny_spec, wait_until
from tests.support.workers import WorkerProcess

api = apiserver.api

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: httpx.Client) -> Samples:
    """Every sample of /metrics, keyed by (name, sorted labels), parsed by prometheus_client's parser."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_a_finished_job_its_duration_and_its_request(
    api: ApiServer, cpu_worker: WorkerProcess
) -> None:
    with api.client() as client:
        before = scrape(client)
        job = client.post("/api/v1/jobs", json=tiny_spec().model_dump(mode="json")).json()
        done = wait_until(
            lambda: (doc := client.get(f"/api/v1/jobs/{job['id']}").json())["status"] == "succeeded" and doc,
            90,
            "the job to succeed",
            interval_s=0.2,
        )
        after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("bpbench_jobs", status="succeeded", kind="train") == 1
    assert value(after, "bpbench_jobs", status="running", kind="train") == 0
    assert delta("bpbench_job_duration_seconds_count", kind="train", status="succeeded") == 1
    duration = delta("bpbench_job_duration_seconds_sum", kind="train", status="succeeded")
    assert duration == pytest.approx(done["duration_s"], abs=0.01)
    # The job's duration falls in exactly the buckets at or above it.
    for bound in ("1", "5", "60"):
        expected = 1 if done["duration_s"] <= float(bound) else 0
        assert (
            delta("bpbench_job_duration_seconds_bucket", kind="train", status="succeeded", le=bound)
            == expected
        )
    assert delta("bpbench_http_requests_total", method="POST", route="/api/v1/jobs", status="202") == 1
    assert (
        delta("bpbench_http_requests_total", method="GET", route="/api/v1/jobs/{job_id}", status="200") >= 1
    )
    assert (
        value(after, "bpbench_http_request_duration_seconds_count", method="POST", route="/api/v1/jobs") >= 1
    )
    assert value(after, "bpbench_workers_live", device_class="cpu") >= 1
    assert value(after, "bpbench_broker_up") == 1
    assert ("bpbench_queue_depth", (("queue", f"device.{cpu_worker.device_id}"),)) in after


def test_queue_depth_counts_a_job_no_worker_takes(api: ApiServer) -> None:
    # No GPU worker runs in the tests: a gpu job waits in the `gpu` queue.
    with api.client() as client:
        before = value(scrape(client), "bpbench_queue_depth", queue="gpu")
        job = client.post("/api/v1/jobs", json=tiny_spec(device="gpu").model_dump(mode="json")).json()
        assert job["queue"] == "gpu"
        after = value(scrape(client), "bpbench_queue_depth", queue="gpu")
        client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert after == before + 1


def test_job_log_lines_name_the_job_worker_and_device(api: ApiServer, cpu_worker: WorkerProcess) -> None:
    with api.client() as client:
        job = client.post("/api/v1/jobs", json=tiny_spec().model_dump(mode="json")).json()
        wait_until(
            lambda: client.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "succeeded",
            90,
            "the job to succeed",
            interval_s=0.2,
        )
    tag = f"[job={job['id']} worker={cpu_worker.name} device={cpu_worker.device_id}]"
    lines = wait_until(
        lambda: [line for line in cpu_worker.log(200_000).splitlines() if job["id"] in line],
        10,
        "the worker's log lines about the job",
    )
    assert any("succeeded" in line for line in lines)
    assert all(line.endswith(tag) for line in lines if "services.jobs.runner" in line), lines


def test_json_log_lines_carry_the_job_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(JobContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    with job_context("job-1", "cpu@host", "abc123"):
        logger.info("step %d", 5)
    logger.info("idle")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "step 5"
    assert (first["job_id"], first["worker"], first["device"]) == ("job-1", "cpu@host", "abc123")
    assert first["level"] == "INFO" and re.match(r"\d{4}-\d\d-\d\dT", first["time"])
    assert "job_id" not in second


def test_text_log_lines_end_with_the_job_tag() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "done", None, None)
    with job_context("j", "w", "d"):
        JobContextFilter().filter(record)
    assert TextFormatter().format(record).endswith("done [job=j worker=w device=d]")


# --- the dashboard's sign-in cookie -----------------------------------------------------------------------


def test_the_token_link_sets_an_httponly_strict_cookie_and_cleans_the_address(api: ApiServer) -> None:
    with httpx.Client(base_url=api.url, timeout=30) as browser:
        confirm = browser.get("/", params={"token": api.token})
        assert confirm.status_code == 200 and 'action="/auth/signin"' in confirm.text
        assert "set-cookie" not in confirm.headers
        response = browser.post(
            "/auth/signin", data={"token": api.token}, headers={"Sec-Fetch-Site": "same-origin"}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("bpbench_token=")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert browser.get("/api/v1/session").json()["via"] == "cookie"
        assert browser.get("/api/v1/jobs", params={"limit": 1}).status_code == 200
        unknown = f"/api/v1/jobs/{uuid.uuid4()}/cancel"
        refused = browser.post(unknown)
        assert refused.status_code == 403 and "X-Requested-With" in refused.json()["detail"]
        # With the header the request passes the auth check and reaches the route (no such job: 404).
        assert browser.post(unknown, headers={"X-Requested-With": "bpbench"}).status_code == 404


def test_a_sign_in_post_from_another_origin_is_refused_without_a_cookie(api: ApiServer) -> None:
    with httpx.Client(base_url=api.url, timeout=30) as browser:
        cross_site = browser.post(
            "/auth/signin", data={"token": api.token}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        other_origin = browser.post(
            "/auth/signin", data={"token": api.token}, headers={"Origin": "http://evil.example"}
        )
        neither = browser.post("/auth/signin", data={"token": api.token})
    for refused in (cross_site, other_origin, neither):
        assert refused.status_code == 403 and "same-origin POST" in refused.json()["detail"]
        assert "set-cookie" not in refused.headers
    assert browser.cookies.get("bpbench_token") is None


def test_a_wrong_token_link_sets_no_cookie(api: ApiServer) -> None:
    with httpx.Client(base_url=api.url, timeout=30) as browser:
        response = browser.get("/", params={"token": "bpb_wrong"})
        assert (response.status_code, response.headers["location"]) == (303, "/?signin=invalid")
        assert "set-cookie" not in response.headers
        assert browser.get("/api/v1/jobs").status_code == 401
        assert browser.get("/api/v1/session").json()["signed_in"] is False


def test_the_page_and_plotly_are_served_by_the_app(api: ApiServer) -> None:
    page = httpx.get(f"{api.url}/")
    assert page.status_code == 200 and "/static/vendor/plotly.min.js" in page.text
    assert "http://" not in page.text.replace("http://127.0.0.1:8000", "")  # no CDN
    script = httpx.get(f"{api.url}/static/vendor/plotly.min.js")
    assert script.status_code == 200 and len(script.content) > 1_000_000
    assert httpx.get(f"{api.url}/static/app.js").status_code == 200
