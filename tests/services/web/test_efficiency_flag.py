"""An impossible efficiency (over 100%: the calibration was disturbed) is flagged on the dashboard with the
command that recalibrates, and drawn as no bar: in real headless Chromium, against the real API."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from services.core.config import Settings
from services.devices.service import register_device
from services.jobs.spec import JobSpec
from tests.services.web.test_dashboard import Console, signed_in  # noqa: F401 (the signed-in page fixture)
from tests.support import apiserver
from tests.support.jobs import tiny_spec
from tests.support.results import engine_document, record

api = apiserver.api
LEVELLED_GEMM = JobSpec.model_validate(
    {"kind": "gemm", "gemm_sizes": [256, 1024], "timing": {"warmup": 1, "min_repeats": 2, "max_repeats": 3}}
)


def test_an_efficiency_over_100_percent_is_flagged_not_drawn(
    signed_in: tuple[Any, Console],  # noqa: F811
    db_session: Session,
    service_settings: Settings,
    screenshot: Any,
) -> None:
    page, console = signed_in
    device = register_device(db_session, {"cpu_model": f"Disturbed CPU {uuid.uuid4().hex[:6]}", "host": {}})
    train = tiny_spec(seed=int(uuid.uuid4().int % 100_000))
    record(db_session, train, device.id)
    achieved = engine_document(train)["metrics"]["flops_per_s"]
    calibration = record(  # as if the calibration ran while the machine was busy: half the real rate
        db_session, LEVELLED_GEMM, device.id, lambda d: d["metrics"].update(peak_flops_per_s=achieved / 2)
    )
    page.reload()
    page.wait_for_selector("body[data-ready='true']")
    page.select_option("#compare-filters select[name=spec_hash]", train.spec_hash())
    row = page.locator(f"#compare-table tr[data-device-id='{device.id}']")
    row.wait_for()
    assert "recalibrate ⚠" in row.inner_text()
    flags = page.inner_text("#efficiency-flags")
    assert f"(job {calibration.id}) was disturbed; recalibrate with" in flags
    assert (
        f"bpbench submit --kind gemm --gemm-sizes 1024,2048,4096 --dtype float32 --target {device.id}"
        in flags
    )
    bars = page.evaluate("document.getElementById('efficiency-chart').data")
    assert bars is None or all(y is None for trace in bars for y in trace["y"])  # no bar for it
    assert "Not drawn: the calibration gives an impossible efficiency" in page.inner_text("#efficiency-chart")
    screenshot(page, "efficiency-flag")
    assert console.errors == []
