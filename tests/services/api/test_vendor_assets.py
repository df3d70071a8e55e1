"""The files the browser needs are served by the app: the API docs' scripts offline, Plotly gzipped, HEAD
answered, and cache headers a browser accepts. Against the real API server."""

from __future__ import annotations

import gzip
import re

import httpx
import plotly
import pytest

from services.api.vendor_assets import VENDOR_ASSETS
from tests.support import apiserver
from tests.support.apiserver import ApiServer

api = apiserver.api  # the shared API server fixture

PLOTLY = "/static/vendor/plotly.min.js"
# RFC 9111: cache directives are comma-separated tokens, `name` or `name=value`; no `;` parameters.
CACHE_DIRECTIVE = re.compile(r"^[a-z-]+(=[0-9]+)?$")


def _local_urls_of(page: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", page)


@pytest.mark.parametrize(
    ("path", "assets"),
    [
        ("/docs", ["swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"]),
        ("/redoc", ["redoc.standalone.js", "favicon.png"]),
    ],
)
def test_the_api_docs_load_their_scripts_from_this_server(
    api: ApiServer, path: str, assets: list[str]
) -> None:
    page = httpx.get(f"{api.url}{path}", timeout=30)
    assert page.status_code == 200
    urls = _local_urls_of(page.text)
    assert sorted(urls) == sorted(f"/static/vendor/{name}" for name in assets)
    assert "cdn." not in page.text and "fonts.googleapis" not in page.text
    for url in urls:
        served = httpx.get(f"{api.url}{url}", timeout=30)
        name = url.rsplit("/", 1)[1]
        assert served.status_code == 200, url
        assert served.content == VENDOR_ASSETS[name].path.read_bytes()
        assert served.headers["content-type"].split(";")[0] == VENDOR_ASSETS[name].media_type


def test_plotly_is_gzipped_when_the_client_asks(api: ApiServer) -> None:
    raw = VENDOR_ASSETS["plotly.min.js"].path.read_bytes()
    # httpx would decode it; read the wire bytes to see the compression.
    with httpx.stream(
        "GET", f"{api.url}{PLOTLY}", headers={"Accept-Encoding": "gzip"}, timeout=30
    ) as response:
        wire = b"".join(response.iter_raw())
        headers = response.headers
    assert headers["content-encoding"] == "gzip"
    assert headers["vary"] == "Accept-Encoding"
    assert int(headers["content-length"]) == len(wire) < len(raw) / 2
    assert gzip.decompress(wire) == raw


def test_plotly_is_sent_plain_to_a_client_that_does_not_accept_gzip(api: ApiServer) -> None:
    plain = {"Accept-Encoding": "identity"}
    with httpx.stream("GET", f"{api.url}{PLOTLY}", headers=plain, timeout=30) as response:
        wire = b"".join(response.iter_raw())
        headers = response.headers
    assert "content-encoding" not in headers
    assert wire == VENDOR_ASSETS["plotly.min.js"].path.read_bytes()


def test_the_cache_header_is_valid_and_the_version_is_the_etag(api: ApiServer) -> None:
    response = httpx.head(f"{api.url}{PLOTLY}", timeout=30)
    directives = [part.strip() for part in response.headers["cache-control"].split(",")]
    assert directives == ["public", "max-age=86400"]
    assert all(CACHE_DIRECTIVE.match(d) for d in directives), directives
    assert response.headers["etag"] == f'"plotly.min.js-{plotly.__version__}"'
    again = httpx.get(f"{api.url}{PLOTLY}", headers={"If-None-Match": response.headers["etag"]}, timeout=30)
    assert (again.status_code, again.content) == (304, b"")


@pytest.mark.parametrize(
    "path", [PLOTLY, "/static/vendor/swagger-ui-bundle.js", "/static/app.js", "/healthz"]
)
def test_head_is_answered_like_get_without_a_body(api: ApiServer, path: str) -> None:
    head = httpx.head(f"{api.url}{path}", headers={"Accept-Encoding": "identity"}, timeout=30)
    get = httpx.get(f"{api.url}{path}", headers={"Accept-Encoding": "identity"}, timeout=30)
    assert (head.status_code, get.status_code) == (200, 200)
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))
    assert head.headers["content-type"] == get.headers["content-type"]


def test_an_unknown_vendor_file_is_404(api: ApiServer) -> None:
    response = httpx.get(f"{api.url}/static/vendor/jquery.js", timeout=30)
    assert response.status_code == 404
    assert response.json()["detail"] == "no vendor file 'jquery.js'"
