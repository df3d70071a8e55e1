"""The dashboard in real headless Chromium, against the real API, a real worker and both databases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import apiserver
from tests.support.apiserver import ApiServer
from tests.support.jobs import tiny_spec, wait_until
from tests.support.workers import WorkerProcess

api = apiserver.api
JOB_TIMEOUT_S = 90.0
PAGE_TIMEOUT_MS = 60_000


def run_to_success(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """Submit a job over the API and wait until it succeeded; its final document."""
    job = client.post("/api/v1/jobs", json=body)
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]

    def final() -> dict[str, Any] | None:
        doc = client.get(f"/api/v1/jobs/{job_id}").json()
        return doc if doc["status"] in ("succeeded", "failed", "cancelled") else None

    doc = wait_until(final, JOB_TIMEOUT_S, f"job {job_id}", interval_s=0.2)
    assert doc["status"] == "succeeded", doc["error"]
    return doc


@pytest.fixture(scope="module")
def jobs_that_ran(api: ApiServer, cpu_worker: WorkerProcess) -> dict[str, dict[str, Any]]:
    """A job of each kind the dashboard draws, run by the real worker: train, gemm, backprop vs numerical."""
    quick = {"warmup": 1, "min_repeats": 3, "max_repeats": 3}
    with api.client() as client:
        return {
            "train": run_to_success(client, tiny_spec().model_dump(mode="json")),
            "gemm": run_to_success(
                client, {"kind": "gemm", "device": "cpu", "gemm_sizes": [64, 128], "timing": quick}
            ),
            "bvn": run_to_success(
                client,
                {"kind": "backprop_vs_numerical", "device": "cpu", "bvn_widths": [2, 4], "timing": quick},
            ),
        }


class Console:
    """The page's console errors and uncaught exceptions."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))


@pytest.fixture
def signed_in(browser: Any, api: ApiServer) -> Iterator[tuple[Any, Console]]:
    """A fresh browser context signed in through the `/?token=` link and its confirm button, on the loaded
    dashboard."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    console = Console(page)
    page.goto(f"{api.url}/?token={api.token}")
    page.click("#signin-confirm-button")
    page.wait_for_selector("body[data-ready='true']")
    yield page, console
    context.close()


def test_the_link_signs_in_and_the_token_leaves_the_address_bar(
    signed_in: tuple[Any, Console], api: ApiServer
) -> None:
    page, console = signed_in
    assert page.url == f"{api.url}/"
    cookie = next(c for c in page.context.cookies() if c["name"] == "bpbench_token")
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
    assert page.evaluate("document.cookie") == ""  # HttpOnly: invisible to scripts
    assert "signed in as BPBENCH_API_TOKEN" in page.inner_text("#who")
    # The page runs under a strict Content-Security-Policy; a violation would be a console error above.
    headers = page.request.get(f"{api.url}/").headers
    assert "script-src 'self';" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert (headers["x-content-type-options"], headers["referrer-policy"]) == ("nosniff", "no-referrer")
    assert console.errors == []


def test_the_dashboard_charts_the_devices_of_jobs_that_ran(
    signed_in: tuple[Any, Console],
    jobs_that_ran: dict[str, dict[str, Any]],
    cpu_worker: WorkerProcess,
    screenshot: Any,
) -> None:
    page, console = signed_in
    page.reload()  # the jobs may have finished after the page first loaded
    page.wait_for_selector("body[data-ready='true']")
    device = cpu_worker.device_id
    # Device comparison of the train job's spec: the worker's device is a bar and a row.
    page.select_option("#compare-filters select[name=spec_hash]", jobs_that_ran["train"]["spec_hash"])
    page.wait_for_selector(f"#compare-table tr[data-device-id='{device}']")
    # The stack that measured it beside the hardware: this worker's NumPy.
    stack = page.inner_text(f"#compare-table tr[data-device-id='{device}'] td.stack")
    assert stack.startswith("numpy · numpy "), stack
    bars = page.evaluate("document.getElementById('compare-chart').data[0].x")
    assert any(device[:6] in name for name in bars), bars
    whiskers = page.evaluate("document.getElementById('compare-chart').data[0].error_y")
    assert whiskers["type"] == "data" and len(whiskers["array"]) == len(bars)
    # The timeline places the device under its vendor with its GEMM peak.
    entry = page.locator(f"#timeline-list li[data-device-id='{device}']")
    assert "GFLOP/s" in entry.inner_text()
    assert "(numpy · numpy " in entry.inner_text()  # and names the stack
    annotations = page.evaluate(
        "document.getElementById('timeline-chart').layout.annotations.map(a => a.text)"
    )
    assert any(cpu_worker_name(page, device) in text for text in annotations), annotations
    # The year axis ends just after this year; the device notes sit in the right margin, not on the axis.
    axis_end, this_year = page.evaluate(
        "[document.getElementById('timeline-chart').layout.xaxis.range[1], new Date().getFullYear()]"
    )
    assert this_year < axis_end <= this_year + 2, (axis_end, this_year)
    # Backprop against numerical: both methods, log-log, for the device.
    traces = page.evaluate(
        "document.getElementById('bvn-chart').data.map(t => [t.name, t.x.length, t.y.every(v => v > 0)])"
    )
    assert {name.split(" · ")[0] for name, _, _ in traces} == {"backprop", "numerical"}
    assert all(points == 2 and positive for _, points, positive in traces), traces
    assert page.evaluate("document.getElementById('bvn-chart').layout.yaxis.type") == "log"
    screenshot(page, "overview")
    assert console.errors == []


def cpu_worker_name(page: Any, device_id: str) -> str:
    """The device's name as the page knows it (from /api/v1/devices)."""
    return str(
        page.evaluate(
            "fetch('/api/v1/devices').then(r => r.json())"
            f".then(d => d.items.find(i => i.id === '{device_id}').name)"
        )
    )


