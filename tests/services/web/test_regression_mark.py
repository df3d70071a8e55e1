"""The dashboard marks a regressed device: the planted slowdown of
`tests/services/results/test_regressions.py`, in Chromium."""

from __future__ import annotations

from typing import Any

from tests.services.results import test_regressions
from tests.services.results.test_regressions import SPEC
from tests.support import apiserver
from tests.support.apiserver import ApiServer

api = apiserver.api
# The regression test's fixtures: the runs are measured once per session and recorded once per database.
measured = test_regressions.measured
recorded = test_regressions.recorded


def test_the_dashboard_marks_the_regression(
    recorded: dict[str, Any],
    api: ApiServer,
    browser: Any,
    screenshot: Any,
) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        page.goto(f"{api.url}/?token={api.token}")
        page.click("#signin-confirm-button")
        page.wait_for_selector("body[data-ready='true']", timeout=60_000)
        page.select_option("#compare-filters select[name=spec_hash]", SPEC.spec_hash())
        badge = page.wait_for_selector(
            f"#compare-table tr[data-device-id='{recorded['device_id']}'] .badge.regression", timeout=60_000
        )
        assert badge.inner_text().startswith("▼ regression -")
        colour = page.evaluate("document.getElementById('compare-chart').data[0].marker.color")
        assert "#c0392b" in colour  # the regressed device's bar is drawn red
        row = page.locator(f"#regressions-table tr[data-result-id='{recorded['slow']}']")
        assert row.get_attribute("data-flag") == "regression"
        screenshot(page, "regression")
        assert errors == []
    finally:
        context.close()
