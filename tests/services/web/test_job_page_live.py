"""The job page while and after a real worker runs the job, in real headless Chromium: its log lines (with
their attempt) and the loss curve drawn before the job finishes."""

from __future__ import annotations

import re
from typing import Any

from tests.services.web.test_dashboard import JOB_TIMEOUT_S, Console, signed_in  # noqa: F401 (fixture)
from tests.support import apiserver
from tests.support.apiserver import ApiServer
from tests.support.jobs import tiny_spec, wait_until
from tests.support.workers import WorkerProcess

api = apiserver.api


def open_job_page(page: Any, job_id: str) -> None:
    page.goto(f"{page.url.split('#')[0]}#/job/{job_id}")
    page.wait_for_selector(f"#job-page[data-job-id='{job_id}']:not([hidden])")


def test_the_job_page_shows_the_log_lines_of_the_job_with_their_attempt(
    signed_in: tuple[Any, Console],  # noqa: F811
    api: ApiServer,
    cpu_worker: WorkerProcess,
    screenshot: Any,
) -> None:
    page, console = signed_in
    with api.client() as client:
        # Long enough (a second or more) for lines at tenths of the way.
        job = client.post("/api/v1/jobs", json=tiny_spec(steps=6000).model_dump(mode="json")).json()
        log = wait_until(
            lambda: (doc := client.get(f"/api/v1/jobs/{job['id']}/logs").json())["complete"] and doc,
            JOB_TIMEOUT_S,
            "the job's whole log",
            interval_s=0.5,
        )
    open_job_page(page, job["id"])
    count = len(log["items"])
    page.wait_for_selector(f"#job-log-state:text-is('{count} line(s)')")
    rows = page.eval_on_selector_all(
        "#job-log tbody tr",
        "rs => rs.map(r => [r.dataset.seq, r.dataset.attempt,"
        " ...[...r.cells].slice(1).map(c => c.textContent)])",
    )
    assert rows == [[str(line["seq"]), "1", "#1", line["level"], line["message"]] for line in log["items"]]
    assert rows[0][-1] == f"job {job['id']}: attempt 1 started on {cpu_worker.name}"
    assert rows[-1][-1].startswith(f"job {job['id']}: succeeded")
    tenth = re.compile(rf"job {job['id']}: \d0%, step \d+/6000, loss \S+")
    assert any(tenth.fullmatch(row[-1]) for row in rows), rows  # a line at a tenth of the way
    assert page.inner_text("#job-status") == "succeeded"
    assert page.evaluate("document.getElementById('loss-chart').dataset.curve") == "final"
    page.locator("#job-log").scroll_into_view_if_needed()
    screenshot(page, "job-log")
    assert console.errors == []


def test_a_running_train_job_draws_its_loss_so_far_and_its_log_before_it_finishes(
    signed_in: tuple[Any, Console],  # noqa: F811
    api: ApiServer,
    cpu_worker: WorkerProcess,
    screenshot: Any,
) -> None:
    page, console = signed_in
    # Far more steps than the test waits for: it is cancelled once the page has drawn its curve.
    spec = tiny_spec(steps=500_000, loss_samples=10_000, time_limit_s=300)
    with api.client() as client:
        job = client.post("/api/v1/jobs", json=spec.model_dump(mode="json")).json()
    try:
        open_job_page(page, job["id"])
        # One moment of the page: the status it shows is `running` and the chart holds more than one point.
        drawn = page.wait_for_function(
            """() => {
                const chart = document.getElementById('loss-chart');
                const status = document.getElementById('job-status').textContent;
                const log = [...document.querySelectorAll('#job-log tbody tr[data-seq]')]
                    .map(r => [r.dataset.attempt, r.cells[3].textContent]);
                if (status !== 'running' || chart.dataset.curve !== 'partial' || chart.data[0].x.length < 2
                    || !log.length) {
                    return null;
                }
                const title = chart.layout.title.text;
                return { status, x: chart.data[0].x, y: chart.data[0].y, title, log };
            }""",
            timeout=JOB_TIMEOUT_S * 1000,
        ).json_value()
        screenshot(page, "running")
    finally:
        with api.client() as client:
            client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert drawn["status"] == "running"
    steps = drawn["x"]
    assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] < 500_000
    assert all(loss > 0 for loss in drawn["y"])
    assert drawn["title"] == f"training loss so far (attempt 1, step {steps[-1]} of 500000)"
    assert drawn["log"][0] == ["1", f"job {job['id']}: attempt 1 started on {cpu_worker.name}"]
    # The page keeps polling: it shows the cancel without a reload, and the job had not finished before.
    page.wait_for_selector("#job-status:text-is('cancelled')", timeout=JOB_TIMEOUT_S * 1000)
    with api.client() as client:
        final = client.get(f"/api/v1/jobs/{job['id']}").json()
    assert (final["status"], final["result"]) == ("cancelled", None)
    assert console.errors == []
