"""The dashboard's job table filters by status, kind and device and pages 25 rows at a time, in real
headless Chromium against the real API.

Deterministic: the rows are created through the jobs service on a device of the test's own (never
published, so no worker takes them, and no other test's jobs match the filter), and every wait is on the
DOM saying which query its rows show (`#jobs-table[data-query]`), never on time.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session

from services.devices.models import Device
from services.devices.service import register_device
from services.jobs import service as jobs
from services.jobs.spec import JobSpec
from tests.services.web.test_dashboard import Console, signed_in  # noqa: F401 (the signed-in page fixture)
from tests.support import apiserver
from tests.support.jobs import tiny_spec

api = apiserver.api


@pytest.fixture
def device_with_jobs(db_session: Session) -> Iterator[tuple[Device, list[str]]]:
    """A device of this test's own with 30 jobs aimed at it: 27 queued train jobs, 2 queued gemm jobs and
    1 cancelled train job (oldest first); their ids, newest first. Cancelled after the test."""
    device = register_device(db_session, {"cpu_model": f"Paged CPU {uuid.uuid4().hex[:8]}", "host": {}})
    gemm = JobSpec.model_validate({"kind": "gemm", "gemm_sizes": [64]})
    ids = []
    for index in range(30):
        spec = gemm if index in (3, 17) else tiny_spec(seed=index)
        ids.append(jobs.create_job(db_session, spec, target_device_id=device.id).id)
        db_session.commit()
    jobs.cancel_job(db_session, ids[0])
    yield device, ids[::-1]
    for job_id in ids:
        jobs.cancel_job(db_session, job_id)


def shown(page: Any, query: str) -> list[str]:
    """The job ids of the table once it shows `query`'s rows (waits on the DOM)."""
    page.wait_for_selector(f"#jobs-table[data-query='{query}']")
    ids: list[str] = page.eval_on_selector_all("#jobs-table tbody tr", "rs => rs.map(r => r.dataset.jobId)")
    return ids


def test_the_job_table_filters_by_status_kind_and_device_and_pages_25_rows_at_a_time(
    signed_in: tuple[Any, Console],  # noqa: F811
    db_session: Session,
    device_with_jobs: tuple[Device, list[str]],
    screenshot: Any,
) -> None:
    page, console = signed_in
    device, newest_first = device_with_jobs
    page.reload()  # the device was registered after the page loaded: its filter option comes with it
    page.wait_for_selector("body[data-ready='true']")

    page.select_option("#jobs-filters select[name=device]", device.id)
    assert shown(page, f"?device={device.id}&limit=25&offset=0") == newest_first[:25]
    assert page.inner_text("#jobs-range") == "1–25 of 30"

    page.select_option("#jobs-filters select[name=status]", "queued")
    page.select_option("#jobs-filters select[name=kind]", "train")
    first_page = f"?status=queued&kind=train&device={device.id}&limit=25&offset=0"
    listed = jobs.list_jobs(db_session, status="queued", kind="train", device=device.id, limit=100)
    expected = [job.id for job in listed]
    assert len(expected) == 27
    assert shown(page, first_page) == expected[:25]
    assert page.inner_text("#jobs-range") == "1–25 of 27"
    assert page.is_disabled("#jobs-previous") and page.is_enabled("#jobs-next")
    statuses = page.eval_on_selector_all("#jobs-table tbody tr", "rs => rs.map(r => r.dataset.status)")
    assert set(statuses) == {"queued"}
    page.locator("#jobs").scroll_into_view_if_needed()
    screenshot(page, "jobs-page-1")

    page.click("#jobs-next")
    assert shown(page, first_page.replace("offset=0", "offset=25")) == expected[25:]
    assert page.inner_text("#jobs-range") == "26–27 of 27"
    assert page.is_disabled("#jobs-next") and page.is_enabled("#jobs-previous")

    page.click("#jobs-previous")
    assert shown(page, first_page) == expected[:25]

    # A new filter starts again at the first page.
    page.click("#jobs-next")
    shown(page, first_page.replace("offset=0", "offset=25"))
    page.select_option("#jobs-filters select[name=kind]", "gemm")
    gemm = shown(page, f"?status=queued&kind=gemm&device={device.id}&limit=25&offset=0")
    assert gemm == [newest_first[29 - 17], newest_first[29 - 3]]
    assert page.inner_text("#jobs-range") == "1–2 of 2"
    assert console.errors == []
