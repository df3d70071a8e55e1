"""Real headless Chromium for the dashboard tests (Debian's `chromium`, driven by Playwright).

The browser is the system's (`BPBENCH_CHROMIUM`, default `/usr/bin/chromium`): nothing is downloaded. Without
it (or without the `playwright` package) the browser tests are skipped, except under `CI=true`, where that
is a failure. Screenshots go to `test-artifacts/screenshots/` (gitignored; CI keeps them as artifacts).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.needs import missing

CHROMIUM = os.environ.get("BPBENCH_CHROMIUM", "/usr/bin/chromium")
# No sandbox (containers, root), no GPU, and no background traffic: the machines may have no internet.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "screenshots"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the whole test session."""
    if not Path(CHROMIUM).exists():
        missing(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set BPBENCH_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=120_000)
        yield chromium
        chromium.close()


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Any:
    """`screenshot(page, "name")`: a full-page PNG named after the test and `name`; returns its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    test = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")

    def take(page: Any, name: str) -> Path:
        path = SCREENSHOTS / f"{test}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