def test_the_job_table_updates_itself_when_a_job_finishes(
    signed_in: tuple[Any, Console], api: ApiServer, cpu_worker: WorkerProcess, screenshot: Any
) -> None:
    page, console = signed_in
    with api.client() as client:
        job = client.post("/api/v1/jobs", json=tiny_spec(steps=300).model_dump(mode="json")).json()
    row = f"#jobs-table tr[data-job-id='{job['id']}']"
    page.wait_for_selector(row)  # appears without a reload (the table polls)
    page.wait_for_selector(f"{row}[data-status='succeeded']", timeout=JOB_TIMEOUT_S * 1000)
    assert "100%" in page.inner_text(row)
    assert cpu_worker.name in page.inner_text(row)
    page.locator("#jobs").scroll_into_view_if_needed()
    screenshot(page, "jobs")
    assert console.errors == []


def test_the_submit_form_creates_a_job(
    signed_in: tuple[Any, Console], api: ApiServer, cpu_worker: WorkerProcess, screenshot: Any
) -> None:
    page, console = signed_in
    form = "#submit-form"
    page.select_option(f"{form} select[name=kind]", "train")
    page.select_option(f"{form} select[name=model]", "mlp")
    page.fill(f"{form} input[name=layers]", "784,16,10")
    page.select_option(f"{form} select[name=dataset]", "synthetic")
    page.fill(f"{form} input[name=steps]", "20")
    page.fill(f"{form} input[name=batch_size]", "32")
    page.click("#submit-job")
    link = page.wait_for_selector("#submitted-job")
    job_id = link.get_attribute("data-job-id")
    with api.client() as client:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        assert job["spec"]["model"]["layers"] == [784, 16, 10]
        assert (job["spec"]["steps"], job["spec"]["batch_size"], job["kind"]) == (20, 32, "train")
        page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}'][data-status='succeeded']")
    page.locator("#submit").scroll_into_view_if_needed()
    screenshot(page, "submitted")
    # A value the API refuses is shown with what is accepted.
    page.fill(f"{form} input[name=batch_size]", "70000")
    page.click("#submit-job")
    page.wait_for_selector("#submit-result.error")
    assert "batch_size: got 70000; accepted: an integer >= 1 and <= 65536" in page.inner_text(
        "#submit-result"
    )
    assert [e for e in console.errors if "422" not in e] == []  # the refused POST is logged by Chromium


