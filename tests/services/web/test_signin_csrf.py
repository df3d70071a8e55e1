"""Login CSRF in real Chromium: no other site's link or form signs a browser in; our confirm button does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from services.auth.service import create_token
from tests.support import apiserver
from tests.support.apiserver import ApiServer

api = apiserver.api
PAGE_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def attacker_token(api: ApiServer, session_maker: Any) -> str:
    """A valid token of someone else: what an attacker would want a victim's browser to use."""
    with session_maker() as session:
        token, _ = create_token(session, name=f"attacker-{time.monotonic_ns()}", scopes=["submit"])
        session.commit()
    return token


@pytest.fixture
def attacker_site(tmp_path: Path, api: ApiServer, attacker_token: str) -> Iterator[str]:
    """Another site (`localhost`, not the API's `127.0.0.1`): a link to the sign-in URL and a form that
    posts the token straight to the confirm endpoint."""
    (tmp_path / "link.html").write_text(
        f'<!doctype html><a id="bait" href="{api.url}/?token={attacker_token}">cute cats</a>'
    )
    (tmp_path / "form.html").write_text(
        f'<!doctype html><form id="bait" method="post" action="{api.url}/auth/signin">'
        f'<input type="hidden" name="token" value="{attacker_token}"><button>go</button></form>'
    )
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def victim(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies): the victim's page."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    yield page
    context.close()


def sign_in_cookies(page: Any) -> list[dict[str, Any]]:
    return [c for c in page.context.cookies() if c["name"] == "bpbench_token"]


def test_a_link_from_another_site_shows_the_confirmation_and_signs_nobody_in(
    victim: Any, attacker_site: str, api: ApiServer
) -> None:
    victim.goto(f"{attacker_site}/link.html")
    victim.click("#bait")
    victim.wait_for_selector("#signin-confirm")
    assert victim.url.startswith(f"{api.url}/?token=")
    assert sign_in_cookies(victim) == []
    session = victim.request.get(f"{api.url}/api/v1/session").json()
    assert session["signed_in"] is False


def test_a_form_on_another_site_posting_the_token_is_refused(
    victim: Any, attacker_site: str, api: ApiServer
) -> None:
    victim.goto(f"{attacker_site}/form.html")
    with victim.expect_navigation():
        victim.click("#bait button")
    assert victim.url == f"{api.url}/auth/signin"
    assert "same-origin POST" in victim.content()
    assert sign_in_cookies(victim) == []


def test_the_confirm_button_on_our_own_page_signs_in(victim: Any, api: ApiServer) -> None:
    victim.goto(f"{api.url}/?token={api.token}")
    victim.click("#signin-confirm-button")
    victim.wait_for_selector("body[data-ready='true']")
    assert victim.url == f"{api.url}/"
    cookie = sign_in_cookies(victim)
    assert len(cookie) == 1 and cookie[0]["value"] == api.token
    assert (cookie[0]["httpOnly"], cookie[0]["sameSite"]) == (True, "Strict")
    session = victim.request.get(f"{api.url}/api/v1/session").json()
    assert (session["signed_in"], session["via"]) == (True, "cookie")


def test_a_token_pasted_into_the_dashboards_form_signs_in_without_a_second_page(
    victim: Any, api: ApiServer
) -> None:
    victim.goto(f"{api.url}/")
    victim.wait_for_selector("#signin:not([hidden])")
    victim.fill("#signin-token", api.token)
    victim.click("#signin-form button")
    victim.wait_for_selector("body[data-ready='true']")
    assert victim.url == f"{api.url}/"  # a POST: the token never reaches the address bar
    assert [c["value"] for c in sign_in_cookies(victim)] == [api.token]
