"""The dashboard's job table names each job's stack as the compare table does, in real headless Chromium
against the real API: the stack of the device that ran it (`xla · jax 0.4.38`), else the backends its
device's spelling may run on (`xla` for `xla:cpu:0`, `numpy` for `cpu`).

The jobs are rows written through the jobs service (never published, so no worker takes them); the two that
ran are claimed by devices of the test's own and failed afterwards, so nothing is left running.
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
from tests.services.web.test_dashboard import Console, signed_in  # noqa: F401 (the signed-in page fixture)
from tests.support import apiserver
from tests.support.jobs import tiny_spec

api = apiserver.api


def fingerprint(spelling: str, backend: str, library: str, version: str) -> dict[str, Any]:
    """A fingerprint as a worker of `backend` records it, on a CPU of this test's own."""
    return {
        "device": spelling,
        "cpu_model": f"Stack CPU {uuid.uuid4().hex[:8]}",
        "numpy_version": "2.4.6",
        "backend": {"name": backend, "library": library, "library_version": version, "float64": True},
    }


@pytest.fixture
def jobs_on_two_stacks(db_session: Session) -> Iterator[dict[str, str]]:
    """Job ids by what they show: queued on `xla:cpu:0` and on `cpu`, and one of each run on a device."""
    xla = register_device(db_session, fingerprint("xla:cpu:0", "xla", "jax", "0.4.38"))
    numpy = register_device(db_session, fingerprint("cpu", "numpy", "numpy", "2.4.6"))

    def queued(device: str) -> str:
        job = jobs.create_job(db_session, tiny_spec(device=device))
        db_session.commit()
        return job.id

    def ran_on(device: Device, spelling: str) -> str:
        job_id = queued(spelling)
        assert jobs.claim_job(db_session, job_id, worker_name="stack@test", device_id=device.id)
        jobs.fail_job(db_session, job_id, "stopped by the test")
        return job_id

    ids = {
        "queued xla": queued("xla:cpu:0"),
        "queued cpu": queued("cpu"),
        "ran xla": ran_on(xla, "xla:cpu:0"),
        "ran cpu": ran_on(numpy, "cpu"),
    }
    yield ids
    for job_id in ids.values():
        jobs.cancel_job(db_session, job_id)


def test_the_job_table_names_each_jobs_stack_as_the_compare_table_does(
    signed_in: tuple[Any, Console],  # noqa: F811
    jobs_on_two_stacks: dict[str, str],
    screenshot: Any,
) -> None:
    page, console = signed_in
    page.reload()  # the devices were registered after the page loaded: their stacks come with them
    page.wait_for_selector("body[data-ready='true']")
    stacks = {}
    for shown, job_id in jobs_on_two_stacks.items():
        cell = page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}'] td.stack")
        assert cell is not None
        stacks[shown] = cell.inner_text()
    assert stacks == {
        "queued xla": "xla",
        "queued cpu": "numpy",
        "ran xla": "xla · jax 0.4.38",
        "ran cpu": "numpy · numpy 2.4.6",
    }
    headers = page.eval_on_selector_all("#jobs-table thead th", "hs => hs.map(h => h.textContent)")
    assert headers[4:6] == ["device", "stack"]
    page.locator("#jobs").scroll_into_view_if_needed()
    screenshot(page, "jobs-stack")
    assert console.errors == []