def test_the_job_page_shows_loss_curve_trials_and_fingerprint(
    signed_in: tuple[Any, Console], jobs_that_ran: dict[str, dict[str, Any]], screenshot: Any
) -> None:
    page, console = signed_in
    job = jobs_that_ran["train"]
    page.goto(f"{page.url.split('#')[0]}#/job/{job['id']}")
    page.wait_for_selector("#job-page:not([hidden]) #loss-chart .main-svg")
    assert page.inner_text("#job-id") == job["id"]
    assert page.inner_text("#job-status") == "succeeded"
    loss = page.evaluate("document.getElementById('loss-chart').data[0].y.length")
    assert loss >= 2
    trials = page.evaluate("document.getElementById('trials-chart').data.map(t => [t.name, t.y.length])")
    assert trials == [["samples_per_s", job["result"]["trial_count"]]]
    assert '"cpu_model"' in page.inner_text("#job-fingerprint")
    assert page.is_hidden("#job-error")
    screenshot(page, "job")
    assert console.errors == []


def test_a_page_opened_without_a_token_asks_for_one(browser: Any, api: ApiServer, screenshot: Any) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 700})
    try:
        page = context.new_page()
        console = Console(page)
        page.goto(f"{api.url}/")
        page.wait_for_selector("#signin:not([hidden])")
        assert page.is_hidden("#overview")
        assert "not signed in" in page.inner_text("#who")
        page.fill("#signin-token", "bpb_not-a-token")
        page.click("#signin-form button")
        page.wait_for_selector("#signin-error:not([hidden])")
        assert page.url == f"{api.url}/"  # the failed attempt leaves no token in the address
        screenshot(page, "signin")
        assert console.errors == []
    finally:
        context.close()


def test_the_signin_example_link_names_the_pages_own_origin(browser: Any, api: ApiServer) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{api.url}/")
        page.wait_for_selector("#signin:not([hidden])")
        # The API runs on a free port here, never 8000: the example must say this server's address.
        assert page.inner_text("#signin-example") == f"{api.url}/?token=…"
    finally:
        context.close()


def test_the_gemm_job_charts_its_trials_in_gflops(
    signed_in: tuple[Any, Console], api: ApiServer, jobs_that_ran: dict[str, dict[str, Any]]
) -> None:
    page, console = signed_in
    job = jobs_that_ran["gemm"]
    with api.client() as client:
        result = client.get(f"/api/v1/jobs/{job['id']}/report").json()["result"]
    page.goto(f"{page.url.split('#')[0]}#/job/{job['id']}")
    page.wait_for_selector("#job-page:not([hidden]) #trials-chart .main-svg")
    chart = page.evaluate(
        "(() => { const c = document.getElementById('trials-chart');"
        " return {title: c.layout.yaxis.title.text, names: c.data.map(t => t.name), y: c.data.map(t => t.y),"
        " ticks: [...c.querySelectorAll('.ytick text')].map(t => t.textContent)}; })()"
    )
    assert chart["title"] == "GFLOP/s"
    assert chart["names"] == ["64×64", "128×128"]
    expected = [[rate / 1e9 for rate in result["trials"][size]] for size in ("64", "128")]
    assert [pytest.approx(series, rel=1e-12) for series in expected] == chart["y"]
    # Plain numbers on the axis: no SI suffix such as "42B" (giga) or "1.5G".
    assert chart["ticks"] and all(tick.replace(",", "").replace(".", "").isdigit() for tick in chart["ticks"])
    assert console.errors == []


def test_the_timeline_notes_fit_and_its_source_is_named_by_title_author_and_date(
    signed_in: tuple[Any, Console], jobs_that_ran: dict[str, dict[str, Any]]
) -> None:
    page, console = signed_in
    page.reload()
    page.wait_for_selector("body[data-ready='true'] #timeline-chart .main-svg")
    overflow = page.evaluate(
        "(() => { const c = document.getElementById('timeline-chart');"
        " const right = c.querySelector('.main-svg').getBoundingClientRect().right;"
        " return [...c.querySelectorAll('.annotation-text')]"
        "   .map(a => [a.textContent, a.getBoundingClientRect().right - right]); })()"
    )
    assert overflow, "the timeline has no device notes"
    assert [(text, over) for text, over in overflow if over > 0] == []
    assert page.inner_text("#timeline-source") == (
        "source: “深度学习三: 基于Python的理论和实现”, blog post by LXG, 2026-02-13"
    )
    assert console.errors == []


def test_the_devices_menu_item_opens_the_device_list(
    signed_in: tuple[Any, Console], api: ApiServer, cpu_worker: WorkerProcess, screenshot: Any
) -> None:
    page, console = signed_in
    page.reload()  # the worker may have registered after the page first loaded
    page.wait_for_selector("body[data-ready='true']")
    page.click("#nav a:text-is('devices')")
    assert page.url.endswith("#devices")
    with api.client() as client:
        items = client.get("/api/v1/devices").json()["items"]
    device = next(d for d in items if d["id"] == cpu_worker.device_id)
    row = page.locator(f"#devices-table tr[data-device-id='{cpu_worker.device_id}']")
    row.scroll_into_view_if_needed()
    cells = row.locator("td").all_inner_texts()
    assert cells[0] == f"{device['name']}\n{device['id']}"
    assert cells[1:3] == ["cpu", device["vendor"]]
    assert cells[3] == f"{device['memory_bytes'] / 2**30:.1f} GiB"
    assert f"numpy {device['software']['numpy']}" in cells[4]
    assert cells[5].startswith("1: ") and cpu_worker.name in cells[5]
    assert cells[6] == str(device["queued_jobs"])
    assert (device["float64"], cells[7]) == (True, "yes")  # NumPy on a CPU computes in float64
    assert row.get_attribute("data-live") == "true"
    screenshot(page, "devices")
    assert console.errors == []


def test_the_cancel_button_cancels_a_queued_job(
    signed_in: tuple[Any, Console], api: ApiServer, screenshot: Any
) -> None:
    page, console = signed_in
    with api.client() as client:
        # No GPU worker serves this session: the job stays queued until cancelled.
        response = client.post("/api/v1/jobs", json=tiny_spec(device="gpu").model_dump(mode="json"))
        assert response.status_code == 202, response.text
        job = response.json()
    page.goto(f"{page.url.split('#')[0]}#/job/{job['id']}")
    page.wait_for_selector("#job-page:not([hidden]) #job-cancel:not([hidden])")
    assert page.inner_text("#job-status") == "queued"
    page.click("#job-cancel")
    page.wait_for_selector("#job-status:text-is('cancelled')")
    assert page.is_hidden("#job-cancel")
    with api.client() as client:
        assert client.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    assert console.errors == []


def test_a_finished_job_has_no_cancel_button(
    signed_in: tuple[Any, Console], jobs_that_ran: dict[str, dict[str, Any]]
) -> None:
    page, console = signed_in
    page.goto(f"{page.url.split('#')[0]}#/job/{jobs_that_ran['train']['id']}")
    page.wait_for_selector("#job-page:not([hidden]) #trials-chart .main-svg")
    assert page.inner_text("#job-status") == "succeeded"
    assert page.is_hidden("#job-cancel")
    assert console.errors == []
